"""Blocks of FFmpeg's exported motion vectors, and their rasterisation onto a dense grid.

H.264 partitions exported by FFmpeg are 16x16, 16x8, 8x16 or 8x8 pixels (smaller partitions come
out as 8x8) and their top-left corners lie on multiples of 8. A grid cell's vector is the
area-weighted mean of the block vectors covering it (a B-block predicted from both lists counts
twice, once per list); cells no block covers (intra blocks, I-frames) are invalid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mvmae.extract import kernels

GRIDS = (4, 8, 16)


@dataclass
class Blocks:
    """One frame's exported motion vectors as parallel arrays (N blocks).

    ``x0, y0``: int32 top-left corner (px); ``bw, bh``: int32 size (px); ``motion``: float32
    (2, N), rows (x, y) of ``src - dst`` in px (quarter-pel precise; rows rather than columns
    because 1-D gathers are several times faster); ``direction``: int32, -1 for list 0 (a past
    reference in practice), +1 for list 1 (a future one).
    """

    x0: np.ndarray
    y0: np.ndarray
    bw: np.ndarray
    bh: np.ndarray
    motion: np.ndarray
    direction: np.ndarray

    def __len__(self) -> int:
        return len(self.x0)

    @classmethod
    def from_side_data(cls, mvs) -> "Blocks":
        """Convert PyAV's MOTION_VECTORS side data (or its ``to_ndarray()`` structured array)."""
        return cls(*kernels.unpack_side_data(mvs))


def grid_shape(size: tuple[int, int], grid: int) -> tuple[int, int]:
    """Cells (h, w) of a ``grid``-px grid over a frame of ``size`` = (H, W) px (partial cells count)."""
    return math.ceil(size[0] / grid), math.ceil(size[1] / grid)


def rasterize(
    blocks: Blocks, velocity: np.ndarray, size: tuple[int, int], grid: int
) -> tuple[np.ndarray, np.ndarray]:
    """Average block velocities onto a grid of ``grid``-px cells.

    velocity: float32 (2, N), rows (vx, vy) in px per frame, a column per block. size: frame
    (H, W) px. Returns mv float32 (2, h, w) and valid bool (h, w); invalid cells hold 0.
    """
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid}")
    return kernels.rasterize_blocks(
        blocks.x0, blocks.y0, blocks.bw, blocks.bh,
        np.ascontiguousarray(velocity, np.float32), size[0], size[1], grid,
    )


def rotate_blocks(blocks: Blocks, vectors: np.ndarray, size: tuple[int, int],
                  quarter_turns: int) -> tuple[Blocks, np.ndarray, tuple[int, int]]:
    """Turn blocks and their vectors counterclockwise by ``quarter_turns`` x 90 degrees, as the
    picture is turned for display (``np.rot90(image, quarter_turns)``).

    vectors: float32 (2, N), rows (x, y) in px (velocities or raw motion alike); size: the coded
    (H, W) px. Returns the turned blocks, vectors (2, N) and the displayed (H, W): a point (x, y)
    goes to (y, W - x) for one turn, (W - x, H - y) for two, (H - y, x) for three, so a vector
    (vx, vy) becomes (vy, -vx), (-vx, -vy), (-vy, vx). Blocks reaching past the visible picture
    (coded in whole macroblocks) keep doing so on the turned side: the rasteriser clips them.
    """
    k = quarter_turns % 4
    if k == 0:
        return blocks, vectors, size
    (h, w), b = size, blocks
    vx, vy = vectors[0], vectors[1]
    if k == 1:
        x0, y0, turned, shape = b.y0, w - b.x0 - b.bw, np.stack([vy, -vx]), (w, h)
    elif k == 2:
        x0, y0, turned, shape = w - b.x0 - b.bw, h - b.y0 - b.bh, np.stack([-vx, -vy]), (h, w)
    else:
        x0, y0, turned, shape = h - b.y0 - b.bh, b.x0, np.stack([-vy, vx]), (w, h)
    bw, bh = (b.bh, b.bw) if k % 2 else (b.bw, b.bh)
    moved = Blocks(np.ascontiguousarray(x0, np.int32), np.ascontiguousarray(y0, np.int32),
                   np.ascontiguousarray(bw, np.int32), np.ascontiguousarray(bh, np.int32),
                   b.motion, b.direction)
    return moved, np.ascontiguousarray(turned, np.float32), shape
