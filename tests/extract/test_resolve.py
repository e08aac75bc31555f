"""``resolve_velocity`` on synthetic lumas whose every reference is a known shift of the current one.

The current picture is random texture; the reference at display distance ``d`` is the texture
rolled by an unrelated shift ``s_d``, so a block whose vector is ``s_d`` matches exactly in that
reference and nowhere else, and its velocity must be ``s_d / d`` px per frame.
"""

from __future__ import annotations

import numpy as np
import pytest

from mvmae.extract.mvfield import Blocks
from mvmae.extract.resolve import Reference, resolve_velocity

SIZE = (96, 128)
CURRENT = 50  # display index of the current picture
# display distance -> (dx, dy) px shift of the content in that reference (src - dst of a match)
SHIFTS = {-1: (-3, 1), -2: (5, 4), -3: (-7, -2), 1: (2, -5), 2: (-4, 6)}


def _texture(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8)


def _reference(cur: np.ndarray, d: int, shift) -> Reference:
    """Content at p in ``cur`` sits at p + shift in this reference (src = dst + motion)."""
    dx, dy = shift
    return Reference(CURRENT + d, np.roll(cur, (dy, dx), axis=(0, 1)))


def _blocks(rows) -> Blocks:
    """rows: (x0, y0, w, h, mx, my, direction)."""
    a = np.array(rows, np.float64).reshape(-1, 7)
    i32 = lambda k: a[:, k].astype(np.int32)  # noqa: E731
    return Blocks(i32(0), i32(1), i32(2), i32(3), a[:, 4:6].T.astype(np.float32).copy(), i32(6))


def _interior_grid(n: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """n distinct 8/16-px blocks on the 8-px lattice, far enough from the border that no shift
    leaves the picture (blocks are matched independently, so they may overlap)."""
    sizes = [(16, 16), (16, 8), (8, 16), (8, 8)]
    spots = [(x, y) for y in range(8, SIZE[0] - 24, 8) for x in range(8, SIZE[1] - 24, 8)]
    picks = rng.choice(len(spots), n, replace=False)
    return [(*spots[k], *sizes[rng.integers(0, 4)]) for k in picks]


def test_picks_the_reference_the_vector_points_into() -> None:
    rng = np.random.default_rng(1)
    cur = _texture()
    refs = [_reference(cur, d, s) for d, s in SHIFTS.items()]
    rng.shuffle(refs)  # the order of the DPB must not matter
    geometry = _interior_grid(24, rng)
    dists = [list(SHIFTS)[k % len(SHIFTS)] for k in range(len(geometry))]
    rows = [(*g, *SHIFTS[d], 1 if d > 0 else -1) for g, d in zip(geometry, dists)]
    velocity, resolved = resolve_velocity(_blocks(rows), cur, CURRENT, refs)
    expected = np.array([[SHIFTS[d][0] / d, SHIFTS[d][1] / d] for d in dists]).T
    assert velocity.dtype == np.float32 and velocity.shape == (2, len(rows))
    assert resolved.dtype == bool and resolved.all()
    np.testing.assert_allclose(velocity, expected, atol=1e-6)


@pytest.mark.parametrize("d", sorted(SHIFTS))
def test_every_distance_is_found(d: int) -> None:
    cur = _texture(d + 10)
    refs = [_reference(cur, k, s) for k, s in SHIFTS.items()]
    rows = [(32, 32, 16, 16, *SHIFTS[d], np.sign(d)), (64, 48, 8, 8, *SHIFTS[d], np.sign(d))]
    velocity, resolved = resolve_velocity(_blocks(rows), cur, CURRENT, refs)
    assert resolved.all()
    np.testing.assert_allclose(velocity, np.array([SHIFTS[d]] * 2).T / d, atol=1e-6)


def test_quarter_pel_vectors_keep_their_precision() -> None:
    """Matching rounds to whole pixels, but the velocity is the exact vector over the distance."""
    cur = _texture(3)
    refs = [_reference(cur, d, s) for d, s in SHIFTS.items()]
    rows = [(32, 32, 16, 16, -7.25, -1.75, -1), (48, 64, 8, 8, -4.25, 6.0, 1)]
    velocity, resolved = resolve_velocity(_blocks(rows), cur, CURRENT, refs)
    assert resolved.all()
    np.testing.assert_allclose(velocity, [[-7.25 / -3, -4.25 / 2], [-1.75 / -3, 6.0 / 2]], atol=1e-6)


def test_zero_motion_blocks_have_zero_velocity() -> None:
    cur = _texture(4)
    refs = [_reference(cur, d, s) for d, s in SHIFTS.items()]
    rows = [(16, 16, 16, 16, 0, 0, -1), (48, 16, 8, 8, 0, 0, 1), (64, 64, 16, 8, *SHIFTS[-2], -1)]
    velocity, resolved = resolve_velocity(_blocks(rows), cur, CURRENT, refs)
    assert resolved.all()
    np.testing.assert_array_equal(velocity[:, :2], 0)
    np.testing.assert_allclose(velocity[:, 2], np.array(SHIFTS[-2]) / -2)


def test_no_candidate_in_the_blocks_direction_is_unresolved() -> None:
    cur = _texture(5)
    past_only = [_reference(cur, d, SHIFTS[d]) for d in (-1, -2, -3)]
    rows = [(16, 16, 16, 16, *SHIFTS[1], 1), (48, 16, 16, 16, *SHIFTS[-2], -1), (32, 48, 8, 8, 0, 0, 1)]
    velocity, resolved = resolve_velocity(_blocks(rows), cur, CURRENT, past_only)
    np.testing.assert_array_equal(resolved, [False, True, False])
    np.testing.assert_array_equal(velocity[:, [0, 2]], 0)
    np.testing.assert_allclose(velocity[:, 1], np.array(SHIFTS[-2]) / -2)
    # no reference at all (or only the current picture itself): nothing resolves
    for refs in ([], [Reference(CURRENT, cur)]):
        velocity, resolved = resolve_velocity(_blocks(rows), cur, CURRENT, refs)
        assert not resolved.any() and not velocity.any() and velocity.shape == (2, 3)


def test_single_candidate_is_taken_without_matching() -> None:
    """With one reference on a side, its distance is used even where the content does not match."""
    cur = _texture(6)
    refs = [_reference(cur, -1, SHIFTS[-1]), Reference(CURRENT + 2, _texture(99))]
    rows = [(16, 16, 16, 16, 6, -8, 1), (48, 48, 8, 8, 10, 0, -1)]
    velocity, resolved = resolve_velocity(_blocks(rows), cur, CURRENT, refs)
    assert resolved.all()
    np.testing.assert_allclose(velocity, [[3, -10], [-4, 0]], atol=1e-6)


@pytest.mark.parametrize("order", [(-1, -2, -3), (-3, -1, -2), (-2, -3, -1)])
def test_ties_go_to_the_nearest_reference(order) -> None:
    """Identical references at several distances match equally well: the nearest one wins."""
    cur = _texture(7)
    shift = (4, -2)
    refs = [_reference(cur, d, shift) for d in order]  # same content at every past distance
    refs += [_reference(cur, d, shift) for d in (2, 1)]
    rows = [(32, 32, 16, 16, *shift, -1), (64, 32, 16, 16, *shift, 1)]
    velocity, resolved = resolve_velocity(_blocks(rows), cur, CURRENT, refs)
    assert resolved.all()
    np.testing.assert_allclose(velocity, [[-4, 4], [2, -2]], atol=1e-6)


def test_resolved_velocity_is_forward_motion() -> None:
    """The MV contract on a pan: content moving +v per frame gives velocity +v from any reference."""
    cur = _texture(8)
    v = np.array([2, -1])
    # content moving +v: at p in the current frame, at p + v*d in the frame d away
    refs = [_reference(cur, d, tuple(v * d)) for d in (-3, -2, -1, 1, 2)]
    rows = [(16 + 16 * k, 32, 16, 16, *(v * d), np.sign(d)) for k, d in enumerate((-3, -2, -1, 1, 2))]
    velocity, resolved = resolve_velocity(_blocks(rows), cur, CURRENT, refs)
    assert resolved.all()
    np.testing.assert_allclose(velocity, np.repeat(v[:, None], 5, axis=1), atol=1e-6)
