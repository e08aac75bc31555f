"""Extract a whole video into :class:`VideoFields` (the in-memory form of the export schema)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvmae import __version__
from mvmae.extract import errors
from mvmae.extract.decoder import ExtractConfig, VideoDecoder

log = logging.getLogger(__name__)

MV_CONVENTION = (
    "forward motion per display-frame step: content of cell p in frame t was at p - (dx, dy) "
    "in frame t-1; px per frame; invalid cells (intra blocks, I-frames) hold 0 and valid=False"
)
RAW_CONVENTION = (
    "FFmpeg's raw vectors: (src - dst) px to whichever reference the block used (its distance "
    "and direction not resolved); invalid cells hold 0 and valid=False"
)


@dataclass
class VideoFields:
    """One video's motion fields and I-frames (the export schema, see README "Export schema").

    mv: float32 (T, 2, h, w) (dx, dy) px per frame; valid: bool (T, h, w); frame_types: uint8 (T,)
    ASCII I/P/B; iframes: uint8 (K, H', W', 3) RGB; iframe_index: int64 (K,) display indices;
    grid: cell size px; fps: frames per second; size: (H, W) px of the source; meta: provenance.
    """

    mv: np.ndarray
    valid: np.ndarray
    frame_types: np.ndarray
    iframes: np.ndarray
    iframe_index: np.ndarray
    grid: int
    fps: float
    size: tuple[int, int]
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.frame_types)


class _FrameBuffer:
    """Per-frame arrays written into preallocated storage that grows by 1.5x when needed."""

    def __init__(self, capacity: int, cell_shape: tuple[int, int]) -> None:
        capacity = max(capacity, 1)
        self.mv = np.zeros((capacity, 2, *cell_shape), np.float32)
        self.valid = np.zeros((capacity, *cell_shape), bool)
        self.types = np.zeros(capacity, np.uint8)
        self.n = 0

    def append(self, mv: np.ndarray, valid: np.ndarray, frame_type: str) -> None:
        if self.n == len(self.types):
            grow = len(self.types) // 2 + 1
            self.mv = np.concatenate([self.mv, np.zeros((grow, *self.mv.shape[1:]), np.float32)])
            self.valid = np.concatenate([self.valid, np.zeros((grow, *self.valid.shape[1:]), bool)])
            self.types = np.concatenate([self.types, np.zeros(grow, np.uint8)])
        self.mv[self.n], self.valid[self.n] = mv, valid
        self.types[self.n] = ord(frame_type)
        self.n += 1


def extract_video(path: str | Path, config: ExtractConfig | None = None) -> VideoFields:
    """Decode ``path`` once and return its fields; raise a :class:`VideoError` if it cannot."""
    config = config or ExtractConfig()
    with VideoDecoder(path, config) as dec:
        buf = _FrameBuffer(dec.info.num_frames_declared or 64, dec.grid_shape)
        iframes, iframe_index = [], []
        for f in dec:
            buf.append(f.mv, f.valid, f.frame_type)
            if f.iframe is not None:
                iframes.append(f.iframe)
                iframe_index.append(f.index)
        info, stats = dec.info, dec.stats
    if buf.n == 0:
        raise errors.NoFramesError(path, f"no frame could be decoded ({stats.num_decode_errors} "
                                   f"of {stats.num_packets} packets rejected: truncated or corrupt)")
    n = buf.n
    warnings = list(stats.warnings)
    if not buf.valid[:n].any():
        warnings.append("no motion vectors: every frame is intra-coded, all cells are invalid")
    if stats.frames_lost or stats.num_decode_errors:
        warnings.append(f"{stats.frames_lost} of {stats.num_packets} frames lost to decoding errors")
    for w in warnings:
        log.warning("%s: %s", path, w)
    h, w = dec.grid_shape
    meta = {
        "source": str(path),
        "method": config.method,
        "mv_convention": RAW_CONVENTION if config.raw else MV_CONVENTION,
        "container": info.container,
        "codec": info.codec,
        "profile": info.profile,
        "max_num_ref_frames": info.max_num_ref_frames,
        "num_frames": n,
        "frames_lost": stats.frames_lost,
        "decode_errors": stats.num_decode_errors,
        "corrupt_frames": stats.num_corrupt_frames,
        "iframe_short_side": config.iframe_short_side,
        "skip_loop_filter": config.skip_loop_filter,
        "warnings": warnings,
        "mvmae_version": __version__,
    }
    return VideoFields(
        mv=buf.mv[:n],
        valid=buf.valid[:n],
        frame_types=buf.types[:n],
        iframes=np.stack(iframes) if iframes else np.zeros((0, 0, 0, 3), np.uint8),
        iframe_index=np.asarray(iframe_index, np.int64),
        grid=config.grid,
        fps=info.fps,
        size=info.size,
        meta=meta,
    )
