"""Regression heads shared by the networks.

:class:`IterativeErrorFeedback` is the regressor of HMR (Kanazawa et al., "End-to-end Recovery of Human
Shape and Pose", CVPR 2018, Sec. 3.2) and RingNet (Sanyal et al., CVPR 2019, Sec. 4 and implementation
details): instead of regressing the parameter vector Θ in one shot, a small MLP reads the image features
``φ`` together with the current estimate ``Θ_t`` and outputs a correction, ``Θ_{t+1} = Θ_t + MLP([φ, Θ_t])``,
starting from a fixed initial vector ``Θ_0`` (HMR: the mean parameters), for a fixed number of iterations
(3 in both papers). The MLP is 2 × (FC-512, ReLU, dropout) and a linear output layer, with its weights
shared across the iterations. The first layer's product with ``φ`` is the same at every iteration, so it is
computed once (the iterations then cost only the ``Θ`` columns and the other layers).

:class:`PointRefiner` is a cascade stage that looks at the image again: features sampled where the current
estimate puts its landmarks → a correction of the estimate (shape-indexed features of cascaded regression: Cao
et al., "Face Alignment by Explicit Shape Regression", CVPR 2012; Xiong & De la Torre's supervised descent, CVPR
2013; 3DDFA's pose-adaptive features, Zhu et al., CVPR 2016, Sec. 3.2). A direct regressor reads the whole face at
once and must place every landmark from a coarse map (CoarseNet's dlib map is 8 × 8 cells of about 19 px on a
150 px chip). The stage samples a finer map exactly where the first estimate projects the landmarks: each
point's feature vector is bilinearly interpolated (``grid_sample``, :func:`sample_points`) from dlib's ResNet
map after ``blocks`` residual blocks (the last ``tune`` fine-tuned, :class:`~morphable.nets.encoders.DlibMapTrunk`),
so an estimate that misses a contour by a few pixels sees the edge it missed. A two-layer perceptron maps the
``L`` sampled vectors and the standardised estimate to the correction, its last layer initialised to zero (the
stage starts as the identity). A refiner can hold several such stages (``stages``), one perceptron each, all
reading the same map: each samples it where the previous stage's estimate puts the landmarks (the cascade's
later regressors, each trained on the residuals its predecessor leaves).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from morphable.identity.dlib_resnet import DlibFaceNet, feature_map_shape
from morphable.nets.encoders import DlibMapTrunk


class IterativeErrorFeedback(nn.Module):
    """``Θ_{t+1} = Θ_t + f([φ, Θ_t])`` for ``iterations`` steps from ``Θ_0`` (the ``initial`` buffer).

    Args:
        in_dim: feature size ``D`` of ``φ``.
        out_dim: parameter vector size ``P``.
        hidden: width of the two hidden layers (512 in HMR and RingNet).
        iterations: number of feedback steps (3 in HMR and RingNet).
        dropout: dropout probability after each hidden layer (HMR: 0.5), active in training mode only.
        initial: ``(P,)`` starting estimate ``Θ_0`` (default zeros).
        output_gain: the last layer's weights start as Xavier-uniform × this gain, so each correction starts
            small (HMR initialises that layer with gain 0.01).
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden: int = 512, iterations: int = 3, dropout: float = 0.5,
                 initial: Tensor | None = None, output_gain: float = 0.01):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"IterativeErrorFeedback: iterations must be >= 1, got {iterations}")
        self.iterations = int(iterations)
        init = torch.zeros(out_dim) if initial is None else torch.as_tensor(initial, dtype=torch.float32).reshape(-1)
        if init.numel() != out_dim:
            raise ValueError(f"IterativeErrorFeedback: initial has {init.numel()} values, expected {out_dim}")
        self.register_buffer("initial", init.clone())
        self.mlp = nn.Sequential(nn.Linear(in_dim + out_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        nn.init.xavier_uniform_(self.mlp[-1].weight, gain=output_gain)
        nn.init.zeros_(self.mlp[-1].bias)
        self._split: tuple[tuple, Tensor, Tensor] | None = None

    def _first_layer(self, D: int) -> tuple[Tensor, Tensor]:
        """The first layer's weight split into its feature columns ``(H, D)`` and its estimate columns,
        transposed ``(P, H)``. Views while training (gradients flow); without gradients, contiguous copies
        cached until the weight changes (its version counter keys the cache): a strided slice would be
        copied by every product."""
        weight = self.mlp[0].weight
        if torch.is_grad_enabled():
            return weight[:, :D], weight[:, D:].T
        key = (weight._version, weight.data_ptr(), D)
        if self._split is None or self._split[0] != key:
            self._split = (key, weight[:, :D].contiguous(), weight[:, D:].T.contiguous())
        return self._split[1], self._split[2]

    def forward(self, features: Tensor, *, all_steps: bool = False) -> Tensor:
        """``(B, D)`` features → ``(B, P)`` final estimate ``Θ_T`` (or ``(T, B, P)`` every ``Θ_t``, t = 1…T,
        with ``all_steps``)."""
        if features.dim() != 2:
            raise ValueError(f"IterativeErrorFeedback: expected features (B, D), got {tuple(features.shape)}")
        theta = self.initial.to(features).expand(features.shape[0], -1)
        second, last = self.mlp[3], self.mlp[6]
        w_features, w_theta_t = self._first_layer(features.shape[1])
        # W [φ, Θ] + b = (W_φ φ + b) + W_Θ Θ: the feature part is the same at every iteration
        from_features = F.linear(features, w_features, self.mlp[0].bias)
        steps = []
        rate = self.mlp[2].p
        drop = self.training and rate > 0
        for _ in range(self.iterations):  # the mlp's layers, functionally (dropout acts in training mode only)
            h = torch.addmm(from_features, theta, w_theta_t).relu_()
            if drop:
                h = F.dropout(h, rate, True)
            h = F.linear(h, second.weight, second.bias).relu_()
            if drop:
                h = F.dropout(h, rate, True)
            theta = theta + F.linear(h, last.weight, last.bias)
            steps.append(theta)
        return torch.stack(steps) if all_steps else theta


def sample_points(feature_map: Tensor, points: Tensor, size: int) -> Tensor:
    """Bilinear samples of a map ``(B, C, h, w)`` covering a ``size`` px chip at ``points`` ``(B, L, 2)`` (chip px,
    (x, y), 0 = the chip's left / top edge) → ``(B, L, C)``; points outside take the border's value."""
    grid = (points / size * 2 - 1)[:, :, None, :].to(feature_map.dtype)  # (B, L, 1, 2) in [-1, 1]
    sampled = F.grid_sample(feature_map, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[..., 0].transpose(1, 2)


class PointRefiner(nn.Module):
    """Corrections ``(B, n_out)`` of a standardised estimate ``(B, n_out)`` from chips ``(B, S, S, 3)`` in [0, 1]
    and the estimate's ``n_points`` projected points ``(B, L, 2)`` (chip px); see the module docstring.

    Args:
        net: dlib's network, shared (frozen) with the first stage's trunk.
        n_points, n_out: L, and the estimate's length.
        size: chip side S (px).
        blocks, tune: the sampled map is dlib's after ``blocks`` residual blocks, the last ``tune`` of them
            fine-tuned (:class:`~morphable.nets.encoders.DlibMapTrunk`; at 150 px, 7 blocks give 64 × 17 × 17).
        hidden: the perceptrons' hidden width.
        stages: the cascade's stages, one perceptron each (``mlps``), all on the same map.
    """

    def __init__(self, net: DlibFaceNet, n_points: int, n_out: int, size: int, blocks: int, tune: int,
                 hidden: int, stages: int = 1):
        super().__init__()
        if stages < 1:
            raise ValueError(f"PointRefiner: stages must be >= 1, got {stages}")
        self.n_points, self.size, self.hidden = int(n_points), int(size), int(hidden)
        self.trunk = DlibMapTrunk(net, blocks, tune, size)
        self.map_shape = feature_map_shape(blocks, size)
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(self.map_shape[0] * self.n_points + n_out, self.hidden),
                                                nn.ReLU(inplace=True), nn.Linear(self.hidden, n_out))
                                  for _ in range(int(stages)))
        for mlp in self.mlps:
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)
        self.register_load_state_dict_pre_hook(_one_stage_keys)

    @property
    def stages(self) -> int:
        """The number of cascade stages (perceptrons)."""
        return len(self.mlps)

    def feature_map(self, images: Tensor, raw: Tensor | None = None) -> Tensor:
        """The standardised map ``(B, C, h, w)`` every stage samples; ``raw``: the trunk's frozen blocks' output for
        ``images`` (:meth:`~morphable.nets.encoders.DlibMapTrunk.raw`) when already computed."""
        raw = self.trunk.raw(images) if raw is None else raw
        return self.trunk.features(raw).reshape(-1, *self.map_shape)

    def correct(self, stage: int, fmap: Tensor, points: Tensor, estimate: Tensor) -> Tensor:
        """Stage ``stage``'s (0-based) correction of ``estimate`` from :meth:`feature_map`'s ``fmap`` sampled at
        ``points``."""
        if points.shape[1:] != (self.n_points, 2):
            raise ValueError(f"PointRefiner: expected points (B, {self.n_points}, 2), got {tuple(points.shape)}")
        features = sample_points(fmap, points, self.size).flatten(1)
        return self.mlps[stage](torch.cat([features, estimate], dim=1))

    def forward(self, images: Tensor, points: Tensor, estimate: Tensor, raw: Tensor | None = None) -> Tensor:
        """The first stage's correction; ``raw`` as in :meth:`feature_map`."""
        return self.correct(0, self.feature_map(images, raw), points, estimate)


def _one_stage_keys(module: nn.Module, state: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook: a one-stage refiner's file names its perceptron ``mlp.`` (stop 32's files), the
    first of :attr:`PointRefiner.mlps` now."""
    old = prefix + "mlp."
    for key in [k for k in state if k.startswith(old)]:
        state[prefix + "mlps.0." + key[len(old):]] = state.pop(key)
