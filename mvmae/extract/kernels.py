"""Compiled inner loops of extraction (numba): per-frame work over ~10^3 blocks.

Written as plain loops because the vectorised numpy versions spend most of their time in
per-call overhead and temporary arrays at this size (see benchmarks/RESULTS.md: about 0.1-0.4 ms
per frame in numpy against 10-30 us here). ``cache=True`` compiles once per machine.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def unpack_side_data(mvs):  # pragma: no cover - compiled
    """Structured MOTION_VECTORS array -> (x0, y0, bw, bh, motion (2, N) px, direction)."""
    n = len(mvs)
    x0 = np.empty(n, np.int32)
    y0 = np.empty(n, np.int32)
    bw = np.empty(n, np.int32)
    bh = np.empty(n, np.int32)
    motion = np.empty((2, n), np.float32)
    direction = np.empty(n, np.int32)
    for i in range(n):
        m = mvs[i]
        w, h = np.int32(m.w), np.int32(m.h)
        bw[i], bh[i] = w, h
        x0[i] = np.int32(m.dst_x) - w // 2
        y0[i] = np.int32(m.dst_y) - h // 2
        scale = np.float32(m.motion_scale) if m.motion_scale != 0 else np.float32(1.0)
        motion[0, i] = np.float32(m.motion_x) / scale
        motion[1, i] = np.float32(m.motion_y) / scale
        direction[i] = 1 if m.source > 0 else -1
    return x0, y0, bw, bh, motion, direction


# Sum of absolute differences over the 16 samples below which a candidate is accepted without
# trying farther ones (mean |diff| <= 1 grey level: the block matches as well as coding noise).
EARLY_EXIT_SAD = 16


@njit(cache=True, nogil=True)
def _sad(cur, ref, x0, y0, bw, bh, mx, my):  # pragma: no cover - compiled
    """SAD over a 4x4 lattice (1/8, 3/8, 5/8, 7/8 of the block's edges) between the block in
    ``cur`` and ``ref`` displaced by (mx, my) px, rounded to the nearest pixel and clamped."""
    hgt, wid = cur.shape
    total = 0
    for a in range(4):
        py = min(y0 + (bh * (2 * a + 1)) // 8, hgt - 1)
        ry = min(max(int(np.floor(py + my + 0.5)), 0), hgt - 1)
        for b in range(4):
            px = min(x0 + (bw * (2 * b + 1)) // 8, wid - 1)
            rx = min(max(int(np.floor(px + mx + 0.5)), 0), wid - 1)
            total += abs(np.int32(cur[py, px]) - np.int32(ref[ry, rx]))
    return total


@njit(cache=True, nogil=True)
def resolve_blocks(cur, refs, distances, x0, y0, bw, bh, motion, direction):  # pragma: no cover
    """Velocity of each block: ``motion / d`` for the candidate reference of lowest SAD.

    cur: uint8 (H, W) luma; refs: tuple of C uint8 (H, W) lumas; distances: float32 (C,) signed
    display distance of each (sorted by |d|, so ties go to the nearest). Only candidates on the
    block's side (sign of d == direction) compete, nearest first; one whose SAD is at most
    EARLY_EXIT_SAD is taken without trying farther ones; with one candidate no SAD is computed.
    Returns velocity float32 (2, N) px per frame and resolved bool (N,) (False: no candidate).
    """
    n = len(x0)
    velocity = np.zeros((2, n), np.float32)
    resolved = np.zeros(n, np.bool_)
    num_side = np.zeros(2, np.int32)  # candidates in the past (0) and the future (1)
    for c in range(len(distances)):
        num_side[1 if distances[c] > 0 else 0] += 1
    for i in range(n):
        side = 1 if direction[i] > 0 else 0
        if num_side[side] == 0:
            continue
        resolved[i] = True
        mx, my = motion[0, i], motion[1, i]
        if mx == 0 and my == 0:
            continue
        best_d, best_sad = np.float32(0), -1
        for c in range(len(distances)):
            d = distances[c]
            if (d > 0) != (side == 1):
                continue
            if num_side[side] == 1:
                best_d = d
                break
            sad = _sad(cur, refs[c], x0[i], y0[i], bw[i], bh[i], mx, my)
            if best_sad < 0 or sad < best_sad:
                best_d, best_sad = d, sad
            if best_sad <= EARLY_EXIT_SAD:  # a near reference already matches: stop searching
                break
        velocity[0, i] = mx / best_d
        velocity[1, i] = my / best_d
    return velocity, resolved


@njit(cache=True, nogil=True)
def rasterize_blocks(x0, y0, bw, bh, velocity, height, width, grid):  # pragma: no cover
    """Area-weighted mean of block velocities per grid cell.

    velocity: float32 (2, N) px per frame. Blocks are clipped to the visible (height, width).
    Returns mv float32 (2, h, w) (0 where no block) and valid bool (h, w).
    """
    h = (height + grid - 1) // grid
    w = (width + grid - 1) // grid
    sums = np.zeros((2, h, w), np.float32)
    area = np.zeros((h, w), np.float32)
    for i in range(len(x0)):
        ya, yb = max(y0[i], 0), min(y0[i] + bh[i], height)
        xa, xb = max(x0[i], 0), min(x0[i] + bw[i], width)
        if ya >= yb or xa >= xb:
            continue
        for cy in range(ya // grid, (yb - 1) // grid + 1):
            oh = min(yb, (cy + 1) * grid) - max(ya, cy * grid)
            for cx in range(xa // grid, (xb - 1) // grid + 1):
                a = np.float32(oh * (min(xb, (cx + 1) * grid) - max(xa, cx * grid)))
                area[cy, cx] += a
                sums[0, cy, cx] += a * velocity[0, i]
                sums[1, cy, cx] += a * velocity[1, i]
    valid = area > 0
    for cy in range(h):
        for cx in range(w):
            if valid[cy, cx]:
                sums[0, cy, cx] /= area[cy, cx]
                sums[1, cy, cx] /= area[cy, cx]
    return sums, valid
