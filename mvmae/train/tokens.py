"""Tubelet tokenization of MV clips.

An MV clip ``mv``: float32 (B, T, 2, h, w) is cut into tubelets of ``t`` frames by ``p x p``
cells, giving a token grid (T', h', w') = (T / t, h / p, w / p); all three must divide exactly.

Token order (the flat token index ``n`` of the (B, N, D) tensor)::

    n = (ti * h' + yi) * w' + xi        N = T' * h' * w'

i.e. time-major, then rows, then columns, the same as a (B, T', h', w') tensor flattened. Masks
from ``mvmae.train.masking`` use this order.

Token vector layout (the D = t * p * p * 2 features of one token), flattened from (t, py, px, c)::

    d = ((dt * p + dy) * p + dx) * 2 + c

where ``dt`` is the frame within the tubelet, ``(dy, dx)`` the cell within the p x p patch and
``c`` the channel (0 = dx motion, 1 = dy motion). So for the default t=2, p=1, a token is
``[dx(f0), dy(f0), dx(f1), dy(f1)]``: consecutive pairs are single (dx, dy) vectors, which is what
the codebook quantizes; the encoder's patch embedding and the reconstruction targets rely on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TokenGrid:
    """The token grid (T', h', w') of a tokenized clip: tubelets along time, rows and columns."""

    T: int
    h: int
    w: int

    def __post_init__(self) -> None:
        if min(self.T, self.h, self.w) < 1:
            raise ValueError(f"token grid sizes must be positive, got {self.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.T, self.h, self.w)

    @property
    def num_tokens(self) -> int:
        return self.T * self.h * self.w

    @property
    def num_cells(self) -> int:
        """Tokens per temporal index (h' * w')."""
        return self.h * self.w

    @classmethod
    def of_clip(cls, T: int, h: int, w: int, t: int = 2, p: int = 1) -> TokenGrid:
        """The grid for a clip of T frames on an (h, w) MV grid; ValueError unless t | T, p | h, p | w."""
        if t < 1 or p < 1:
            raise ValueError(f"tubelet sizes must be positive, got t={t}, p={p}")
        if T % t or h % p or w % p:
            raise ValueError(
                f"clip (T={T}, h={h}, w={w}) does not divide into tubelets of t={t} frames "
                f"by p={p} cells"
            )
        return cls(T // t, h // p, w // p)


def tubelets(mv: Tensor, t: int = 2, p: int = 1) -> Tensor:
    """Cut ``mv`` (B, T, 2, h, w) into tokens (B, N, D), N = T'h'w', D = t*p*p*2 (module docstring)."""
    if mv.dim() != 5 or mv.shape[2] != 2:
        raise ValueError(f"mv must be (B, T, 2, h, w), got {tuple(mv.shape)}")
    B, T, C, h, w = mv.shape
    grid = TokenGrid.of_clip(T, h, w, t, p)
    x = mv.reshape(B, grid.T, t, C, grid.h, p, grid.w, p)  # (B, T', t, C, h', py, w', px)
    x = x.permute(0, 1, 4, 6, 2, 5, 7, 3)  # (B, T', h', w', t, py, px, C)
    return x.reshape(B, grid.num_tokens, t * p * p * C)  # (B, N, D)


def untubelet(tokens: Tensor, grid: TokenGrid, t: int = 2, p: int = 1) -> Tensor:
    """Inverse of ``tubelets``: tokens (B, N, D) on ``grid`` back to mv (B, T, 2, h, w)."""
    B, N, D = tokens.shape
    if N != grid.num_tokens or D != t * p * p * 2:
        raise ValueError(
            f"tokens {tuple(tokens.shape)} do not match grid {grid.shape} with t={t}, p={p} "
            f"(expected N={grid.num_tokens}, D={t * p * p * 2})"
        )
    x = tokens.reshape(B, grid.T, grid.h, grid.w, t, p, p, 2)  # (B, T', h', w', t, py, px, C)
    x = x.permute(0, 1, 4, 7, 2, 5, 3, 6)  # (B, T', t, C, h', py, w', px)
    return x.reshape(B, grid.T * t, 2, grid.h * p, grid.w * p)  # (B, T, 2, h, w)


def _tubelet_sums(x: Tensor, grid: TokenGrid, t: int, p: int) -> Tensor:
    """Sum ``x`` (B, T, C, h, w) over each tubelet: (B, T', h', w', C)."""
    B, _, C, _, _ = x.shape
    x = x.reshape(B, grid.T, t, C, grid.h, p, grid.w, p)  # (B, T', t, C, h', py, w', px)
    return x.sum(dim=(2, 5, 7)).permute(0, 1, 3, 4, 2)  # (B, T', h', w', C)


def token_motion(mv: Tensor, valid: Tensor, t: int = 2, p: int = 1) -> Tensor:
    """Mean motion per token over its valid cells: (B, T', h', w', 2), 0 where none is valid.

    ``mv``: (B, T, 2, h, w), px per frame; ``valid``: bool (B, T, h, w). Units are kept (px per
    frame), which is what ``mvmae.train.masking`` expects.
    """
    B, T, _, h, w = mv.shape
    if tuple(valid.shape) != (B, T, h, w):
        raise ValueError(f"valid must be {(B, T, h, w)}, got {tuple(valid.shape)}")
    grid = TokenGrid.of_clip(T, h, w, t, p)
    weight = valid[:, :, None].to(mv.dtype)  # (B, T, 1, h, w)
    sums = _tubelet_sums(mv * weight, grid, t, p)  # (B, T', h', w', 2)
    counts = _tubelet_sums(weight, grid, t, p)  # (B, T', h', w', 1)
    return torch.where(counts > 0, sums / counts.clamp(min=1.0), torch.zeros_like(sums))


def token_valid(valid: Tensor, t: int = 2, p: int = 1) -> Tensor:
    """Whether each token has at least one valid cell: bool (B, T', h', w') from ``valid`` (B, T, h, w)."""
    B, T, h, w = valid.shape
    grid = TokenGrid.of_clip(T, h, w, t, p)
    x = valid.reshape(B, grid.T, t, grid.h, p, grid.w, p)  # (B, T', t, h', py, w', px)
    return x.any(dim=6).any(dim=4).any(dim=2)  # (B, T', h', w')
