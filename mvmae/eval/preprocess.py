"""Camera compensation in numpy: the preprocessing an exported classifier trained with ``camera:
affine`` needs before its graph (``mvmae export`` writes this file beside it as
``<name>.preprocess.py``). It imports numpy only, so it runs wherever the exported model runs.

An affine fit's 3x3 eigenvalue test and solve have no ONNX form, so such a graph takes
``mv_compensated = compensate_camera(mv, valid, "affine")`` instead of ``mv``: the same
computation as ``mvmae.train.motion.compensate_camera`` (float32, the eigenvalues in float64),
equal to it within float rounding. A cell whose residual lies within rounding of the refit's
inlier threshold may be kept by one and dropped by the other, which moves that frame's camera
estimate slightly; the parity tests bound the effect on the logits.

    mv:    float32 (B, T, 2, h, w), (dx, dy) px per frame, as the reader cuts a clip
    valid: bool (B, T, h, w), False where a cell has no vector
    ->     float32 (B, T, 2, h, w), each frame's global motion removed, 0 where not valid
"""

from __future__ import annotations

import numpy as np

METHODS = ("median", "affine", "none")
MIN_EIGENVALUE = 1e-4  # as mvmae.train.motion: below it an affine fit is degenerate


def masked_median(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The lower middle value of ``values`` (F, C, M) over the cells where ``valid`` (F, M):
    (F, C), 0 where no cell is valid."""
    ordered = np.sort(np.where(valid[:, None, :], values, np.inf), axis=-1)  # (F, C, M)
    count = valid.sum(axis=-1)  # (F,)
    middle = np.maximum(count - 1, 0) // 2  # (F,)
    median = np.take_along_axis(ordered, middle[:, None, None].repeat(values.shape[1], 1), -1)[..., 0]
    return np.where(count[:, None] > 0, median, 0).astype(values.dtype)


def cell_coordinates(h: int, w: int) -> np.ndarray:
    """Rows (x, y, 1) per cell, x and y in [-1, 1]: float32 (h * w, 3)."""
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32) if h > 1 else np.zeros(1, np.float32)
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32) if w > 1 else np.zeros(1, np.float32)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    return np.stack([grid_x, grid_y, np.ones_like(grid_x)], -1).reshape(h * w, 3)


def affine_fit(values: np.ndarray, weight: np.ndarray, design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of ``values`` (F, 2, M) on ``design`` (M, 3) over the cells ``weight``
    (F, M): the fitted field (F, 2, M), 0 where ill-posed, and whether each frame is well posed (F,)."""
    w = weight.astype(np.float32)  # (F, M)
    count = np.maximum(w.sum(-1), 1.0)  # (F,)
    gram = np.einsum("fm,mi,mj->fij", w, design, design) / count[:, None, None]  # (F, 3, 3)
    rhs = np.einsum("fm,mi,fcm->fic", w, design, values) / count[:, None, None]  # (F, 3, 2)
    eigenvalues = np.linalg.eigvalsh(gram.astype(np.float64))  # (F, 3), ascending
    ok = (weight.sum(-1) >= 3) & (eigenvalues[:, 0] > MIN_EIGENVALUE)  # (F,)
    safe = np.where(ok[:, None, None], gram, np.eye(3, dtype=np.float32))  # (F, 3, 3)
    coef = np.linalg.solve(safe, rhs).astype(np.float32)  # (F, 3, 2)
    fitted = np.einsum("mi,fic->fcm", design, coef)  # (F, 2, M)
    return fitted * ok[:, None, None], ok


def affine_global(values: np.ndarray, valid: np.ndarray, inlier_px: float, h: int, w: int) -> np.ndarray:
    """Per frame, an affine fit over the valid cells, refitted once on the cells within
    ``max(inlier_px, 3 * median residual)`` px/frame of it; the median where a fit is ill-posed."""
    design = cell_coordinates(h, w)
    fitted, ok = affine_fit(values, valid, design)
    median = np.broadcast_to(masked_median(values, valid)[:, :, None], values.shape)  # (F, 2, M)
    first = np.where(ok[:, None, None], fitted, median)
    residual = np.linalg.norm(values - first, axis=1)  # (F, M)
    scale = masked_median(residual[:, None, :], valid)[:, 0]  # (F,)
    inliers = valid & (residual <= np.maximum(3.0 * scale, inlier_px)[:, None])
    refitted, ok_refit = affine_fit(values, inliers, design)
    return np.where(ok_refit[:, None, None], refitted, first)


def compensate_camera(mv: np.ndarray, valid: np.ndarray, method: str = "affine", inlier_px: float = 1.0) -> np.ndarray:
    """Remove each frame's global motion (module doc); ``method`` median, affine or none."""
    if method not in METHODS:
        raise ValueError(f"camera method must be one of {METHODS}, got {method!r}")
    B, T, _, h, w = mv.shape
    values = np.asarray(mv, np.float32).reshape(B * T, 2, h * w)  # (F, 2, M)
    cells = np.asarray(valid, bool).reshape(B * T, h * w)  # (F, M)
    if method == "median":
        global_motion = masked_median(values, cells)[:, :, None]  # (F, 2, 1)
    elif method == "affine":
        global_motion = affine_global(values, cells, inlier_px, h, w)  # (F, 2, M)
    else:
        global_motion = np.zeros(1, np.float32)
    compensated = (values - global_motion) * cells[:, None, :]  # (F, 2, M)
    return compensated.astype(np.float32).reshape(B, T, 2, h, w)
