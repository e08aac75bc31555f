"""The compiled extraction kernels: the block-matching rule against a plain-Python reading of its
documentation, and clear errors for arrays they cannot take."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mvmae.extract import kernels


def _reference_resolve(cur, refs, distances, x0, y0, bw, bh, motion, direction):
    """kernels.resolve_blocks as its docstring states it, one block at a time."""
    hgt, wid = cur.shape

    def sad(ref, i, mx, my):
        total = 0
        for a in range(4):
            py = min(y0[i] + bh[i] * (2 * a + 1) // 8, hgt - 1)
            ry = min(max(math.floor(py + my + 0.5), 0), hgt - 1)
            for b in range(4):
                px = min(x0[i] + bw[i] * (2 * b + 1) // 8, wid - 1)
                rx = min(max(math.floor(px + mx + 0.5), 0), wid - 1)
                total += abs(int(cur[py, px]) - int(ref[ry, rx]))
        return total

    n = len(x0)
    velocity, resolved = np.zeros((2, n), np.float32), np.zeros(n, bool)
    for i in range(n):
        side = [c for c, d in enumerate(distances) if (d > 0) == (direction[i] > 0)]
        if not side:
            continue
        resolved[i] = True
        mx, my = float(motion[0, i]), float(motion[1, i])
        if mx == 0 and my == 0:
            continue
        best = side[0]
        if len(side) > 1:
            best_sad = None
            for c in side:
                s = sad(refs[c], i, mx, my)
                if best_sad is None or s < best_sad:
                    best, best_sad = c, s
                if best_sad <= kernels.EARLY_EXIT_SAD:
                    break
        velocity[:, i] = motion[:, i] / np.float32(distances[best])
    return velocity, resolved


@pytest.mark.parametrize("seed", range(4))
def test_resolve_blocks_follows_its_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hgt, wid, n = 48, 64, 40
    plane = rng.integers(0, 256, (hgt, wid + 5), dtype=np.uint8)
    cur = plane[:, 2:2 + wid]  # rows strided, as a decoded frame's luma view
    shifted = np.roll(cur, (1, -2), axis=(0, 1))  # one candidate matches a (2, -1) px move exactly
    refs = (rng.integers(0, 256, (hgt, wid), dtype=np.uint8), np.ascontiguousarray(shifted),
            rng.integers(0, 256, (hgt, wid), dtype=np.uint8))
    distances = np.array([-1, -2, 3], np.float32)
    x0 = rng.integers(-4, wid, n).astype(np.int32)
    y0 = rng.integers(-4, hgt, n).astype(np.int32)
    bw = rng.choice([8, 16], n).astype(np.int32)
    bh = rng.choice([8, 16], n).astype(np.int32)
    motion = rng.choice([-2.0, -0.25, 0.0, 0.75, 2.0], (2, n)).astype(np.float32)
    direction = rng.choice([-1, 1], n).astype(np.int32)
    args = (cur, refs, distances, x0, y0, bw, bh, motion, direction)
    velocity, resolved = kernels.resolve_blocks(*args)
    want_velocity, want_resolved = _reference_resolve(*args)
    np.testing.assert_array_equal(resolved, want_resolved)
    np.testing.assert_array_equal(velocity, want_velocity)
    assert resolved.all()  # both sides have a candidate


def test_blocks_with_no_candidate_on_their_side_are_unresolved() -> None:
    luma = np.zeros((16, 16), np.uint8)
    one = np.array([0], np.int32)
    velocity, resolved = kernels.resolve_blocks(
        luma, (luma,), np.array([-1], np.float32), one, one, one + 8, one + 8,
        np.array([[4.0], [0.0]], np.float32), np.array([1], np.int32))
    assert not resolved[0] and (velocity == 0).all()


def test_kernels_reject_what_they_cannot_read() -> None:
    with pytest.raises(TypeError, match="motion-vector records"):
        kernels.unpack_side_data(np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="40-byte motion-vector records expected, got 41 bytes"):
        kernels.unpack_side_data(bytes(41))
    luma = np.zeros((16, 16), np.uint8)
    one = np.array([0], np.int32)
    with pytest.raises(TypeError, match="uint8"):
        kernels.resolve_blocks(luma.astype(np.float32), (luma,), np.array([-1], np.float32), one, one,
                               one + 8, one + 8, np.zeros((2, 1), np.float32), one)
    with pytest.raises(ValueError, match="size differs"):
        kernels.resolve_blocks(luma, (luma[:8],), np.array([-1], np.float32), one, one, one + 8, one + 8,
                               np.zeros((2, 1), np.float32), one)
    with pytest.raises(ValueError, match="sizes do not match"):
        kernels.resolve_blocks(luma, (luma,), np.array([-1, 1], np.float32), one, one, one + 8, one + 8,
                               np.zeros((2, 1), np.float32), one)
    with pytest.raises(ValueError, match="sizes do not match"):
        kernels.rasterize_blocks(one, one, one + 8, np.array([8, 8], np.int32), np.zeros((2, 1), np.float32),
                                 16, 16, 8)
