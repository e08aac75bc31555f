"""Motion preprocessing shared by pretraining and fine-tuning.

Every function takes an MV clip batch ``mv``: float32 (B, T, 2, h, w), px per frame (channel 0 =
dx, 1 = dy; the content of cell p at frame t was at p - (dx, dy) at t - 1), and ``valid``: bool
(B, T, h, w) (False = no vector: intra block, I-frame). Invalid cells always come out as 0.

``prepare`` chains the steps in the order that keeps each one meaningful:

1. ``compensate_camera`` at full grid resolution (more cells make a better global fit); top-down
   drone footage moves as a whole, so the per-frame global motion is the camera, not the action;
2. ``pool_to_grid`` onto the token grid, averaging valid cells only;
3. ``normalize_motion`` to a fixed scale for the network.

Masking strategies (``mvmae.train.masking``) want camera-compensated motion in px per frame, so
take their input after step 1 or 2, before step 3 (or multiply by ``scale_px`` again).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

CAMERA_METHODS = ("median", "affine", "none")

# Smallest eigenvalue of the normalised normal matrix below which an affine fit is degenerate
# (valid cells on one line, or fewer than 3): such frames fall back to the median.
_MIN_EIGENVALUE = 1e-4


def _check_clip(mv: Tensor, valid: Tensor) -> None:
    if mv.dim() != 5 or mv.shape[2] != 2:
        raise ValueError(f"mv must be (B, T, 2, h, w), got {tuple(mv.shape)}")
    expected = (mv.shape[0], mv.shape[1], mv.shape[3], mv.shape[4])
    if tuple(valid.shape) != expected:
        raise ValueError(f"valid must be {expected} for mv {tuple(mv.shape)}, got {tuple(valid.shape)}")
    if valid.dtype != torch.bool:
        raise TypeError(f"valid must be bool, got {valid.dtype}")


def _masked_median(values: Tensor, valid: Tensor) -> Tensor:
    """Median of ``values`` (F, C, M) over the cells where ``valid`` (F, M); 0 where none is valid.

    For an even count this is the lower of the two middle values, what ``torch.nanmedian`` gives
    (the same element, so the same bits). A sort rather than ``nanmedian``: ONNX has no median
    but exports a sort (TopK), so the exported classifier (``mvmae.export``) compensates the
    camera in its graph. Invalid cells sort last as +inf; the median of n valid cells is then the
    element at (n - 1) // 2.
    """
    masked = values.masked_fill(~valid[:, None, :], float("inf"))  # (F, C, M)
    ordered = masked.sort(dim=-1).values  # (F, C, M)
    count = valid.sum(dim=-1)  # (F,)
    middle = ((count - 1).clamp(min=0) // 2)[:, None, None].expand(-1, values.shape[1], 1)  # (F, C, 1)
    median = ordered.gather(-1, middle)[..., 0]  # (F, C)
    return torch.where(count[:, None] > 0, median, torch.zeros_like(median))


def _cell_coordinates(h: int, w: int, like: Tensor) -> Tensor:
    """Design matrix rows (x, y, 1) per cell, x and y scaled to [-1, 1] for conditioning: (M, 3)."""
    ys = torch.linspace(-1.0, 1.0, h, dtype=like.dtype, device=like.device) if h > 1 else like.new_zeros(1)
    xs = torch.linspace(-1.0, 1.0, w, dtype=like.dtype, device=like.device) if w > 1 else like.new_zeros(1)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    ones = torch.ones_like(grid_x)
    return torch.stack([grid_x, grid_y, ones], dim=-1).reshape(h * w, 3)  # (M, 3)


def _affine_fit(values: Tensor, weight: Tensor, design: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted least squares of ``values`` (F, 2, M) on ``design`` (M, 3), by normal equations.

    Returns the fitted field (F, 2, M) and a bool (F,) that is True where the fit is well posed
    (at least 3 non-collinear cells); ill-posed frames get a zero field, to be replaced by the caller.
    """
    w = weight.to(values.dtype)  # (F, M)
    count = w.sum(dim=-1).clamp(min=1.0)  # (F,)
    gram = torch.einsum("fm,mi,mj->fij", w, design, design) / count[:, None, None]  # (F, 3, 3)
    rhs = torch.einsum("fm,mi,fcm->fic", w, design, values) / count[:, None, None]  # (F, 3, 2)
    # In float64 the eigenvalues of a 3x3 are cheap and exact enough to tell collinear cells apart.
    eigenvalues = torch.linalg.eigvalsh(gram.double())  # (F, 3)
    ok = (weight.sum(dim=-1) >= 3) & (eigenvalues[:, 0] > _MIN_EIGENVALUE)  # (F,)
    eye = torch.eye(3, dtype=values.dtype, device=values.device)
    safe_gram = torch.where(ok[:, None, None], gram, eye)  # (F, 3, 3)
    coef = torch.linalg.solve(safe_gram, rhs)  # (F, 3, 2)
    fitted = torch.einsum("mi,fic->fcm", design, coef)  # (F, 2, M)
    return fitted * ok[:, None, None], ok


def _affine_global(values: Tensor, valid: Tensor, design: Tensor, inlier_px: float) -> Tensor:
    """Global affine motion (F, 2, M): a fit over valid cells, then one refit on its inliers.

    The refit keeps cells whose residual is at most ``max(inlier_px, 3 * median residual)``, so
    that moving objects do not drag the camera estimate; frames where either fit is ill-posed
    fall back to the earlier estimate, and to the per-frame median when the first one is.
    """
    fitted, ok = _affine_fit(values, valid, design)
    median = _masked_median(values, valid)[:, :, None].expand_as(values)  # (F, 2, M)
    first = torch.where(ok[:, None, None], fitted, median)
    residual = (values - first).norm(dim=1)  # (F, M)
    scale = _masked_median(residual[:, None, :], valid)[:, 0]  # (F,)
    inliers = valid & (residual <= torch.clamp(3.0 * scale, min=inlier_px)[:, None])
    refitted, ok_refit = _affine_fit(values, inliers, design)
    return torch.where(ok_refit[:, None, None], refitted, first)


def compensate_camera(
    mv: Tensor, valid: Tensor, method: str = "median", *, inlier_px: float = 1.0
) -> Tensor:
    """Subtract each frame's global (camera) motion; invalid cells come out as 0.

    ``mv``: float32 (B, T, 2, h, w), px per frame; ``valid``: bool (B, T, h, w).
    ``method``:

    - ``'median'``: the per-frame median of dx and of dy over valid cells (what the published
      MV-MAE code does); removes pans, not zooms or rotations.
    - ``'affine'``: per frame, dx and dy as affine functions of the cell's (x, y), fitted by least
      squares over valid cells, then refitted once on the cells within
      ``max(inlier_px, 3 * median residual)`` px/frame of the first fit (moving objects are
      outliers of the camera model). Removes pans, zooms, rotations and shears. Frames with fewer
      than 3 valid cells, or with all valid cells on one line, fall back to the median.
    - ``'none'``: only zero the invalid cells.

    A frame with no valid cell is all zeros whatever the method. Returns (B, T, 2, h, w).
    """
    _check_clip(mv, valid)
    if method not in CAMERA_METHODS:
        raise ValueError(f"camera method must be one of {CAMERA_METHODS}, got {method!r}")
    B, T, _, h, w = mv.shape
    values = mv.reshape(B * T, 2, h * w)  # (F, 2, M)
    cells = valid.reshape(B * T, h * w)  # (F, M)
    if method == "median":
        global_motion = _masked_median(values, cells)[:, :, None]  # (F, 2, 1)
    elif method == "affine":
        design = _cell_coordinates(h, w, values)
        global_motion = _affine_global(values, cells, design, inlier_px)  # (F, 2, M)
    else:
        global_motion = values.new_zeros(1)
    compensated = (values - global_motion) * cells[:, None, :]  # (F, 2, M)
    return compensated.reshape(B, T, 2, h, w)  # (B, T, 2, h, w)


def normalize_motion(mv: Tensor, scale_px: float = 4.0, clip: float | None = None) -> Tensor:
    """Divide ``mv`` (px per frame, any shape) by ``scale_px``, then clip to [-clip, clip].

    The result is in units of ``scale_px`` px per frame: with the default 4.0, a vector of 4
    px/frame becomes 1. The constant (rather than a per-clip statistic) keeps magnitudes
    comparable across clips, so a slow clip does not look as fast as a fast one. The clip is a
    plain ``clamp`` (no tanh), bounding rare huge vectors (bad matches) without bending the
    range below it; ``None`` disables it. Zeros (invalid cells) stay zero.
    """
    if scale_px <= 0:
        raise ValueError(f"scale_px must be > 0, got {scale_px}")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    scaled = mv / scale_px
    return scaled.clamp(-clip, clip) if clip is not None else scaled


def pool_to_grid(mv: Tensor, valid: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Average ``mv`` onto an (h', w') grid over valid cells only.

    ``mv``: (B, T, 2, h, w); ``valid``: bool (B, T, h, w). Sums and counts of valid cells are
    pooled with adaptive average pooling (so any ``size`` works, divisible or not: windows then
    overlap or differ by one cell) and divided. A target cell with no valid source cell is 0 and
    invalid. Returns ``(mv (B, T, 2, h', w'), valid (B, T, h', w'))``.
    """
    _check_clip(mv, valid)
    out_h, out_w = size
    if out_h < 1 or out_w < 1:
        raise ValueError(f"grid size must be positive, got {size}")
    B, T, _, h, w = mv.shape
    weight = valid.reshape(B * T, 1, h, w).to(mv.dtype)  # (F, 1, h, w)
    values = mv.reshape(B * T, 2, h, w) * weight  # (F, 2, h, w)
    # Averages over the same window: their ratio is the ratio of sums, i.e. the mean over valid cells.
    sums = F.adaptive_avg_pool2d(values, (out_h, out_w))  # (F, 2, h', w')
    counts = F.adaptive_avg_pool2d(weight, (out_h, out_w))  # (F, 1, h', w')
    pooled_valid = counts > 0
    pooled = torch.where(pooled_valid, sums / counts.clamp(min=1e-12), torch.zeros_like(sums))
    return (
        pooled.reshape(B, T, 2, out_h, out_w),  # (B, T, 2, h', w')
        pooled_valid.reshape(B, T, out_h, out_w),  # (B, T, h', w')
    )


@dataclass
class MotionPrep:
    """How MV fields are prepared before tokenization (shared by pretraining and fine-tuning).

    camera: global-motion removal, one of ``CAMERA_METHODS`` (see ``compensate_camera``).
    inlier_px: px/frame, the least residual an affine refit keeps as inlier.
    grid: (h', w') token grid to pool onto, or None to keep the MV grid.
    scale_px: px/frame that maps to 1.0 (see ``normalize_motion``).
    clip: bound on normalised values (units of ``scale_px``), or None for no clip.
    """

    camera: str = "median"
    inlier_px: float = 1.0
    grid: tuple[int, int] | None = None
    scale_px: float = 4.0
    clip: float | None = 8.0

    def __post_init__(self) -> None:
        if self.camera not in CAMERA_METHODS:
            raise ValueError(f"camera must be one of {CAMERA_METHODS}, got {self.camera!r}")
        if self.inlier_px <= 0:
            raise ValueError(f"inlier_px must be > 0, got {self.inlier_px}")
        if self.grid is not None:
            self.grid = tuple(self.grid)
            if len(self.grid) != 2 or min(self.grid) < 1:
                raise ValueError(f"grid must be two positive sizes (h', w'), got {self.grid}")
        if self.scale_px <= 0:
            raise ValueError(f"scale_px must be > 0, got {self.scale_px}")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip}")


def prepare(mv: Tensor, valid: Tensor, cfg: MotionPrep) -> tuple[Tensor, Tensor]:
    """Compensate camera motion, pool onto ``cfg.grid``, normalise: the network's MV input.

    ``mv``: float32 (B, T, 2, h, w), px per frame; ``valid``: bool (B, T, h, w). Returns
    ``(mv (B, T, 2, h', w') in units of cfg.scale_px px/frame, valid (B, T, h', w'))``.
    """
    mv = compensate_camera(mv, valid, cfg.camera, inlier_px=cfg.inlier_px)
    if cfg.grid is not None:
        mv, valid = pool_to_grid(mv, valid, cfg.grid)
    return normalize_motion(mv, cfg.scale_px, cfg.clip), valid
