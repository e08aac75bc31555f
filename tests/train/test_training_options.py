"""Fine-tuning options beside the two-phase schedule: encoders that were not pretrained train
whole, the ``full`` schedule with layer-wise LR decay, label-scarce runs on a stratified subset,
and the plain 3D CNN baseline trained by the same command."""

from __future__ import annotations

import json

import pytest
import torch

from mvmae.eval.metrics import StreamingMetrics
from mvmae.train import checkpoint as ckpt
from mvmae.train.config import load_config
from mvmae.train.finetune import (FinetuneConfig, Finetuner, load_classifier, param_groups, pretrained_encoders,
                                  set_phase)
from mvmae.train.labels import SUBSET_FILE, scan_labels, stratified_subset
from mvmae.train.model import build_classifier
from mvmae.train.schedule import build_optimizer

SMALL = {
    "model": {"inputs": "mv", "motion_size": "micro", "num_segments": 2, "dim": 32, "temporal_heads": 4},
    "tokens": {"num_frames": 16, "mv_size": 8, "iframe_size": 64, "tubelet_frames": 4},
    "batch_size": 4, "val_batch_size": 8, "workers": 0, "lr": 1e-3, "warmup_epochs": 0, "epochs": 1,
    "label_smoothing": 0.0, "flip_prob": 0.0, "crop_area": [0.8, 1.0], "seed": 0,
}


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py


def config(shards: dict, out, **overrides) -> FinetuneConfig:
    """SMALL with ``overrides`` (dotted keys for nested fields) on top."""
    values = {**SMALL, "train": [shards["train"]], "val": [shards["val"]], "out": str(out)}
    return load_config(FinetuneConfig, None, {**_flat(values), **overrides})


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_an_encoder_that_was_not_pretrained_trains_whole_from_the_first_step(synth_shards, tmp_path):
    """Phase 1 freezes only pretrained encoders: from scratch the Motion encoder (embedding and
    positions included) is a new part, at the full LR, from epoch 0."""
    cfg = config(synth_shards, tmp_path / "run", phase1_epochs=1)
    model = build_classifier(cfg.model, cfg.tokens)
    assert pretrained_encoders(model, cfg) == []
    trainable = set_phase(model, 1, cfg.unfreeze_blocks, [])
    assert set(trainable) == {n for n, _ in model.named_parameters()}
    optimizer = build_optimizer(param_groups(model, cfg, []), cfg.lr, cfg.weight_decay)
    scale = {id(p): g["lr"] / cfg.lr for g in optimizer.param_groups for p in g["params"]}
    assert scale[id(model.motion_encoder.embed.weight)] == pytest.approx(cfg.scratch_lr_scale) == 0.1
    assert scale[id(model.head[1].weight)] == 1.0
    tuner = Finetuner(cfg, StreamingMetrics)
    before = tuner.raw_model.motion_encoder.embed.weight.detach().clone()
    tuner.run()
    after = ckpt.load_checkpoint(tmp_path / "run" / "last.pt")[ckpt.MODEL]
    assert not torch.equal(before, after["motion_encoder.embed.weight"])
    assert not torch.equal(torch.zeros(1), after["motion_encoder.pos_embed"][0, :1])


def test_full_schedule_trains_everything_with_layer_wise_lr_decay(synth_shards, tmp_path):
    """``full``: nothing frozen; a pretrained encoder's block i of L gets decay ** (L - i), its
    embedding and positions decay ** (L + 1), its final norm 1; the new parts 1."""
    cfg = config(synth_shards, tmp_path / "run", schedule="full", layer_decay=0.5,
                 **{"model.motion_size": "tiny"})
    model = build_classifier(cfg.model, cfg.tokens)
    encoders = [model.motion_encoder]  # as if pretrained
    assert cfg.phase(0) == cfg.phase(30) == 0
    assert set(set_phase(model, 0, cfg.unfreeze_blocks, encoders)) == {n for n, _ in model.named_parameters()}
    optimizer = build_optimizer(param_groups(model, cfg, encoders), cfg.lr, cfg.weight_decay)
    scale = {id(p): g["lr"] / cfg.lr for g in optimizer.param_groups for p in g["params"]}
    enc, depth = model.motion_encoder, 12
    assert scale[id(enc.embed.weight)] == pytest.approx(0.5 ** (depth + 1))
    assert scale[id(enc.pos_embed)] == pytest.approx(0.5 ** (depth + 1))
    assert scale[id(enc.blocks[0].attn.qkv.weight)] == pytest.approx(0.5 ** depth)
    assert scale[id(enc.blocks[depth - 1].mlp.fc2.weight)] == pytest.approx(0.5)
    assert scale[id(enc.norm.weight)] == 1.0 and scale[id(model.head[1].weight)] == 1.0
    assert len(scale) == len(list(model.parameters()))


def test_stratified_subset_keeps_every_class_and_is_reproducible():
    pairs = [(f"c{c}_{i:02d}", c) for c in range(3) for i in range(10 + 5 * c)]  # 10, 15, 20 per class
    keys = stratified_subset(pairs, 0.1, seed=1)
    per_class = [sum(k.startswith(f"c{c}_") for k in keys) for c in range(3)]
    assert per_class == [1, 2, 2]  # round half up, at least one
    assert keys == stratified_subset(list(reversed(pairs)), 0.1, seed=1)  # order of the shards does not matter
    assert keys != stratified_subset(pairs, 0.1, seed=2)
    assert len(stratified_subset(pairs, 0.01, seed=0)) == 3
    assert stratified_subset(pairs, 1.0, seed=0) == sorted(k for k, _ in pairs)
    with pytest.raises(ValueError, match="label fraction"):
        stratified_subset(pairs, 0.0, seed=0)


def test_label_fraction_trains_on_the_recorded_subset(synth_shards, tmp_path):
    """12 train clips (3 per class) at 0.5: 2 per class, recorded in the run folder; an epoch has
    8 clips = 2 steps of 4."""
    pairs = scan_labels(synth_shards["train"])
    assert len(pairs) == 12 and sorted({label for _, label in pairs}) == [0, 1, 2, 3]
    cfg = config(synth_shards, tmp_path / "run", label_fraction=0.5, label_seed=3)
    tuner = Finetuner(cfg, StreamingMetrics)
    assert tuner.steps_per_epoch == 2
    record = json.loads((tmp_path / "run" / SUBSET_FILE).read_text())
    assert record["keys"] == stratified_subset(pairs, 0.5, 3) and record["num_available"] == 12
    assert len(record["keys"]) == 8
    tuner.close()


@pytest.mark.parametrize("inputs", ["mv", "iframe"])
def test_cnn3d_baseline_trains_and_evaluates_by_the_same_command(synth_shards, tmp_path, inputs):
    cfg = config(synth_shards, tmp_path / "run", **{"model.arch": "cnn3d", "model.inputs": inputs,
                                                     "model.cnn_width": 8})
    metrics = Finetuner(cfg, StreamingMetrics).run()
    assert 0.0 <= metrics["top1"] <= 1.0
    model, classes, loaded = load_classifier(tmp_path / "run" / "last.pt")
    assert loaded.model.arch == "cnn3d" and len(classes) == 4
    assert type(model).__name__ == "CNN3DClassifier"
