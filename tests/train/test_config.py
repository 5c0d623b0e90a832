"""Configs: defaults, partial YAML, dotted overrides, type checks, errors naming key and file, hash."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from morphable.errors import MorphableError
from morphable.train.config import (ConfigError, OptimConfig, ScheduleConfig, TrainConfig, config_hash,
                                    config_to_dict, flatten_config, load_config, save_config)


@dataclass(frozen=True)
class Inner:
    size: int = 8
    weights: dict[str, float] = field(default_factory=lambda: {"a": 1.0})


@dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()


@dataclass(frozen=True)
class Cfg:
    optim: OptimConfig = OptimConfig(lr=1e-3)
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig(steps=50)
    nested: Outer = Outer()
    root: Path | None = None
    tags: list[str] = field(default_factory=list)
    flag: bool = False


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_partial_yaml_and_overrides(tmp_path):
    assert load_config(Cfg) == Cfg()
    path = _write(tmp_path, "optim:\n  name: adamw\n  betas: [0.5, 0.9]\ntrain:\n  steps: 300\n"
                            "nested:\n  inner:\n    size: 3\n")
    cfg = load_config(Cfg, path, ["optim.lr=1e-4", "schedule.name=cosine", "train.steps=1e3", "root=data/x",
                                  "tags=[a, b]", "flag=true", "nested.inner.weights.b=2"])
    assert cfg.optim == OptimConfig(name="adamw", lr=1e-4, betas=(0.5, 0.9))  # "1e-4" is a string to PyYAML
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_steps == 0
    assert cfg.train.steps == 1000 and cfg.train.log_every == 10  # the file's 300, then the override
    assert cfg.nested.inner.size == 3 and cfg.nested.inner.weights == {"a": 1.0, "b": 2.0}
    assert cfg.root == Path("data/x") and cfg.tags == ["a", "b"] and cfg.flag is True
    assert load_config(Cfg, overrides=["root=null"]).root is None
    assert load_config(Cfg, _write(tmp_path, "")) == Cfg()  # an empty file keeps the defaults


@pytest.mark.parametrize("text, overrides, key, words", [
    ("optim:\n  lrr: 0.1\n", [], "optim.lrr", "unknown key"),
    ("", ["optim.lrr=0.1"], "optim.lrr", "unknown key"),
    ("bogus: 1\n", [], "bogus", "unknown key"),
    ("", ["train.steps=many"], "train.steps", "expected int"),
    ("", ["train.steps=2.5"], "train.steps", "expected int"),
    ("", ["optim.lr=fast"], "optim.lr", "expected float"),
    ("", ["optim.name=sgd"], "optim.name", "expected one of 'adam', 'adamw'"),
    ("", ["optim.betas=[0.9]"], "optim.betas", "expected 2 values"),
    ("", ["flag=1"], "flag", "expected bool"),
    ("optim: 3\n", [], "optim", "expected a section"),
    ("", ["optim.lr.x=1"], "optim.lr", "expected float, got {'x': 1}"),
    ("", ["optim.betas=[0.9, {a: 1}]"], "optim.betas[1]", "expected float"),
    ("", ["optim.lr=-1"], "optim", "lr must be > 0"),
    ("", ["train.log_every=0"], "train", "log_every"),
])
def test_errors_name_the_key_and_source(tmp_path, text, overrides, key, words):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, path, overrides)
    message = str(info.value)
    assert isinstance(info.value, MorphableError) and "\n" not in message
    assert info.value.key == key and key in message and words in message
    assert (overrides[0] if overrides else str(path)) in message


@pytest.mark.parametrize("text, words", [
    ("optim: [1, 2\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_bad_files(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=words) as info:
        load_config(Cfg, path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Cfg, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(Cfg, overrides=["optim.lr"])
    with pytest.raises(ConfigError, match="tags: cannot parse the value '\\[a, b'"):
        load_config(Cfg, overrides=["tags=[a, b"])


def test_save_round_trip_and_hash(tmp_path):
    cfg = load_config(Cfg, overrides=["optim.betas=[0.5, 0.75]", "root=a/b", "tags=[x]", "nested.inner.size=4"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optim"]["betas"] == [0.5, 0.75]
    assert load_config(Cfg, tmp_path / "config.yaml") == cfg
    assert config_hash(load_config(Cfg, tmp_path / "config.yaml")) == config_hash(cfg)
    assert config_hash(cfg) != config_hash(load_config(Cfg, overrides=["optim.betas=[0.5, 0.76]", "root=a/b",
                                                                       "tags=[x]", "nested.inner.size=4"]))
    # canonical JSON: sorted keys, no spaces, tuples as lists, paths as strings; checked on a small config
    small = OptimConfig(lr=0.5, betas=(0.5, 0.25))
    text = ('{"betas":[0.5,0.25],"grad_clip":0.0,"lr":0.5,"name":"adam","weight_decay":0.0}')
    assert config_hash(small) == hashlib.sha256(text.encode()).hexdigest()
    assert config_to_dict(small) == json.loads(text)
    assert flatten_config(config_to_dict(cfg))["nested.inner.weights.a"] == 1.0
