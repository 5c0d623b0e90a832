"""Shipped network weights: small package files, loaded by name with a sha256 check and safely.

Each entry of :data:`SHIPPED` names a file in ``morphable/nets/weights/``, its sha256 and the command that
reproduces it (also recorded inside the file). Files are ``torch.save`` dictionaries of tensors, numbers
and strings, read with ``torch.load(weights_only=True)`` (no code runs on load).
"""
from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from pathlib import Path

import torch
from torch import nn

from morphable.errors import ModelFileError
from morphable.io.atomic import atomic_write
from morphable.models.registry import sha256_file

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

SHIPPED: dict[str, tuple[str, str]] = {
    # name: (file name, sha256); reproduce with the command stored in the file (``meta["command"]``)
    # genova-ict: `make genova-ict DATA=../shared/data` (docs/genova.md)
    "genova-ict": ("genova-ict.pt", "83b9b801a3b110668ec22e1ea9caab7ac12a1636a3e722d4c4c7312548c79113"),
    # stn-sfm, stn-sfm-small, stn-ict, stn-ict-small: the 3DMM-STN localisers (dlib trunk, neutral θ / small CNN
    # with the expression model), the commands in docs/stn.md
    "stn-sfm": ("stn-sfm.pt", "383cbf9f485fcf6475b4d8484bda7fc3fad9131f3fa85466b945e997b6a45e9b"),
    "stn-sfm-small": ("stn-sfm-small.pt", "399962f7ab9a7afe167831a96a1ad5a37ae993a6b0153d45931df05ee1e3a808"),
    "stn-ict": ("stn-ict.pt", "42f7b3d6c5e18884120fd711d9141634653e39fddf684afa84ae93f46b522aa3"),
    "stn-ict-small": ("stn-ict-small.pt", "080865906f2057d04cc1bd23087f1dbc97b2c213cdd87197e5bb3e4cc6e5cc5c"),
    # ringnet-ict-dlib: RingNet on dlib's trunk, the first command in docs/ringnet.md (1000 steps, ~25 min on 2
    # busy cores); ringnet-ict (the default): the small trunk, the second command there
    "ringnet-ict-dlib": ("ringnet-ict-dlib.pt", "3c3ef0b60a4292f27c00e0726fbb59b2b00a4281698893b6904192f729bd9165"),
    "ringnet-ict": ("ringnet-ict.pt", "f7e2863f8c630bc41f2babe3e4c7ef78eb2063bd63d03011554a5237f2484b7d"),
    # coarse-sfm: CoarseNet on dlib's trunk with a refining stage on its own two tuned blocks, trained in mixed
    # precision with blended albedos: `morphable train coarse -o RUN --set data.variant.size=150 --set model.trunk=dlib
    # --set model.hidden=128 --set model.tune=9 --set model.refine_blocks=3 --set model.refine_tune=2 --set
    # train.threads=2 --set train.steps=9000 --set model.precision=auto --set data.albedo_mix=0.5` (45 min on 2 cores
    # with bfloat16, + 77 s of data from nothing), docs/coarse.md
    "coarse-sfm": ("coarse-sfm.pt", "cf527c4c8e8ee715ff09a6f347fffa7fa44c9c09e1243df1051058e9f9d888cc"),
    # sir-ict: the command in docs/sir.md (morphable train sir, 1800 steps, ~10 min on 2 busy cores)
    "sir-ict": ("sir-ict.pt", "6326b306a389dcf2e0ffc27f217110abbcb1f7a59d72eddd00828db4ef5cb4a5"),
}


def shipped_key(kind: str, label: str, model_name: str) -> str:
    """The :data:`SHIPPED` name ``<kind>-<model_name>`` (e.g. ``coarse-sfm``).

    Raises:
        ModelFileError: none ships for this model (one line listing the models that have one).
    """
    key = f"{kind}-{model_name}"
    if key not in SHIPPED:
        known = ", ".join(k.removeprefix(f"{kind}-") for k in sorted(SHIPPED) if k.startswith(f"{kind}-")) or "none"
        raise ModelFileError(key, f"no shipped {label} for model {model_name!r} (shipped: {known})")
    return key


def shipped_path(name: str) -> Path | None:
    """Path of shipped weights ``name`` (e.g. ``"genova-ict"``), or ``None`` when none ship."""
    entry = SHIPPED.get(name)
    if entry is None:
        return None
    path = WEIGHTS_DIR / entry[0]
    return path if path.exists() else None


def load_weights(name_or_path: str | PathLike) -> dict:
    """Load a weights dictionary by shipped name (sha256 checked) or from a file path.

    Raises:
        ModelFileError: unknown name, missing or corrupt file, sha256 mismatch (one line naming the file).
    """
    text = str(name_or_path)
    if text in SHIPPED:
        path = WEIGHTS_DIR / SHIPPED[text][0]
        if not path.exists():
            raise ModelFileError(path, f"shipped weights {text!r} are missing from the installation")
        digest = sha256_file(path)
        if digest != SHIPPED[text][1]:
            raise ModelFileError(path, f"sha256 {digest} does not match the expected {SHIPPED[text][1]}")
    else:
        path = Path(text)
        if not path.is_file():
            known = ", ".join(sorted(SHIPPED)) or "none"
            raise ModelFileError(text, f"no such weights file (shipped names: {known})")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a corrupt or foreign file
        raise ModelFileError(path, f"not a readable weights file ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or "format" not in data or "state" not in data:
        raise ModelFileError(path, "not a morphable weights file (no 'format'/'state' entries)")
    return data


Selector = Callable[[str, torch.Tensor], bool]
"""``(state name, tensor) -> bool``: whether :func:`save_net` stores an entry in a smaller type."""


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation with one scale per row (per output unit of a linear layer's ``(out, in)``
    weight): ``q = round(w / a)`` in [−127, 127] with ``a = max |w_row| / 127``; ``w ≈ a q``, off by at most
    ``a / 2`` per entry. Returns ``q`` ``(out, in)`` int8 and ``a`` ``(out,)`` float32."""
    scale = (weight.detach().abs().amax(1).float() / 127).clamp_min(torch.finfo(torch.float32).tiny)
    return (weight.detach().float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`quantize_rows`: ``a q`` ``(out, in)`` float32."""
    return q.float() * scale.float()[:, None]


def stored_entry(name: str, value: torch.Tensor, half: Selector | None,
                 int8: Selector | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What :func:`save_net` writes for one state entry: ``(q, scale)`` for a 2-D entry ``int8`` selects
    (:func:`quantize_rows`), else ``(value as float16 where half selects it, float32 otherwise, None)``."""
    if int8 is not None and value.dim() == 2 and int8(name, value):
        return quantize_rows(value)
    return (value.half() if half is not None and half(name, value) else value.float()).contiguous(), None


def restored_entry(stored: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 value :func:`load_net` gives an entry :func:`stored_entry` wrote."""
    return stored.float() if scale is None else dequantize_rows(stored, scale)


def save_net(net: nn.Module, path: str | PathLike, format: str, version: int, header: dict,
             meta: dict | None = None, *, half: Selector | None = None, int8: Selector | None = None,
             skip: tuple[str, ...] = ()) -> None:
    """Write a network's file atomically, ``torch.load(weights_only=True)``-safe.

    Args:
        format, version: what :func:`load_net` will require; header: the entries that rebuild the module
            (sizes, layouts); meta: provenance (the command, the resolved config, metrics).
        half: which state entries to store as float16 (package data stays small); the rest is stored as float32.
        int8: which 2-D entries to store as int8 with a scale per row instead (:func:`quantize_rows`; the
            scales go in the file's ``scales`` entry), before ``half`` is asked.
        skip: state-dict prefixes not written (e.g. a frozen trunk whose weights ship on their own).
    """
    state, scales = {}, {}
    for k, v in net.state_dict().items():
        if not k.startswith(skip):
            state[k], scale = stored_entry(k, v, half, int8)
            if scale is not None:
                scales[k] = scale
    data = {"format": format, "version": version, **header, "state": state, "meta": dict(meta or {})}
    if scales:
        data["scales"] = scales
    with atomic_write(path) as f:
        torch.save(data, f)


def round_to_stored(net: nn.Module, half: Selector, int8: Selector | None = None) -> None:
    """Round the state entries to what :func:`save_net` stores (``int8``'s selection quantised per row, ``half``'s
    to float16) in place, so the network computes what its saved file will (training records its final metrics
    after this)."""
    with torch.no_grad():
        for name, value in net.state_dict().items():
            value.copy_(restored_entry(*stored_entry(name, value, half, int8)).to(value.dtype))


def load_net(name_or_path: str | PathLike, format: str, version: int, label: str,
             build: Callable[[dict], nn.Module], *, skipped: tuple[str, ...] = ()) -> nn.Module:
    """A network from :func:`save_net`'s file (or a shipped name), in eval mode, ``meta`` attached.

    Args:
        format, version: what the file must declare; label: the network's name for messages ("CoarseNet").
        build: the module from the file's entries; its state is then loaded (as float32).
        skipped: the prefixes :func:`save_net` did not write (the module built them).
    Raises:
        ModelFileError: missing, corrupt, foreign or inconsistent file (one line naming it).
    """
    data = load_weights(name_or_path)
    if data.get("format") != format or data.get("version") != version:
        raise ModelFileError(str(name_or_path), f"not a {label} file (format {data.get('format')!r}, "
                             f"version {data.get('version')!r})")
    try:
        scales = data.get("scales", {})
        net = build(data)
        missing, unexpected = net.load_state_dict({k: restored_entry(v, scales.get(k))
                                                   for k, v in data["state"].items()}, strict=False)
        missing = [k for k in missing if not k.startswith(skipped)] if skipped else missing
        if missing or unexpected:
            raise ValueError(f"missing {missing}, unexpected {unexpected}")
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ModelFileError(str(name_or_path), f"inconsistent {label} weights ({err})") from None
    net.meta = dict(data.get("meta", {}))
    return net.eval()
