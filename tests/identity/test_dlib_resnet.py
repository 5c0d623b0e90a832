"""DlibFaceNet against dlib's own network on real face chips; fast vs literal path; gradients."""
from __future__ import annotations

import dlib
import numpy as np
import pytest
import torch

from morphable.identity import DlibFaceNet, face_descriptor_reference, load_dlib_face_resnet
from morphable.identity import dlib_resnet
from morphable.identity.dlib_resnet import (DlibBlocks, PackedKernels, add_padded, conv_input_sizes, face_features,
                                            feature_map_shape, inference_dtype, native_bf16, onednn_bf16)
from morphable.identity.dlib_serialization import default_weights_path
from tests.conftest import data_file, torch_threads
from tests.identity.faces import largest_face

PHOTOS = ("img1.jpg", "img22.jpg", "img26.jpg")  # three different people


@pytest.fixture(scope="module")
def net():
    return DlibFaceNet()


@pytest.fixture(scope="module")
def chips():
    folder = data_file("deepface/tests/unit/dataset")
    return np.stack([largest_face(folder / name).chip for name in PHOTOS])


@pytest.fixture(scope="module")
def dlib_descriptors(chips):
    recogniser = dlib.face_recognition_model_v1(str(default_weights_path()))
    return np.stack([np.array(recogniser.compute_face_descriptor(chip)) for chip in chips])


def test_matches_dlib_on_real_chips(net, chips, dlib_descriptors):
    x = torch.from_numpy(chips).float() / 255
    with torch.no_grad():
        ours = net(x)
    assert ours.shape == (3, 128) and ours.dtype == torch.float32
    assert np.abs(ours.double().numpy() - dlib_descriptors).max() <= 1e-5
    # not a trivial match: the three people are far apart (dlib's same-person threshold is 0.6)
    assert min(np.linalg.norm(dlib_descriptors[i] - dlib_descriptors[j]) for i, j in ((0, 1), (0, 2), (1, 2))) > 0.6


def test_literal_reference_and_float64(net, chips, dlib_descriptors):
    x = torch.from_numpy(chips[:2]).double() / 255
    weights = load_dlib_face_resnet()
    with torch.no_grad():
        reference = face_descriptor_reference(x, weights)
        fast64 = net(x)
        fast32 = net(x.float())
    assert reference.dtype == fast64.dtype == torch.float64  # computation follows the input's dtype
    assert np.abs(reference.numpy() - dlib_descriptors[:2]).max() <= 1e-5
    # folding the affines changes only rounding (the folded kernels are stored as float32)
    assert (fast64 - reference).abs().max() <= 1e-6
    assert (fast32.double() - reference).abs().max() <= 1e-5
    # float32 with gradient runs the plain autograd ops instead of the fused oneDNN kernels: same numbers
    with_grad = net(x.float().requires_grad_(True))
    assert with_grad.requires_grad and (with_grad.detach() - fast32).abs().max() <= 1e-6


def test_batch_is_independent_of_its_neighbours(net, chips):
    x = torch.from_numpy(chips).float() / 255
    with torch.no_grad():
        together = net(x)
        alone = torch.cat([net(x[i:i + 1]) for i in range(len(x))])
    assert (together - alone).abs().max() <= 1e-6


def test_conv_input_sizes_are_the_literal_networks(monkeypatch):
    """The shapes the kernels are packed for: those the literal reference's convolutions receive."""
    seen = []
    conv2d = dlib_resnet.F.conv2d
    monkeypatch.setattr(dlib_resnet.F, "conv2d",
                        lambda x, *a, **k: seen.append(list(x.shape)) or conv2d(x, *a, **k))
    with torch.no_grad():
        face_descriptor_reference(torch.rand(2, 150, 150, 3, dtype=torch.float64), load_dlib_face_resnet())
    assert seen == conv_input_sizes(2)


@pytest.mark.parametrize("blocks", [13, 10, 7])
def test_intermediate_feature_maps_are_the_literal_networks(monkeypatch, net, chips, blocks):
    """``feature_map(x, blocks)``: the activations the literal reference's next block receives (the input of
    its convolution ``1 + 2 · blocks``), in float64 (plain path) and float32 (fused oneDNN path), of the
    shape :func:`feature_map_shape` says."""
    seen = []
    conv2d = dlib_resnet.F.conv2d
    monkeypatch.setattr(dlib_resnet.F, "conv2d", lambda x, *a, **k: seen.append(x) or conv2d(x, *a, **k))
    x = torch.from_numpy(chips[:2]).double() / 255
    with torch.no_grad():
        face_descriptor_reference(x, load_dlib_face_resnet())
    monkeypatch.undo()
    reference = seen[1 + 2 * blocks]
    with torch.no_grad():
        fast64, fast32 = net.feature_map(x, blocks), net.feature_map(x.float(), blocks)
    assert tuple(fast64.shape[1:]) == tuple(reference.shape[1:]) == feature_map_shape(blocks)
    assert (fast64 - reference).abs().max() <= 1e-6 * reference.abs().max()  # (the folded kernels are float32)
    assert (fast32.double() - reference).abs().max() <= 1e-5 * reference.abs().max()
    with pytest.raises(ValueError, match="blocks"):
        net.feature_map(x, 15)


def test_trainable_blocks_continue_the_network_with_true_gradients(net, chips):
    """:class:`DlibBlocks` initialised from the network: blocks 7–9 on the activations after block 7 give those
    after block 10 (float64); the last two blocks' (a stride-2 one, with dlib's zero-padded shortcut)
    derivatives along random directions of the input and of a kernel match central differences."""
    x = torch.from_numpy(chips[:2]).double() / 255
    with torch.no_grad():
        after7, after10 = net.feature_map(x, 7), net.feature_map(x, 10)
        tuned = DlibBlocks(net, 7, 10).double()(after7)
    assert (tuned - after10).abs().max() <= 1e-9 * after10.abs().max()
    blocks = DlibBlocks(net, 12, 14).double()
    with torch.no_grad():
        start = net.feature_map(x[:1], 12).clone()
    g = torch.Generator().manual_seed(0)
    weight = blocks.weight[2]  # the stride-2 block's first kernel
    for _ in range(3):
        v, w = torch.randn(start.shape, generator=g, dtype=torch.float64), torch.randn(weight.shape, generator=g,
                                                                                        dtype=torch.float64)
        u = torch.randn(1, *feature_map_shape(14), generator=g, dtype=torch.float64)
        inp = start.clone().requires_grad_(True)
        (blocks(inp) * u).sum().backward()
        analytic = float((inp.grad * v).sum() + (weight.grad * w).sum())
        weight.grad = None
        eps = 1e-6
        with torch.no_grad():
            def f(sign: float) -> float:
                weight.add_(sign * eps * w)
                out = float((blocks(start + sign * eps * v) * u).sum())
                weight.sub_(sign * eps * w)
                return out
            numeric = (f(1.0) - f(-1.0)) / (2 * eps)
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    with pytest.raises(ValueError, match="first < last"):
        DlibBlocks(net, 10, 10)


def test_packed_kernels_give_the_plain_fused_result(net, chips):
    """oneDNN-packed kernels (one set per batch size and thread count, repacked when the weights change)
    compute what the plain kernels compute."""
    x = torch.from_numpy(chips).float() / 255
    weight = [w.clone() for w in net._folded()[0]]
    bias = net._folded()[1]
    packed = PackedKernels(capacity=2)
    with torch.no_grad():
        for batch, threads in ((3, 2), (1, 2), (1, 1), (3, 2)):
            with torch_threads(threads):
                fast = face_features(x[:batch], weight, bias, net.fc_weight, packed)
                plain = face_features(x[:batch], weight, bias, net.fc_weight)
            assert all((a - b).abs().max() <= 1e-6 for a, b in zip(fast, plain))
            assert len(packed._sets) <= 2
        before = fast[1]
        weight[7].mul_(1.5)  # in place: the cached set is stale
        after = face_features(x, weight, bias, net.fc_weight, packed)[1]
        assert (after - face_features(x, weight, bias, net.fc_weight)[1]).abs().max() <= 1e-6
        assert (after - before).abs().max() > 1e-3
    # a cache: copies and pickles start empty (the module stays copyable and picklable)
    import copy
    import pickle

    assert len(packed._sets) > 0 and copy.deepcopy(packed)._sets == {}
    again = pickle.loads(pickle.dumps(packed))
    assert again.capacity == 2 and again._sets == {}


@pytest.mark.parametrize("side", [96, 112])
def test_feature_maps_of_other_sides_are_the_literal_networks(monkeypatch, net, chips, side):
    """Smaller square inputs (the fast localiser's crops): the fused, packed float32 path's activations after
    7 and 10 blocks equal the literal float64 network's on the same resampled chips, in the shape
    :func:`feature_map_shape` computes (the packing shapes follow the side)."""
    import dataclasses

    x = torch.nn.functional.interpolate(torch.from_numpy(chips[:2]).double().permute(0, 3, 1, 2) / 255,
                                        size=(side, side), mode="bilinear", antialias=True).permute(0, 2, 3, 1)
    seen = []
    conv2d = dlib_resnet.F.conv2d

    class Enough(Exception):
        """The literal network's input after block 10 is recorded (its last stage does not fit 96 px)."""

    def record(x, *a, **k):
        seen.append(x)
        if len(seen) > 1 + 2 * 10:
            raise Enough
        return conv2d(x, *a, **k)

    monkeypatch.setattr(dlib_resnet.F, "conv2d", record)
    with torch.no_grad(), pytest.raises(Enough):
        face_descriptor_reference(x, dataclasses.replace(load_dlib_face_resnet(), input_size=side))
    monkeypatch.undo()
    assert [list(s.shape) for s in seen] == conv_input_sizes(2, side)[:len(seen)]
    for blocks in (7, 10):
        reference = seen[1 + 2 * blocks]
        with torch.no_grad():
            fast = net.feature_map(x.float().contiguous(), blocks)
        assert tuple(fast.shape[1:]) == feature_map_shape(blocks, side)
        assert (fast.double() - reference).abs().max() <= 1e-5 * reference.abs().max()
    with pytest.raises(ValueError, match="96 px chips are too small for 14 blocks"):  # its last conv would get 2 px
        net.feature_map(torch.rand(1, 96, 96, 3), 14)


def test_trainable_blocks_infer_with_packed_kernels(net, chips):
    """Without gradients, :class:`DlibBlocks` runs oneDNN's fused convolutions on packed kernels: the same
    activations as its autograd path (float32), and after an in-place weight change (a training step) the
    kernels are packed again."""
    with torch.no_grad():
        start = net.feature_map(torch.from_numpy(chips).float() / 255, 7)
    blocks = DlibBlocks(net, 7, 10)
    plain = blocks(start)  # gradients on: the autograd path
    assert plain.requires_grad
    with torch.no_grad():
        fused = blocks(start)
        assert (fused - plain.detach()).abs().max() <= 1e-5 * plain.abs().max()
        assert len(blocks._packed._sets) == 1
        blocks.weight[2].mul_(0.5)  # block 8's first kernel
        changed = blocks(start)
    expected = blocks(start).detach()
    assert (changed - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert (changed - fused).abs().max() > 1e-2 * fused.abs().max()


ONEDNN_BF16 = pytest.mark.skipif(
    not onednn_bf16(),
    reason="oneDNN cannot run bfloat16 convolutions on this CPU (no AVX-512)")


@ONEDNN_BF16
def test_bfloat16_inference_stays_near_float32(net, chips):
    """The fused path in bfloat16 (``dtype``): the activations after 5, 10 and 14 blocks of real chips, and the
    trainable blocks' output, within 3 % of float32's in relative L2 norm (measured 0.5–1 %: bfloat16 keeps 8
    significant bits) but not equal to them (the bfloat16 kernels ran), and returned in float32. Its kernels
    and biases are kept per dtype beside the float32 ones."""
    x = torch.from_numpy(chips).float() / 255
    with torch.no_grad():
        for blocks in (5, 10, 14):
            exact, fast = net.feature_map(x, blocks), net.feature_map(x, blocks, torch.bfloat16)
            assert fast.dtype == torch.float32 and fast.shape == exact.shape
            assert 1e-4 < float((fast - exact).norm() / exact.norm()) < 0.03
        trainable = DlibBlocks(net, 5, 10)
        start = net.feature_map(x, 5)
        exact, fast = trainable(start), trainable(start, torch.bfloat16)
        assert fast.dtype == torch.float32 and 1e-4 < float((fast - exact).norm() / exact.norm()) < 0.03
        assert len(trainable._packed._sets) == 3  # float32 kernels; bfloat16 kernels and biases


@ONEDNN_BF16
def test_bfloat16_training_gives_float32_parameters_near_float32_gradients(net, chips):
    """The autograd path in bfloat16 (mixed-precision training): on real chips' activations after 5 blocks, the
    output of blocks 5–9 and the gradients of a loss on it (its mean square) with respect to every kernel and
    bias lie within 5 % of float32's in relative L2 norm (printed; measured 0.2–2.3 %, the output 0.5 %: bfloat16
    keeps 8 significant bits) but differ from them (the bfloat16 convolutions ran); the parameters and their
    gradients stay float32, the output is the input's dtype."""
    with torch.no_grad():
        start = net.feature_map(torch.from_numpy(chips).float() / 255, 5)
    blocks = DlibBlocks(net, 5, 10)
    runs = []
    for dtype in (torch.float32, torch.bfloat16):
        out = blocks(start, dtype)
        out.pow(2).mean().backward()
        runs.append((out.detach(), [p.grad.clone() for p in blocks.parameters()]))
        assert out.dtype == torch.float32
        assert all(p.dtype == p.grad.dtype == torch.float32 for p in blocks.parameters())
        blocks.zero_grad(set_to_none=True)
    (exact, exact_grads), (fast, fast_grads) = runs
    gaps = [float((a - b).norm() / b.norm()) for a, b in [(fast, exact), *zip(fast_grads, exact_grads)]]
    print(f"bfloat16 vs float32, relative L2: output {gaps[0]:.4f}, "
          f"gradients {min(gaps[1:]):.4f}–{max(gaps[1:]):.4f}")
    assert len(gaps) == 21 and max(gaps) < 0.05 and min(gaps) > 1e-4


def test_inference_precision_choice(monkeypatch):
    """``"auto"`` is bfloat16 exactly where the CPU has it natively; a CPU whose flags cannot be read counts as
    without it; unknown precisions are refused."""
    assert inference_dtype("float32") == torch.float32
    assert inference_dtype("auto") == (torch.bfloat16 if native_bf16() else torch.float32)
    with pytest.raises(ValueError, match="precision must be one of"):
        inference_dtype("float16")

    def unreadable(*_):
        raise OSError("no /proc here")

    monkeypatch.setattr(dlib_resnet.Path, "read_text", unreadable)
    assert native_bf16.__wrapped__() is False


def test_add_prev_zero_pads_the_smaller_input():
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 4, 4, 4), 2.0)
    out = add_padded(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert (out[:, :2, :3, :3] == 3).all() and out[:, 2:].eq(2).all() and out[:, :, 3].eq(2).all()
    # larger in channels, smaller in rows and columns (dlib's level-1 down block: 256x3x3 + 128x4x4)
    mixed = add_padded(torch.ones(1, 4, 2, 2), torch.full((1, 2, 3, 3), 5.0))
    assert mixed.shape == (1, 4, 3, 3)
    assert mixed[0, :2, :2, :2].eq(6).all() and mixed[0, :2, 2].eq(5).all() and mixed[0, 2:, :2, :2].eq(1).all()
    assert mixed[0, 2:, 2].eq(0).all()


def test_input_shape_is_checked(net):
    with pytest.raises(ValueError, match=r"\(B, 150, 150, 3\)"):
        net(torch.zeros(1, 3, 150, 150))


def test_gradient_wrt_image_matches_finite_differences(net, chips):
    """gradcheck in float64 on the real network, through a 4 x 4 patch of a real chip.

    The network is piecewise linear (relu, max-pool): finite differences are exact only while no unit
    changes side, so the perturbation is confined to a small patch, where few units are affected.
    """
    image = torch.from_numpy(chips[2:3]).double() / 255
    patch = image[:, 70:74, 70:74].clone().requires_grad_(True)

    def descriptor(patch: torch.Tensor) -> torch.Tensor:
        top = torch.cat([image[:, 70:74, :70], patch, image[:, 70:74, 74:]], dim=2)
        return net(torch.cat([image[:, :70], top, image[:, 74:]], dim=1))

    assert torch.autograd.gradcheck(descriptor, (patch,), eps=1e-6, atol=1e-8, rtol=1e-5, fast_mode=True)


def test_differentiable_pipeline_close_to_dlibs(net):
    """Photo + landmarks -> our chip -> our descriptor, against dlib's compute_face_descriptor(img, shape):
    the chips differ only by dlib's integer truncation, so the descriptors stay far inside dlib's
    same-person distance (0.6)."""
    from morphable.identity import extract_face_chips

    recogniser = dlib.face_recognition_model_v1(str(default_weights_path()))
    folder = data_file("deepface/tests/unit/dataset")
    for name in ("img10.jpg", "img1.jpg"):  # without and with the anti-aliasing pyramid
        face = largest_face(folder / name)
        parts = dlib.points([dlib.point(int(x), int(y)) for x, y in face.landmarks68])
        shape = dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), parts)
        theirs = np.array(recogniser.compute_face_descriptor(face.image, shape, 0, 0.25))
        image = torch.from_numpy(np.array(face.image)).float()[None] / 255
        with torch.no_grad():
            ours = net(extract_face_chips(image, torch.from_numpy(face.landmarks68)[None]))[0].double().numpy()
        assert np.linalg.norm(ours - theirs) < 0.02  # measured 0.005


def test_features_give_the_pooled_fc_input_and_the_descriptor(net, chips, dlib_descriptors):
    x = torch.from_numpy(chips).float() / 255
    with torch.no_grad():
        pooled, descriptor = net.features(x)
        forward = net(x)
    assert pooled.shape == (3, 256) and descriptor.shape == (3, 128)
    assert torch.equal(descriptor, forward)
    # the fc layer (no bias) maps the pooled features to dlib's descriptor: check in float64 against dlib
    assert np.abs((pooled.double() @ net.fc_weight.double().T).numpy() - dlib_descriptors).max() <= 1e-5
    assert (pooled >= 0).all()  # the average of relu outputs
    # with gradients (plain autograd path) the same numbers
    pooled_grad, descriptor_grad = net.features(x[:1].clone().requires_grad_(True))
    assert descriptor_grad.requires_grad and (pooled_grad.detach() - pooled[:1]).abs().max() <= 1e-5  # fused vs plain convs
