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
    def from_side_data(cls, mvs: np.ndarray) -> "Blocks":
        """Convert the structured array of PyAV's MOTION_VECTORS side data."""
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
