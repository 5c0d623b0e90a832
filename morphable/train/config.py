"""Training configs: frozen dataclasses, read from YAML and dotted command-line overrides.

A recipe's config is a frozen dataclass whose fields are plain values or other frozen dataclasses
(sections). Every recipe config has at least the three generic sections defined here::

    @dataclass(frozen=True)
    class MyConfig:
        optim: OptimConfig = OptimConfig(lr=1e-3)
        schedule: ScheduleConfig = ScheduleConfig()
        train: TrainConfig = TrainConfig(steps=5000)
        data: MyDataConfig = MyDataConfig()

:func:`load_config` starts from the defaults, applies a YAML file (partial is fine: missing keys keep
their defaults), then ``"section.key=value"`` overrides whose values are parsed with
:func:`yaml.safe_load` (so ``optim.betas=[0.5,0.9]`` is a list and ``train.steps=200`` an int). Values are
checked against the field's type hint (``int``, ``float``, ``bool``, ``str``, ``Path``, ``Literal``,
``X | None``, ``tuple[...]``, ``list[X]``, ``dict[str, X]``, nested dataclasses); an unknown key or a value
of the wrong type raises :class:`ConfigError` naming the dotted key and the file or override it came from.
A dataclass's ``__post_init__`` may raise ``ValueError`` for values out of range; that becomes a
:class:`ConfigError` naming the section too.

:func:`config_hash` is the sha256 of the config's canonical JSON (sorted keys, no spaces): two configs
hash equal exactly when every resolved value is equal. It is stored in checkpoints to refuse resuming
with a different config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from morphable.errors import MorphableError
from morphable.io.atomic import atomic_write

T = TypeVar("T")


class ConfigError(MorphableError):
    """A config file or override is unusable: unknown key, wrong type, unreadable YAML.

    Args:
        key: the dotted key at fault (``"optim.lr"``), or ``None`` when the problem is the whole file.
        problem: what is wrong, in a few words.
        source: the YAML file or ``"--set optim.lr=..."`` the value came from, if any.
    """

    def __init__(self, key: str | None, problem: str, source: str | None = None):
        self.key, self.problem, self.source = key, problem, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}" if key else f"{where}{problem}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser: Adam (Kingma & Ba 2015) or AdamW (Loshchilov & Hutter 2019, decoupled weight decay).

    Attributes:
        name: ``"adam"`` or ``"adamw"``.
        lr: peak learning rate (the schedule multiplies it by a factor in [0, 1]).
        weight_decay: L2 penalty (Adam) or decoupled decay (AdamW).
        betas: Adam's moment decay rates.
        grad_clip: clip the global L2 norm of all gradients to this value; 0 = off.
    """

    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.0

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule: a factor on ``optim.lr`` per optimiser step (see :func:`lr_factor`).

    Attributes:
        name: ``"constant"``, ``"cosine"`` (half cosine from 1 down to ``min_lr_ratio`` at the last step,
            Loshchilov & Hutter 2017 without restarts) or ``"step"`` (× ``gamma`` every ``step_size``).
        warmup_steps: linear warm-up from ``1/warmup_steps`` to 1 over the first steps; 0 = none.
        step_size: steps between decays of the ``"step"`` schedule.
        gamma: decay factor of the ``"step"`` schedule.
        min_lr_ratio: final factor of the ``"cosine"`` schedule.
    """

    name: Literal["constant", "cosine", "step"] = "constant"
    warmup_steps: int = 0
    step_size: int = 1000
    gamma: float = 0.1
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        if self.warmup_steps < 0 or self.step_size < 1:
            raise ValueError("warmup_steps must be >= 0 and step_size >= 1")
        if not 0 <= self.min_lr_ratio <= 1 or not self.gamma > 0:
            raise ValueError("min_lr_ratio must lie in [0, 1] and gamma be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """The loop: how long, how often to log / validate / checkpoint / draw images.

    Attributes:
        steps: optimiser steps in the whole run (skipped non-finite steps count).
        seed: seeds Python's ``random``, numpy's global RNG, torch's, and the batch generator.
        log_every: a ``log.jsonl`` row every this many steps.
        val_every: ``recipe.validate`` every this many steps and at the end; 0 = off.
        checkpoint_every: a checkpoint every this many steps (and always at the last step); 0 = only the last.
        image_every: an image grid every this many steps; 0 = off.
        threads: ``torch.set_num_threads`` when > 0; 0 leaves torch's default.
        keep_checkpoints: how many of the newest checkpoints to keep (older ones are deleted).
        max_nonfinite: stop with an error after this many consecutive non-finite steps.
    """

    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    val_every: int = 0
    checkpoint_every: int = 100
    image_every: int = 0
    threads: int = 0
    keep_checkpoints: int = 3
    max_nonfinite: int = 20

    def __post_init__(self):
        if self.steps < 0 or self.log_every < 1 or self.keep_checkpoints < 1 or self.max_nonfinite < 1:
            raise ValueError("steps must be >= 0 and log_every, keep_checkpoints, max_nonfinite >= 1")
        if min(self.val_every, self.checkpoint_every, self.image_every, self.threads) < 0:
            raise ValueError("val_every, checkpoint_every, image_every and threads must be >= 0")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(hint: Any, value: Any, key: str, source: str | None) -> Any:
    """``value`` (as read from YAML) checked and converted to the type ``hint``; ConfigError otherwise."""
    def bad(problem: str | None = None) -> ConfigError:
        return ConfigError(key, problem or f"expected {_type_name(hint)}, got {value!r}", source)

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise bad(f"expected a section (mapping) of {hint.__name__}, got {value!r}")
        return _build(hint, value, key, source)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise bad(f"expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, key, source)
            except ConfigError:
                continue
        raise bad()
    if hint is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, str):  # "1e3": PyYAML reads exponents without a dot as strings
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, float) and value.is_integer():  # 1e3 -> 1000
            return int(value)
        if not isinstance(value, int):
            raise bad()
        return value
    if hint is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad() from None
        if not isinstance(value, int | float):
            raise bad()
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if hint is Path:
        if not isinstance(value, str | PathLike):
            raise bad()
        return Path(value)
    if origin in (tuple, list):
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
            raise bad()
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise bad(f"expected {len(args)} values, got {len(value)}")
            items = [_convert(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value))]
        else:
            item = args[0] if args else Any
            items = [_convert(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad()
        k_hint, v_hint = args if args else (Any, Any)
        return {_convert(k_hint, k, key, source): _convert(v_hint, v, f"{key}.{k}", source) for k, v in value.items()}
    raise ConfigError(key, f"unsupported field type {_type_name(hint)} in the config class", source)


def _build(cls: type[T], data: Mapping, prefix: str, source: str | None) -> T:
    """An instance of the dataclass ``cls`` from defaults updated by the (partial) mapping ``data``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            known = ", ".join(fields)
            raise ConfigError(key, f"unknown key (known in {prefix or 'the config'}: {known})", source)
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            default = _field_default(fields[name])
            base = config_to_dict(default) if default is not None else {}
            value = _deep_merge(base, value)
        values[name] = _convert(hint, value, key, source)
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:
        raise ConfigError(prefix or cls.__name__, str(err), source) from None


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _deep_merge(base: Mapping, update: Mapping) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(None, "config file not found", str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(None, f"cannot read the config file ({err})", str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(None, f"not valid YAML{where}", str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(None, f"expected a mapping of sections at the top level, got {type(data).__name__}",
                          str(path))
    return data


def _parse_override(override: str) -> dict:
    """``"a.b=value"`` -> ``{"a": {"b": yaml.safe_load("value")}}``."""
    source = f"--set {override}"
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(None, "expected KEY=VALUE with a dotted KEY such as optim.lr=1e-4", source)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(key, f"cannot parse the value {text!r}", source) from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_config(cls: type[T], path: str | PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """The config ``cls`` from its defaults, a YAML file, then dotted overrides.

    Args:
        cls: a frozen dataclass (a recipe's ``Config``).
        path: a YAML file with some or all of the keys; ``None`` = defaults only.
        overrides: ``"section.key=value"`` strings applied in order after the file.
    Returns:
        an instance of ``cls``.
    Raises:
        ConfigError: unknown key, wrong type, value out of range, unreadable file, malformed override;
            the message names the key and the file or override.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"load_config: {cls!r} is not a dataclass")
    source = str(path) if path is not None else None
    data = _read_yaml(Path(path)) if path is not None else {}
    cfg = _build(cls, data, "", source)
    for override in overrides:
        patch = _parse_override(override)
        cfg = _build(cls, _deep_merge(config_to_dict(cfg), patch), "", f"--set {override}")
    return cfg


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, PathLike):
        return str(value)
    return value


def config_to_dict(cfg: Any) -> dict:
    """The config as nested plain dicts, lists, numbers and strings (tuples become lists, paths strings),
    in field order; :func:`load_config` of its YAML gives back an equal config."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict: expected a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def save_config(cfg: Any, path: str | PathLike) -> None:
    """Write the fully resolved config as YAML, atomically (a reader never sees half a file)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    with atomic_write(path, "w") as f:
        f.write(text)


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no inf/nan
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def config_hash(cfg: Any) -> str:
    """sha256 (hex) of the config's canonical JSON: sorted keys, no spaces, floats as Python's repr."""
    text = json.dumps(_canonical(config_to_dict(cfg)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def flatten_config(cfg_dict: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}`` (dotted keys, leaves only)."""
    out: dict[str, Any] = {}
    for k, v in cfg_dict.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten_config(v, key))
        else:
            out[key] = v
    return out
