"""load_config precedence (defaults < YAML < CLI), unknown keys, nesting, coercion, round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from mvmae.train.config import (
    OVERRIDES_SOURCE, ConfigError, config_to_dict, load_config, save_resolved_config)
from mvmae.train.motion_encoder import MotionEncoderConfig


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: int = 5


@dataclass
class RunConfig:
    out_dir: Path = Path("runs/default")
    epochs: int = 10
    seed: int = 0
    amp: bool = True
    tags: list[str] = field(default_factory=list)
    resume: Optional[Path] = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: MotionEncoderConfig = field(default_factory=lambda: MotionEncoderConfig(dim=192, heads=3))

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


def _yaml(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_only():
    cfg = load_config(RunConfig)
    assert cfg == RunConfig()
    assert cfg.model.dim == 192  # the field's default instance, not MotionEncoderConfig()


def test_precedence_defaults_yaml_cli(tmp_path):
    path = _yaml(tmp_path, "epochs: 50\nseed: 3\noptim:\n  lr: 3e-4\n  warmup_epochs: 20\n")
    cfg = load_config(RunConfig, path, {"epochs": 400, "optim.lr": 5e-5, "seed": None})
    assert cfg.epochs == 400  # CLI beats YAML
    assert cfg.seed == 3  # None override = option not given: YAML stays
    assert cfg.optim.lr == 5e-5 and cfg.optim.warmup_epochs == 20  # nested: merged per key
    assert cfg.optim.betas == (0.9, 0.95) and cfg.amp is True  # defaults fill the rest


def test_nested_dict_overrides_and_partial_nested_yaml(tmp_path):
    path = _yaml(tmp_path, "model:\n  depth: 2\n  grid: [4, 7, 7]\n")
    cfg = load_config(RunConfig, path, {"model": {"heads": 6, "dim": None}, "model.pos": "factorised"})
    assert cfg.model.grid == (4, 7, 7) and isinstance(cfg.model.grid, tuple)
    assert (cfg.model.dim, cfg.model.depth, cfg.model.heads, cfg.model.pos) == \
        (192, 2, 6, "factorised")


@pytest.mark.parametrize("text,key", [("epoch: 5\n", "'epoch'"),
                                      ("optim:\n  learning_rate: 0.1\n", "'optim.learning_rate'"),
                                      ("model:\n  dimm: 8\n", "'model.dimm'")])
def test_unknown_yaml_key_names_key_and_file(tmp_path, text, key):
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"{path}: unknown key {key}") as info:
        load_config(RunConfig, path)
    assert "known:" in str(info.value)


def test_unknown_override_key():
    with pytest.raises(ConfigError, match=rf"{OVERRIDES_SOURCE}: unknown key 'optim.momentum'"):
        load_config(RunConfig, overrides={"optim.momentum": 0.9})


@pytest.mark.parametrize("text,match", [("epochs: many\n", "'epochs' must be int"),
                                        ("epochs: 2.5\n", "'epochs' must be int"),
                                        ("amp: 1\n", "'amp' must be bool"),
                                        ("optim:\n  betas: [0.9]\n", "'optim.betas' needs 2"),
                                        ("optim: 3\n", "'optim' must be a mapping"),
                                        ("epochs: 0\n", "invalid RunConfig: epochs must be >= 1"),
                                        ("model:\n  dim: 100\n", "invalid MotionEncoderConfig 'model'"),
                                        ("- a\n- b\n", "top level must be a mapping")])
def test_bad_values_name_the_key_and_file(tmp_path, text, match):
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(RunConfig, path)
    assert str(path) in str(info.value)


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(RunConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(RunConfig, _yaml(tmp_path, "epochs: [1\n"))


def test_coercions(tmp_path):
    path = _yaml(tmp_path, "out_dir: /tmp/x\nresume: ckpt/last.pt\ntags: [a, b]\nepochs: '7'\n")
    cfg = load_config(RunConfig, path, {"optim.lr": 1})
    assert cfg.out_dir == Path("/tmp/x") and cfg.resume == Path("ckpt/last.pt")
    assert cfg.tags == ["a", "b"] and cfg.epochs == 7
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert load_config(RunConfig, overrides={"resume": "r.pt"}).resume == Path("r.pt")


def test_conflicting_overrides():
    with pytest.raises(ConfigError, match="conflicts"):
        load_config(RunConfig, overrides={"epochs": 3, "epochs.x": 4})


def test_round_trip(tmp_path):
    cfg = load_config(RunConfig, overrides={"epochs": 12, "tags": ["x"], "resume": "a/b.pt",
                                            "model.grid": (2, 3, 4), "optim.lr": 2.5e-5})
    path = save_resolved_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(RunConfig, path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left
    assert config_to_dict(cfg)["model"]["grid"] == [2, 3, 4]


def test_not_a_dataclass():
    with pytest.raises(TypeError, match="not a dataclass"):
        load_config(dict)
