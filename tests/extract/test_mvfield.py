"""``mvmae.extract.mvfield``: side-data unpacking, grid shapes and the rasterising kernel.

The kernel is checked against an obviously correct (and slow) reference: paint every block's
velocity onto a pixel canvas, then average the painted pixels of each grid cell.
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from mvmae.extract.mvfield import GRIDS, Blocks, grid_shape, rasterize
from mvmae.extract.picture import motion_vectors

SIZES = [(145, 177), (144, 192), (272, 640), (17, 9), (8, 8)]


@pytest.fixture(scope="module")
def side_data_dtype(bikes_mp4) -> np.dtype:
    """The structured dtype of PyAV's MOTION_VECTORS side data, taken from a real decoded frame."""
    with av.open(str(bikes_mp4)) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        for frame in container.decode(stream):
            sd = motion_vectors(frame)
            if sd is not None:
                return sd.to_ndarray().dtype
    pytest.fail("no MOTION_VECTORS side data in bikes.mp4")


def _random_layout(rng: np.random.Generator, size: tuple[int, int]) -> Blocks:
    """H.264-like partitions: per 16x16 macroblock (covering the frame, so the last row/column may
    reach past it) intra (no block), 16x16, 16x8, 8x16 or 8x8; some blocks duplicated as the second
    vector of a bi-predicted block, with another velocity."""
    parts = {1: [(0, 0, 16, 16)], 2: [(0, 0, 16, 8), (0, 8, 16, 8)],
             3: [(0, 0, 8, 16), (8, 0, 8, 16)], 4: [(x, y, 8, 8) for y in (0, 8) for x in (0, 8)]}
    rows = []
    for my in range(0, size[0], 16):
        for mx in range(0, size[1], 16):
            kind = rng.integers(0, 5)
            for x, y, w, h in parts.get(int(kind), []):
                rows.append((mx + x, my + y, w, h))
                if rng.random() < 0.3:  # bi-predicted: the same block from the other list
                    rows.append((mx + x, my + y, w, h))
    a = np.array(rows, np.int32).reshape(-1, 4)
    motion = rng.uniform(-16, 16, (2, len(a))).astype(np.float32)
    direction = rng.choice(np.array([-1, 1], np.int32), len(a))
    return Blocks(a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy(), a[:, 3].copy(), motion, direction)


def _reference_rasterize(blocks: Blocks, velocity: np.ndarray, size: tuple[int, int], grid: int):
    """Pixel canvas: sum of velocities and number of block vectors per pixel; cell mean over them."""
    height, width = size
    total = np.zeros((2, height, width), np.float64)
    count = np.zeros((height, width), np.float64)
    for i in range(len(blocks)):
        ys = slice(max(blocks.y0[i], 0), blocks.y0[i] + blocks.bh[i])  # numpy clips the far end
        xs = slice(max(blocks.x0[i], 0), blocks.x0[i] + blocks.bw[i])
        total[:, ys, xs] += velocity[:, i, None, None]
        count[ys, xs] += 1
    h, w = -(-height // grid), -(-width // grid)
    pad = ((0, 0), (0, h * grid - height), (0, w * grid - width))
    cell_total = np.pad(total, pad).reshape(2, h, grid, w, grid).sum(axis=(2, 4))  # (2, h, w)
    cell_count = np.pad(count, pad[1:]).reshape(h, grid, w, grid).sum(axis=(1, 3))  # (h, w)
    valid = cell_count > 0
    mv = np.where(valid, cell_total / np.maximum(cell_count, 1), 0.0)
    return mv, valid


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rasterize_matches_pixel_reference(grid: int, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    blocks = _random_layout(rng, size)
    velocity = rng.uniform(-20, 20, (2, len(blocks))).astype(np.float32)
    mv, valid = rasterize(blocks, velocity, size, grid)
    ref_mv, ref_valid = _reference_rasterize(blocks, velocity, size, grid)
    assert mv.dtype == np.float32 and valid.dtype == bool
    assert mv.shape == (2, *grid_shape(size, grid)) and valid.shape == grid_shape(size, grid)
    np.testing.assert_array_equal(valid, ref_valid)
    np.testing.assert_allclose(mv, ref_mv, rtol=0, atol=1e-5)
    assert not mv[:, ~valid].any()


@pytest.mark.parametrize("grid", GRIDS)
def test_rasterize_uniform_velocity_and_edge_cases(grid: int) -> None:
    size = (145, 177)
    blocks = _random_layout(np.random.default_rng(7), size)
    velocity = np.tile(np.array([[2.5], [-1.25]], np.float32), len(blocks))
    mv, valid = rasterize(blocks, velocity, size, grid)
    np.testing.assert_allclose(mv[:, valid], np.array([[2.5], [-1.25]]) * np.ones(valid.sum()), atol=1e-6)
    # a block entirely outside the frame and an empty block list change nothing / give all-invalid
    outside = Blocks(*(np.array([v], np.int32) for v in (176 + 8, 0, 16, 16)),
                     np.ones((2, 1), np.float32), np.array([1], np.int32))
    mv_out, valid_out = rasterize(outside, np.ones((2, 1), np.float32), size, grid)
    assert not valid_out.any() and not mv_out.any()
    empty = Blocks(*(np.zeros(0, np.int32) for _ in range(4)), np.zeros((2, 0), np.float32),
                   np.zeros(0, np.int32))
    mv_empty, valid_empty = rasterize(empty, np.zeros((2, 0), np.float32), size, grid)
    assert mv_empty.shape == (2, *grid_shape(size, grid)) and not valid_empty.any()


def test_rasterize_bipredicted_block_averages_both_vectors() -> None:
    """A B-block predicted from both lists counts twice: its cells hold the mean of the two."""
    geom = [np.array([0, 0], np.int32), np.array([0, 0], np.int32),
            np.array([16, 16], np.int32), np.array([16, 16], np.int32)]
    blocks = Blocks(*geom, np.zeros((2, 2), np.float32), np.array([-1, 1], np.int32))
    velocity = np.array([[1.0, 3.0], [-2.0, 0.0]], np.float32)
    mv, valid = rasterize(blocks, velocity, (16, 16), 8)
    assert valid.all()
    np.testing.assert_allclose(mv, np.array([2.0, -1.0])[:, None, None] * np.ones((2, 2)))


@pytest.mark.parametrize("grid", [0, 1, 2, 5, 12, 32, -8])
def test_rasterize_rejects_invalid_grid(grid: int) -> None:
    blocks = _random_layout(np.random.default_rng(0), (32, 32))
    with pytest.raises(ValueError, match="grid"):
        rasterize(blocks, blocks.motion, (32, 32), grid)


@pytest.mark.parametrize(("size", "grid", "expected"), [
    ((272, 640), 8, (34, 80)),
    ((272, 640), 16, (17, 40)),
    ((145, 177), 4, (37, 45)),
    ((145, 177), 8, (19, 23)),
    ((145, 177), 16, (10, 12)),
    ((144, 192), 16, (9, 12)),
    ((720, 1280), 16, (45, 80)),
    ((1, 1), 16, (1, 1)),
    ((17, 16), 16, (2, 1)),
])
def test_grid_shape_counts_partial_cells(size, grid, expected) -> None:
    assert grid_shape(size, grid) == expected


def test_blocks_from_side_data(side_data_dtype: np.dtype) -> None:
    # (source, w, h, dst_x, dst_y, motion_x, motion_y, motion_scale)
    rows = [
        (-1, 16, 16, 8, 8, -12, 4, 4),  # 16x16 at (0, 0), past, (-3, 1) px
        (1, 16, 8, 24, 4, 6, -2, 4),  # 16x8 at (16, 0), future, (1.5, -0.5) px
        (-1, 8, 16, 36, 24, 1, 3, 4),  # 8x16 at (32, 16), quarter-pel
        (1, 8, 8, 180, 148, -7, 0, 2),  # 8x8 reaching past a 177x145 frame, half-pel scale
        (-2, 8, 8, 4, 4, 0, 0, 8),  # any negative source is the past list
        (3, 16, 16, 8, 24, 16, -16, 1),  # integer-pel scale
    ]
    mvs = np.zeros(len(rows), side_data_dtype)
    for k, (source, w, h, dst_x, dst_y, mx, my, scale) in enumerate(rows):
        mvs[k]["source"], mvs[k]["w"], mvs[k]["h"] = source, w, h
        mvs[k]["dst_x"], mvs[k]["dst_y"] = dst_x, dst_y
        mvs[k]["src_x"], mvs[k]["src_y"] = dst_x + mx // max(scale, 1), dst_y + my // max(scale, 1)
        mvs[k]["motion_x"], mvs[k]["motion_y"], mvs[k]["motion_scale"] = mx, my, scale
    blocks = Blocks.from_side_data(mvs)
    r = np.array(rows)
    assert len(blocks) == len(rows)
    np.testing.assert_array_equal(blocks.bw, r[:, 1])
    np.testing.assert_array_equal(blocks.bh, r[:, 2])
    np.testing.assert_array_equal(blocks.x0, r[:, 3] - r[:, 1] // 2)
    np.testing.assert_array_equal(blocks.y0, r[:, 4] - r[:, 2] // 2)
    np.testing.assert_allclose(blocks.motion, (r[:, 5:7] / r[:, 7:8]).T, atol=0)
    np.testing.assert_array_equal(blocks.direction, np.where(r[:, 0] > 0, 1, -1))
    for name in ("x0", "y0", "bw", "bh", "direction"):
        assert getattr(blocks, name).dtype == np.int32
    assert blocks.motion.dtype == np.float32 and blocks.motion.shape == (2, len(rows))


def test_blocks_from_real_side_data_are_on_the_8px_lattice(bikes_mp4) -> None:
    """Real partitions: 16x16/16x8/8x16/8x8 whose corners lie on multiples of 8 (FACTS.md)."""
    with av.open(str(bikes_mp4)) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        seen = 0
        for frame in container.decode(stream):
            sd = motion_vectors(frame)
            if sd is None:
                continue
            mvs = sd.to_ndarray()
            b = Blocks.from_side_data(mvs)
            assert set(zip(b.bw.tolist(), b.bh.tolist())) <= {(16, 16), (16, 8), (8, 16), (8, 8)}
            assert not (b.x0 % 8).any() and not (b.y0 % 8).any()
            np.testing.assert_allclose(b.motion[0], (mvs["src_x"] - mvs["dst_x"]), atol=1.0)
            in_place = Blocks.from_side_data(sd)  # the side data's own buffer, no array in between
            for name in ("x0", "y0", "bw", "bh", "motion", "direction"):
                np.testing.assert_array_equal(getattr(in_place, name), getattr(b, name))
            seen += 1
            if seen == 12:
                break
    assert seen == 12
