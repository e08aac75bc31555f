"""Compiled inner loops of extraction: per-frame work over ~10^3 blocks.

The loops are C (``_kernels.c``, built with the package), because the vectorised numpy versions
spend most of their time in per-call overhead and temporary arrays at this size (see
benchmarks/RESULTS.md: about 0.1-0.4 ms per frame in numpy against 10-30 us here), and because a
compiled extension loads in microseconds where a JIT compiler costs every fresh process most of a
second. This module checks dtypes and shapes, allocates the outputs and holds the documentation.
"""

from __future__ import annotations

import numpy as np

try:
    from mvmae.extract import _kernels
except ImportError as exc:  # pragma: no cover - an install without its build step
    raise ImportError(
        "mvmae's compiled extraction kernels (mvmae/extract/_kernels.c) are not built. Install the "
        "package with pip (`pip install -e .` in a checkout builds them; it needs a C compiler and "
        "the Python headers), or build them in place with `python setup.py build_ext --inplace`."
    ) from exc

# Sum of absolute differences over the 16 samples below which a candidate is accepted without
# trying farther ones (mean |diff| <= 1 grey level: the block matches as well as coding noise).
EARLY_EXIT_SAD = _kernels.EARLY_EXIT_SAD

# FFmpeg's AVMotionVector, as PyAV's MotionVectors.to_ndarray() lays it out.
SIDE_DATA_DTYPE = np.dtype({
    "names": ["source", "w", "h", "src_x", "src_y", "dst_x", "dst_y", "flags", "motion_x",
              "motion_y", "motion_scale"],
    "formats": ["<i4", "u1", "u1", "<i2", "<i2", "<i2", "<i2", "<u8", "<i4", "<i4", "<u2"],
    "offsets": [0, 4, 5, 6, 8, 10, 12, 16, 24, 28, 32], "itemsize": 40, "aligned": True})


def _int32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.int32)


def unpack_side_data(mvs):
    """MOTION_VECTORS records -> (x0, y0, bw, bh, motion (2, N) px, direction).

    mvs: PyAV's ``MotionVectors`` side data itself (read in place, as its buffer of
    AVMotionVector records) or its ``to_ndarray()`` structured array. x0, y0: int32 top-left
    corner (``dst - size // 2``); bw, bh: int32 size; motion: float32 ``motion / motion_scale``
    (src - dst, px); direction: int32, +1 for a future source, else -1.
    """
    if isinstance(mvs, np.ndarray):
        if mvs.dtype != SIDE_DATA_DTYPE:
            raise TypeError(f"unpack_side_data: expected PyAV's motion-vector records {SIDE_DATA_DTYPE}, "
                            f"got {mvs.dtype}")
        mvs = np.ascontiguousarray(mvs)
        n = len(mvs)
    else:
        n, rest = divmod(memoryview(mvs).nbytes, SIDE_DATA_DTYPE.itemsize)
        if rest:
            raise TypeError(f"unpack_side_data: a buffer of {SIDE_DATA_DTYPE.itemsize}-byte motion-vector "
                            f"records expected, got {n * SIDE_DATA_DTYPE.itemsize + rest} bytes")
    ints = np.empty((5, n), np.int32)  # x0, y0, bw, bh, direction: one allocation
    motion = np.empty((2, n), np.float32)
    _kernels.unpack_side_data(mvs, ints[0], ints[1], ints[2], ints[3], motion, ints[4])
    return ints[0], ints[1], ints[2], ints[3], motion, ints[4]


def resolve_blocks(cur, refs, distances, x0, y0, bw, bh, motion, direction):
    """Velocity of each block: ``motion / d`` for the candidate reference of lowest SAD.

    cur: uint8 (H, W) luma (rows may be strided, as a decoded frame's plane); refs: tuple of C
    uint8 (H, W) lumas; distances: float32 (C,) signed display distance of each (sorted by |d|,
    so ties go to the nearest). Only candidates on the block's side (sign of d == direction)
    compete, nearest first; one whose SAD (over a 4x4 lattice of the block at 1/8, 3/8, 5/8 and
    7/8 of its edges, displaced by the vector rounded to the nearest pixel and clamped to the
    picture) is at most EARLY_EXIT_SAD is taken without trying farther ones; with one candidate
    no SAD is computed. Returns velocity float32 (2, N) px per frame and resolved bool (N,)
    (False: no candidate on the block's side).
    """
    for luma in (cur, *refs):
        if luma.dtype != np.uint8 or luma.ndim != 2:
            raise TypeError(f"resolve_blocks: lumas must be uint8 (H, W), got {luma.dtype} {luma.shape}")
    n = len(x0)
    velocity = np.zeros((2, n), np.float32)
    resolved = np.zeros(n, np.bool_)
    _kernels.resolve_blocks(cur, tuple(refs), np.ascontiguousarray(distances, np.float32),
                            _int32(x0), _int32(y0), _int32(bw), _int32(bh),
                            np.ascontiguousarray(motion, np.float32), _int32(direction),
                            velocity, resolved)
    return velocity, resolved


def rasterize_blocks(x0, y0, bw, bh, velocity, height, width, grid):
    """Area-weighted mean of block velocities per grid cell.

    velocity: float32 (2, N) px per frame. Blocks are clipped to the visible (height, width).
    Returns mv float32 (2, h, w) (0 where no block) and valid bool (h, w).
    """
    h = (height + grid - 1) // grid
    w = (width + grid - 1) // grid
    sums = np.empty((2, h, w), np.float32)
    valid = np.empty((h, w), np.bool_)
    _kernels.rasterize_blocks(_int32(x0), _int32(y0), _int32(bw), _int32(bh),
                              np.ascontiguousarray(velocity, np.float32), int(height), int(width),
                              int(grid), np.zeros(3 * (h * w + 1), np.float32), sums, valid)
    return sums, valid
