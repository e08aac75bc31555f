"""MV-field geometry of clip sampling (``clips.py``): a field cropped to a box and resampled by
area, boxes snapped to whole I-frame pixels, and the flips and quarter turns of augmentation, the
vectors turned with the cells. No torch here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mvmae.shards.sources import PixelBox

if TYPE_CHECKING:
    from mvmae.shards.clips import ClipConfig

Box = tuple[float, float, float, float]  # (y0, x0, y1, x1), normalized to the source frame
FULL_BOX: Box = (0.0, 0.0, 1.0, 1.0)


def area_weights(src_edges: np.ndarray, lo: float, hi: float, n_out: int) -> np.ndarray:
    """float32 (n_out, n_src): overlap of output cell i of [lo, hi] (split in n_out) with source
    cell j (between ``src_edges[j]`` and ``src_edges[j+1]``), as a fraction of the output cell."""
    out_edges = lo + (hi - lo) * np.arange(n_out + 1) / n_out
    overlap = (np.minimum(out_edges[1:, None], src_edges[None, 1:])
               - np.maximum(out_edges[:-1, None], src_edges[None, :-1]))  # (n_out, n_src)
    return (np.clip(overlap, 0.0, None) / ((hi - lo) / n_out)).astype(np.float32)


def resample_mv(mv: np.ndarray, valid: np.ndarray, size: tuple[int, int], grid: int, box: Box,
                config: ClipConfig, step: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Crop a field to ``box`` and resample it to mv_size cells; vectors become px per frame of
    the output I-frame. mv (T, 2, hs, ws) in ``step`` source px/frame (float32, or int8
    quantization codes with step ``sample.MV_STEP``: only the cells under the box are converted),
    valid bool (T, hs, ws) -> mv float32 (T, 2, m, m), valid bool (T, m, m), m = mv_size."""
    (h, w), m = size, config.mv_size
    hs, ws = valid.shape[1:]
    y0, x0, y1, x1 = box
    wy = area_weights(np.minimum(np.arange(hs + 1) * grid, h) / h, y0, y1, m)  # (m, hs)
    wx = area_weights(np.minimum(np.arange(ws + 1) * grid, w) / w, x0, x1, m)  # (m, ws)
    rows, cols = np.flatnonzero(wy.any(0)), np.flatnonzero(wx.any(0))  # source cells under the box
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    stack = np.empty((len(valid), 3, r1 - r0, c1 - c0), np.float32)  # (T, 3, R, C): dx, dy, weight
    weight = valid[:, r0:r1, c0:c1]  # (T, R, C)
    stack[:, 2] = weight
    # cells without a vector weigh 0 (whatever their value); int8 or float in, float32 out, one pass
    np.multiply(mv[:, :, r0:r1, c0:c1], weight[:, None], out=stack[:, :2], casting="unsafe")
    sums = wy[:, r0:r1] @ stack @ np.ascontiguousarray(wx[:, c0:c1].T)  # (T, 3, m, m)
    cover = sums[:, 2]  # (T, m, m): fraction of each output cell holding vectors
    out_valid = cover >= config.min_valid_ratio - 1e-6
    scale = np.array([config.iframe_size / ((x1 - x0) * w), config.iframe_size / ((y1 - y0) * h)],
                     np.float32) * np.float32(step)  # (2,): units of mv -> output I-frame px, per axis
    inverse = np.where(out_valid, 1.0 / np.maximum(cover, 1e-12), 0.0).astype(np.float32)  # (T, m, m)
    out = sums[:, :2] * inverse[:, None] * scale[None, :, None, None]  # (T, 2, m, m); invalid: 0
    return out, out_valid


def snap_box(box: Box, image_size: tuple[int, int]) -> tuple[Box, PixelBox]:
    """A box moved to whole pixels of I-frames of (H', W') px (each edge to the nearest, at least
    one pixel wide), normalized and in pixels: the field and the I-frames are then cropped by the
    same box, and the I-frame crop is a plain slice (torchvision's crops are whole pixels too)."""
    h, w = image_size
    y0, x0 = min(round(box[0] * h), h - 1), min(round(box[1] * w), w - 1)
    y1, x1 = min(max(round(box[2] * h), y0 + 1), h), min(max(round(box[3] * w), x0 + 1), w)
    return (y0 / h, x0 / w, y1 / h, x1 / w), (y0, x0, y1, x1)


def flip_field(mv: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror a field left-right, dx negated: mv (T, 2, h, w), valid (T, h, w)."""
    mv = mv[..., ::-1].copy()  # (T, 2, h, w)
    mv[:, 0] *= -1.0
    return mv, valid[..., ::-1].copy()


def rotate_field(mv: np.ndarray, valid: np.ndarray, turns: int) -> tuple[np.ndarray, np.ndarray]:
    """Turn a square field ``turns`` quarter turns counterclockwise on screen (y down): cells
    move with ``np.rot90`` and each turn maps (dx, dy) to (dy, -dx). mv (T, 2, m, m), valid (T, m, m)."""
    turns %= 4
    if turns == 0:
        return mv, valid
    mv = np.rot90(mv, turns, axes=(-2, -1))  # (T, 2, m, m), positions turned
    dx, dy = mv[:, 0], mv[:, 1]
    for _ in range(turns):
        dx, dy = dy, -dx
    return np.ascontiguousarray(np.stack([dx, dy], axis=1)), np.ascontiguousarray(np.rot90(valid, turns, axes=(-2, -1)))
