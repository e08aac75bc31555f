"""Tubelet tokenization: round trip, token layout, per-token motion and validity."""

from __future__ import annotations

import pytest
import torch

from mvmae.train.tokens import TokenGrid, token_motion, token_valid, tubelets, untubelet


@pytest.mark.parametrize("t,p", [(1, 1), (2, 1), (2, 2), (4, 3)])
def test_round_trip_and_shapes(t, p):
    B, T, h, w = 2, 8, 6, 12
    mv = torch.randn(B, T, 2, h, w, generator=torch.Generator().manual_seed(0))
    tokens = tubelets(mv, t=t, p=p)
    grid = TokenGrid.of_clip(T, h, w, t, p)
    assert tokens.shape == (B, grid.num_tokens, t * p * p * 2)
    assert grid.num_tokens == (T // t) * (h // p) * (w // p)
    assert torch.equal(untubelet(tokens, grid, t=t, p=p), mv)


def test_layout_of_one_token():
    B, T, h, w, t, p = 1, 4, 4, 6, 2, 2
    mv = torch.arange(B * T * 2 * h * w, dtype=torch.float32).reshape(B, T, 2, h, w)
    tokens = tubelets(mv, t=t, p=p)
    grid = TokenGrid.of_clip(T, h, w, t, p)
    ti, yi, xi = 1, 1, 2
    n = (ti * grid.h + yi) * grid.w + xi
    expected = [
        mv[0, ti * t + dt, c, yi * p + dy, xi * p + dx]
        for dt in range(t)
        for dy in range(p)
        for dx in range(p)
        for c in range(2)
    ]
    assert tokens[0, n].tolist() == torch.stack(expected).tolist()


def test_default_token_is_two_vectors():
    mv = torch.zeros(1, 2, 2, 1, 1)
    mv[0, 0, :, 0, 0] = torch.tensor([1.0, 2.0])
    mv[0, 1, :, 0, 0] = torch.tensor([3.0, 4.0])
    assert tubelets(mv).tolist() == [[[1.0, 2.0, 3.0, 4.0]]]


def test_non_divisible_sizes_raise():
    with pytest.raises(ValueError, match="tubelets"):
        tubelets(torch.zeros(1, 5, 2, 4, 4), t=2)
    with pytest.raises(ValueError, match="tubelets"):
        tubelets(torch.zeros(1, 4, 2, 5, 4), t=2, p=2)
    with pytest.raises(ValueError, match="tubelets"):
        token_valid(torch.zeros(1, 4, 4, 6, dtype=torch.bool), t=2, p=4)
    with pytest.raises(ValueError):
        tubelets(torch.zeros(1, 4, 3, 4, 4))
    with pytest.raises(ValueError):
        untubelet(torch.zeros(1, 10, 4), TokenGrid(2, 2, 2))


def test_token_grid():
    grid = TokenGrid.of_clip(16, 14, 14, t=2, p=1)
    assert grid.shape == (8, 14, 14)
    assert grid.num_tokens == 1568 and grid.num_cells == 196
    with pytest.raises(ValueError):
        TokenGrid(0, 1, 1)


def test_token_motion_means_valid_cells_only():
    B, T, h, w = 1, 4, 2, 2
    mv = torch.zeros(B, T, 2, h, w)
    valid = torch.zeros(B, T, h, w, dtype=torch.bool)
    mv[0, 0, 0] = 10.0  # token (0, 0, 0): frame 0 invalid everywhere (I-frame), garbage ignored
    mv[0, 1, 0], mv[0, 1, 1] = 2.0, -1.0
    valid[0, 1] = True
    mv[0, 2:, 0, 0, 0] = torch.tensor([1.0, 3.0])  # token (1, 0, 0): both frames valid
    valid[0, 2:, 0, 0] = True
    motion = token_motion(mv, valid, t=2, p=2)
    assert motion.shape == (B, 2, 1, 1, 2)
    assert motion[0, 0, 0, 0].tolist() == [2.0, -1.0]
    assert motion[0, 1, 0, 0].tolist() == [2.0, 0.0]
    assert token_valid(valid, t=2, p=2)[0, :, 0, 0].tolist() == [True, True]


def test_token_without_valid_cell_is_zero_and_invalid():
    mv = torch.full((1, 2, 2, 2, 2), 7.0)
    valid = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    valid[0, :, 0, 0] = True
    motion = token_motion(mv, valid, t=2, p=1)
    assert motion.shape == (1, 1, 2, 2, 2)
    assert motion[0, 0, 0, 0].tolist() == [7.0, 7.0]
    assert (motion[0, 0].flatten(0, 1)[1:] == 0).all()
    assert token_valid(valid, t=2, p=1)[0, 0].tolist() == [[True, False], [False, False]]


def test_token_motion_order_matches_tubelets():
    mv = torch.randn(2, 4, 2, 3, 4, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(2, 4, 3, 4, dtype=torch.bool)
    tokens = tubelets(mv, t=2, p=1)  # (B, N, 4): two (dx, dy) vectors per token
    mean = tokens.reshape(2, -1, 2, 2).mean(dim=2)  # (B, N, 2)
    assert torch.allclose(token_motion(mv, valid).reshape(2, -1, 2), mean, atol=1e-6)
