"""Extract a whole video into :class:`VideoFields` (the in-memory form of the export schema)."""

from __future__ import annotations

import logging
import math
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from mvmae import __version__
from mvmae.extract import errors
from mvmae.extract.config import ExtractConfig
from mvmae.extract.decoder import VideoDecoder

log = logging.getLogger(__name__)

_MAX_INITIAL_FRAMES = 2048  # frames allocated up front (then 1.5x growth)

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


# Anonymous pages mapped in one call where the platform can (Linux): a fault per 4 kB page as the
# frames arrive cost 3 times as much CPU here.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeroed array on anonymous pages of its own, without the transparent-huge-page advice numpy
    gives large arrays. The frame buffer is written once, frame by frame, and gains nothing from
    huge pages; faulting them in (the kernel compacts memory for each 2 MB page when the advice
    asks for it) cost 0.4-0.7 ms per frame of a 720p video here, 15-20% of a raw extraction
    (benchmarks/RESULTS.md, issue 19). The pages are mapped at once (the buffer is sized to the
    frames the container declares)."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    if _POPULATE:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
    else:
        buf = mmap.mmap(-1, nbytes)
    return np.frombuffer(buf, dtype).reshape(shape)


def _grown(a: np.ndarray, rows: int) -> np.ndarray:
    out = _zeros((rows, *a.shape[1:]), a.dtype)
    out[:len(a)] = a
    return out


class _FrameBuffer:
    """Per-frame arrays written into preallocated storage that grows by 1.5x when needed."""

    def __init__(self, capacity: int, cell_shape: tuple[int, int]) -> None:
        capacity = max(capacity, 1)
        self.mv = _zeros((capacity, 2, *cell_shape), np.float32)
        self.valid = _zeros((capacity, *cell_shape), bool)
        self.types = np.zeros(capacity, np.uint8)
        self.n = 0

    def append(self, mv: np.ndarray, valid: np.ndarray, frame_type: str) -> None:
        if self.n == len(self.types):
            rows = len(self.types) + len(self.types) // 2 + 1
            self.mv, self.valid, self.types = (_grown(a, rows) for a in (self.mv, self.valid, self.types))
        self.mv[self.n], self.valid[self.n] = mv, valid
        self.types[self.n] = ord(frame_type)
        self.n += 1


def extract_video(path: str | Path, config: ExtractConfig | None = None) -> VideoFields:
    """Decode ``path`` once and return all its fields; raise a :class:`VideoError` if it cannot."""
    return next(iter_segments(path, config, max_frames=0))


def segment_frames(max_seconds: float, fps: float) -> int:
    """Frames per segment when videos are cut every ``max_seconds`` (0: never cut, returns 0)
    at ``fps`` frames per second (30 when the stream does not say)."""
    if not max_seconds:
        return 0
    return max(1, math.ceil(max_seconds * (fps or 30.0)))


def iter_segments(
    path: str | Path, config: ExtractConfig | None = None, max_frames: int = 0,
    max_seconds: float = 0.0,
) -> Iterator[VideoFields]:
    """Decode ``path`` once, yielding consecutive segments of at most ``max_frames`` frames
    (or ``max_seconds`` of video at the stream's frame rate, whichever is given).

    Both 0 yield the whole video as one segment. Only one segment is held in memory.
    A segment that does not start with an I-frame also carries the latest earlier I-frame (its
    ``iframe_index`` is then negative: display index relative to the segment's first frame), so
    every segment has appearance context. A segment with no I-frame at all, its own or carried
    (a video whose only IDR an edit list hides, a stream cut before a recovery point), stores its
    first decoded frame instead, as its *context frame* at index 0, and says so in
    ``meta["context_frame"]`` (``{"index": 0, "frame_type": "P"|"B"}``, else None).
    Pictures and fields are turned upright by the stream's display rotation
    (``meta["rotation"]``, degrees counterclockwise; ``size`` is then the upright size).
    ``meta`` gives ``segment``, ``segment_start`` (display index of the first frame in the video)
    and, on the last segment, the decoding statistics.
    Raises a :class:`VideoError` if the file cannot be read or no frame decodes.
    """
    config = config or ExtractConfig()
    with VideoDecoder(path, config) as dec:
        if max_seconds and not max_frames:
            max_frames = segment_frames(max_seconds, dec.info.fps)
        # The buffer grows as needed: a damaged header may declare billions of frames.
        declared = min(dec.info.num_frames_declared or 64, _MAX_INITIAL_FRAMES)
        capacity = min(declared, max_frames) if max_frames else declared
        seg = None
        any_valid = False  # over the whole video, for the all-intra warning
        any_iframe = False  # over the whole video, for the no-I-frame warning
        for f in dec:
            if seg is None:  # the first picture fixes the size (the container's can be wrong)
                seg = _Segment(0, 0, capacity, dec.grid_shape, None)
            any_valid = any_valid or bool(f.valid.any())
            any_iframe = any_iframe or f.iframe is not None
            if max_frames and seg.buf.n == max_frames:
                yield seg.fields(path, dec, config, (any_valid, any_iframe), last=False)
                seg = _Segment(seg.number + 1, f.index, capacity, dec.grid_shape, seg.last_iframe)
            seg.add(f)
        if seg is None:
            stats = dec.stats
            raise errors.NoFramesError(path, f"no frame could be decoded ({stats.num_decode_errors} "
                                       f"of {stats.num_packets} packets rejected: truncated or corrupt)")
        yield seg.fields(path, dec, config, (any_valid, any_iframe), last=True)


class _Segment:
    """Frames of one segment being collected, plus the latest I-frame seen before it."""

    def __init__(self, number: int, start: int, capacity: int, cells: tuple[int, int],
                 carried: tuple[int, np.ndarray] | None) -> None:
        self.number, self.start = number, start
        self.buf = _FrameBuffer(capacity, cells)
        self.iframes: list[tuple[int, np.ndarray]] = []
        self.carried = carried  # (display index, image) of the last I-frame before this segment
        self.last_iframe = carried
        self.context: tuple[int, np.ndarray, str] | None = None  # first frame, if no I-frame comes

    def add(self, f) -> None:
        if self.buf.n == 0 and f.iframe is None:
            if self.carried is not None:
                self.iframes.append(self.carried)
            elif f.picture is not None:  # no I-frame yet: keep the first frame, in case none comes
                self.context = (f.index, f.picture(), f.frame_type)
        self.buf.append(f.mv, f.valid, f.frame_type)
        if f.iframe is not None:
            self.iframes.append((f.index, f.iframe))
            self.last_iframe = (f.index, f.iframe)

    def fields(self, path, dec: VideoDecoder, config: ExtractConfig, seen: tuple[bool, bool],
               last: bool) -> VideoFields:
        """The segment as VideoFields; seen: (any valid vector, any I-frame) in the video so far."""
        n, info = self.buf.n, dec.info
        meta = _meta(path, dec, config, n, seen, last)
        meta.update(segment=self.number, segment_start=self.start, context_frame=None)
        frames = self.iframes
        if not frames and self.context is not None:
            index, image, frame_type = self.context
            frames = [(index, image)]
            meta["context_frame"] = {"index": index - self.start, "frame_type": frame_type}
            log.info("%s: segment %d has no I-frame: its first decoded frame (%s) is its context frame",
                     path, self.number, frame_type)
        images = [img for _, img in frames]
        return VideoFields(
            mv=self.buf.mv[:n],
            valid=self.buf.valid[:n],
            frame_types=self.buf.types[:n],
            iframes=np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8),
            iframe_index=np.asarray([i - self.start for i, _ in frames], np.int64),
            grid=config.grid,
            fps=info.fps,
            size=dec.display_size,
            meta=meta,
        )


def _meta(path, dec: VideoDecoder, config: ExtractConfig, num_frames: int, seen: tuple[bool, bool],
          last: bool) -> dict:
    """Provenance of a segment; decoding statistics and warnings once the video is done."""
    info, stats = dec.info, dec.stats
    any_valid, any_iframe = seen
    warnings = []
    if last:
        warnings = list(stats.warnings)
        if not any_valid:
            warnings.append("no motion vectors: every frame is intra-coded, all cells are invalid")
        if not any_iframe:
            warnings.append("no I-frame decodes: each segment's first decoded frame is stored as its "
                            "context frame (meta context_frame)" + (
                                f"; the container's edit list hides {stats.num_hidden} decoded frames"
                                if stats.num_hidden else ""))
        if stats.frames_lost or stats.num_decode_errors:
            warnings.append(f"{stats.frames_lost} of {stats.num_expected} frames lost "
                            f"(truncated or corrupt data; {stats.num_decode_errors} packets rejected)")
        for w in warnings:
            log.warning("%s: %s", path, w)
    return {
        "source": str(path),
        "method": config.method,
        "mv_convention": RAW_CONVENTION if config.raw else MV_CONVENTION,
        "container": info.container,
        "codec": info.codec,
        "profile": info.profile,
        "max_num_ref_frames": info.max_num_ref_frames,
        "rotation": info.rotation,
        "coded_size": list(info.size),
        "frames_hidden": stats.num_hidden if last else 0,
        "num_frames": num_frames,
        "frames_lost": stats.frames_lost if last else 0,
        "decode_errors": stats.num_decode_errors if last else 0,
        "corrupt_frames": stats.num_corrupt_frames if last else 0,
        "iframe_short_side": config.iframe_short_side,
        "skip_loop_filter": config.loop_filter,
        "warnings": warnings,
        "mvmae_version": __version__,
    }
