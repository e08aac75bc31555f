"""The pre-norm transformer block of the Motion encoder and its pretraining decoder.

The same computation, parameter names and initialisation order as timm's
``vision_transformer.Block`` built with ``qkv_bias=True`` and no layer scale, q/k norm or gating
(what the Motion encoder always used), so checkpoints written with timm's block load unchanged and
a seed gives the same weights (``tests/train/test_vit_block.py`` checks both against timm).

Why not import timm's: importing timm imports torchvision, which imports ``torch._dynamo``; that is
2-3 s of start-up in every ``mvmae pretrain`` / ``train`` process (and every torchrun rank) whose
model has no I-frame path. The Context encoder still comes from timm (imported only when built).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float = 1.0, a: float = -2.0, b: float = 2.0) -> torch.Tensor:
    """Fill ``tensor`` from N(0, std^2) truncated to [a, b] (absolute bounds) by the inverse CDF of
    a uniform draw: the draws timm's ``trunc_normal_`` makes, so a seed gives the weights it gave.
    (torch's own ``nn.init.trunc_normal_`` samples by rejection since 2.x: other numbers.)"""
    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    tensor.uniform_(2.0 * cdf(a / std) - 1.0, 2.0 * cdf(b / std) - 1.0)
    return tensor.erfinv_().mul_(std * math.sqrt(2.0)).clamp_(min=a, max=b)


class DropPath(nn.Module):
    """Stochastic depth: each sample's residual branch dropped with probability ``rate`` in
    training (the kept ones scaled by ``1 / (1 - rate)``)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class Attention(nn.Module):
    """Multi-head self-attention: one qkv projection, scaled dot-product attention, output proj."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Linear -> GELU -> linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``; LayerNorm eps 1e-6."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))
