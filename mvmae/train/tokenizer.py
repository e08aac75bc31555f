"""From a batch of MV clips to motion tokens: the one definition shared by the codebook, masked
pretraining and fine-tuning (the codebook stores its ``TokenSpec``, so the others cannot drift).

Steps: camera-motion compensation (``motion.compensate_camera``), normalisation to a fixed scale
(``motion.normalize_motion``), then tubelets of ``tubelet_frames`` frames x ``tubelet_cells`` x
``tubelet_cells`` cells (``tokens.tubelets``: vector layout (t, py, px, c), c = (dx, dy)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from mvmae.shards.clips import ClipConfig
from mvmae.train.motion import compensate_camera, normalize_motion
from mvmae.train.tokens import TokenGrid, token_motion, tubelets


@dataclass
class TokenSpec:
    """num_frames (T), stride, mv_size (h = w cells) and iframe_size (px) of the clips the reader
    cuts; tubelet_frames x tubelet_cells^2 cells per token; camera: 'median' | 'affine' | 'none';
    scale_px: px/frame that map to 1.0; clip: normalised values are clipped to +-clip."""

    num_frames: int = 16
    stride: int = 1
    mv_size: int = 14
    iframe_size: int = 224
    tubelet_frames: int = 2
    tubelet_cells: int = 1
    camera: str = "median"
    scale_px: float = 4.0
    clip: float = 8.0

    def __post_init__(self) -> None:
        if self.num_frames % self.tubelet_frames or self.mv_size % self.tubelet_cells:
            raise ValueError(f"num_frames ({self.num_frames}) and mv_size ({self.mv_size}) must be "
                             f"multiples of the tubelet ({self.tubelet_frames} x {self.tubelet_cells})")
        if self.camera not in ("median", "affine", "none"):
            raise ValueError(f"camera must be median, affine or none, got {self.camera!r}")
        if self.scale_px <= 0:
            raise ValueError(f"scale_px must be > 0, got {self.scale_px}")

    @property
    def grid(self) -> TokenGrid:
        p = self.tubelet_cells
        return TokenGrid(self.num_frames // self.tubelet_frames, self.mv_size // p, self.mv_size // p)

    @property
    def token_dim(self) -> int:
        return self.tubelet_frames * self.tubelet_cells ** 2 * 2

    @property
    def px_per_token(self) -> float:
        """Output I-frame px spanned by one token's cells (for motion-guided masking)."""
        return self.iframe_size / self.mv_size * self.tubelet_cells

    def clip_config(self, mode: str, **options) -> ClipConfig:
        """The reader's clip settings for these tokens (``mode``: train, center or multi)."""
        return ClipConfig(num_frames=self.num_frames, stride=self.stride, mode=mode,
                          mv_size=self.mv_size, iframe_size=self.iframe_size, **options)

    def to_dict(self) -> dict:
        return asdict(self)


def tokenize(mv: torch.Tensor, valid: torch.Tensor, spec: TokenSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """mv float32 (B, T, 2, h, w) px per frame, valid bool (B, T, h, w) ->
    tokens float32 (B, N, D) normalised, and token motion (B, T', h', w', 2) in px per frame
    after camera compensation (what the masking strategies read)."""
    compensated = compensate_camera(mv, valid, spec.camera)  # (B, T, 2, h, w)
    motion = token_motion(compensated, valid, spec.tubelet_frames, spec.tubelet_cells)
    normalised = normalize_motion(compensated, spec.scale_px, spec.clip)
    return tubelets(normalised, spec.tubelet_frames, spec.tubelet_cells), motion  # (B, N, D)
