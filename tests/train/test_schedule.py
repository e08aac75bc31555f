"""lr_at (warm-up + cosine), AdamW param groups without decay on norms/biases/positions, lr_scale."""

from __future__ import annotations

import math

import pytest
import torch

from mvmae.train.motion_encoder import MotionEncoder, motion_encoder_config
from mvmae.train.schedule import build_optimizer, is_no_decay, lr_at, set_lr


def test_warmup_is_linear_and_reaches_base():
    lrs = [lr_at(s, 1e-3, warmup_steps=4, total_steps=20) for s in range(4)]
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


def test_cosine_decay_to_min():
    kw = dict(base_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # half way: mean of base and min
    assert lr_at(35, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(10_000, **kw) == pytest.approx(0.1)
    lrs = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone after warm-up


def test_no_warmup_and_pure_function():
    assert lr_at(0, 2.0, 0, 100) == pytest.approx(2.0)
    assert lr_at(37, 2.0, 5, 100) == lr_at(37, 2.0, 5, 100)


@pytest.mark.parametrize("args", [(-1, 1.0, 0, 10), (0, 1.0, 20, 10), (0, 1.0, -2, 10)])
def test_bad_schedule_arguments(args):
    with pytest.raises(ValueError):
        lr_at(*args)


def _encoder() -> MotionEncoder:
    torch.manual_seed(0)
    return MotionEncoder(motion_encoder_config("micro", grid=(2, 2, 2), pos="factorised"))


def _names_by_group(optimizer, model) -> dict[str, set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}


def test_no_weight_decay_on_norms_biases_positions():
    model = _encoder()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    groups = _names_by_group(optimizer, model)
    assert {"pos_embed_temporal", "pos_embed_spatial", "embed.bias", "norm.weight",
            "blocks.0.norm1.weight", "blocks.1.attn.qkv.bias"} <= groups["model/no_decay"]
    assert {"embed.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"} <= \
        groups["model/decay"]
    decay = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decay == {"model/decay": 0.05, "model/no_decay": 0.0}
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))
    assert is_no_decay("decoder.mask_token", torch.zeros(1, 1, 8))


def test_lr_scale_per_group_and_set_lr():
    encoder, head = _encoder(), torch.nn.Linear(64, 5)
    for p in encoder.parameters():
        p.requires_grad_(False)
    for p in encoder.blocks[-1].parameters():  # fine-tuning phase 2: top block unfrozen
        p.requires_grad_(True)
    optimizer = build_optimizer(
        [{"params": head, "name": "head"},
         {"params": encoder.named_parameters(), "lr_scale": 0.1, "name": "encoder"}],
        lr=5e-5, weight_decay=0.05)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"head/decay": 5e-5, "head/no_decay": 5e-5,
                                 "encoder/decay": 5e-6, "encoder/no_decay": 5e-6})
    trainable = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trainable == {id(p) for p in [*head.parameters(), *encoder.blocks[-1].parameters()]}
    set_lr(optimizer, lr_at(100, 1e-4, 10, 100, min_lr=1e-6))
    assert {g["name"]: g["lr"] for g in optimizer.param_groups}["encoder/decay"] == pytest.approx(1e-7)


def test_include_frozen_and_duplicate_params():
    encoder = _encoder()
    for p in encoder.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(encoder, lr=1e-3)
    optimizer = build_optimizer(encoder, lr=1e-3, include_frozen=True)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(encoder.parameters()))
    with pytest.raises(ValueError, match="shares parameters"):
        build_optimizer([{"params": encoder}, {"params": encoder.blocks}], lr=1e-3, include_frozen=True)


def test_optimizer_steps_and_skips_no_grad_params():
    model = _encoder()
    optimizer = build_optimizer(model, lr=1e-2, betas=(0.9, 0.999))
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    before = model.pos_embed_spatial.detach().clone()
    frozen_before = model.blocks[0].attn.qkv.weight.detach().clone()
    model.blocks[0].requires_grad_(False)  # frozen after the optimizer was built: no grad, no step
    model(torch.randn(2, 8, 4)).pow(2).mean().backward()
    optimizer.step()
    assert not torch.equal(model.pos_embed_spatial, before)
    assert torch.equal(model.blocks[0].attn.qkv.weight, frozen_before)
