"""The Motion encoder's own ViT block against timm's: same weights from a seed, same state-dict
keys, same outputs in eval and (with stochastic depth) in training; and a run whose model has no
I-frame path never imports timm or torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from timm.layers import trunc_normal_ as timm_trunc_normal_
from timm.models.vision_transformer import Block as TimmBlock

from mvmae.train.vit_block import Block, trunc_normal_


@pytest.mark.parametrize("dim, heads, mlp_ratio, drop_path", [(64, 2, 4.0, 0.0), (96, 3, 2.0, 0.2)])
def test_block_equals_timm_block(dim, heads, mlp_ratio, drop_path) -> None:
    torch.manual_seed(0)
    ours = Block(dim, heads, mlp_ratio=mlp_ratio, drop_path=drop_path)
    torch.manual_seed(0)
    theirs = TimmBlock(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=drop_path)
    mine, timm_state = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(timm_state)  # same names, same order: checkpoints load both ways
    for name in mine:
        assert torch.equal(mine[name], timm_state[name]), name  # a seed gives the same weights
    x = torch.randn(3, 17, dim)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    ours.train(), theirs.train()
    torch.manual_seed(1)
    a = ours(x)
    torch.manual_seed(1)
    b = theirs(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # stochastic depth draws alike
    if drop_path:  # and it does drop: training output differs from eval on some of 24 samples
        many = x.repeat(8, 1, 1)
        torch.manual_seed(2)
        trained = ours.train()(many)
        assert not torch.allclose(trained, ours.eval()(many))


def test_trunc_normal_is_timms() -> None:
    """Our truncated normal init draws what timm's does (so seeded weights did not change)."""
    a, b = torch.empty(1000), torch.empty(1000)
    torch.manual_seed(3)
    trunc_normal_(a, std=0.02)
    torch.manual_seed(3)
    timm_trunc_normal_(b, std=0.02)
    assert torch.equal(a, b)


def test_an_mv_only_run_imports_neither_timm_nor_torchvision() -> None:
    """Both cost 2-3 s of start-up per process (torchvision imports torch._dynamo)."""
    code = ("import sys; import mvmae.train.finetune, mvmae.train.pretrain, mvmae.eval.evaluate; "
            "from mvmae.train.motion_encoder import MotionEncoder, MotionEncoderConfig; "
            "MotionEncoder(MotionEncoderConfig(grid=(2, 4, 4), in_dim=8)); "
            "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
