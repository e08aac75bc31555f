"""The recipe configs in ``configs/`` load as ``mvmae pretrain/train --config`` loads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mvmae.train.config import load_config
from mvmae.train.finetune import FinetuneConfig
from mvmae.train.pretrain import PretrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("dataset", ["uavhuman", "kinetics"])
def test_pretrain_config_loads(dataset):
    path = CONFIGS / dataset / "pretrain.yaml"
    cfg = load_config(PretrainConfig, path, {"train": ["shards/train-000000.tar"], "codebook": "codebook.npz"})
    assert (cfg.masking, cfg.mask_ratio, cfg.model_size, cfg.epochs) == ("mgm", 0.9, "small", 400)
    assert set(yaml.safe_load(path.read_text())) <= {f for f in PretrainConfig.__dataclass_fields__}


@pytest.mark.parametrize("dataset, num_classes", [("uavhuman", 155), ("kinetics", 400)])
def test_train_config_loads(dataset, num_classes):
    cfg = load_config(FinetuneConfig, CONFIGS / dataset / "train.yaml")
    assert (cfg.epochs, cfg.phase1_epochs, cfg.model.num_classes) == (51, 6, num_classes)
    assert [cfg.phase(e) for e in (0, 5, 6, 50)] == [1, 1, 2, 2]
