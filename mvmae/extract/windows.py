"""A live stream's frames cut into time windows: each one the fields of a short video
(:class:`VideoFields`, as ``extract_video`` gives them) or the reason it has none.

Windows are ``window_s`` long and start every ``hop_s`` seconds of display time from 0 (the
stream's first keyframe): window k covers ``[k * hop_s, k * hop_s + window_s)``. A window is given
as soon as nothing that comes later can change it: the frames shown up to its end plus the
stream's reorder margin (``LiveStream.reorder_margin_s``: a B-frame's future reference shown after
it may still turn out damaged) have arrived, or a damaged stretch covers the rest of it. Windows
come in order, each once. A window that overlaps a damaged stretch (from its :class:`Damage` to
the :class:`Resync` at the next keyframe) is given with an ``error`` naming the reason; so is one
without a frame. When the stream ends, a last window that would reach past the end is given
``partial`` (its end the stream's), unless an earlier window already covered the end.

A window's I-frames are those shown in it, plus the latest earlier one of the same undamaged
stretch (``iframe_index`` negative, as for the segments of ``iter_segments``); a stretch that
starts without an I-frame (a resync at a recovery point) keeps its first frame as its context
frame.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, Protocol

import numpy as np

from mvmae import __version__
from mvmae.extract.config import ExtractConfig
from mvmae.extract.livestream import Damage, Event, Resync, Skipping, TimedFrame
from mvmae.extract.video import MV_CONVENTION, RAW_CONVENTION, VideoFields

_EPS_S = 1e-6  # timestamps are exact ticks; this absorbs float rounding at window bounds


@dataclass
class Window:
    """One window: ``fields`` (its frames, or None) or ``error`` (why it has none). Times in
    seconds of display time; ``partial``: the stream ended inside it (``end_s`` is the end)."""

    index: int
    start_s: float
    end_s: float
    fields: VideoFields | None = None
    error: str | None = None
    partial: bool = False


@dataclass
class WindowConfig:
    """window_s: seconds per window; hop_s: seconds from one window's start to the next."""

    window_s: float
    hop_s: float

    def __post_init__(self) -> None:
        if not self.window_s > 0 or not self.hop_s > 0:
            raise ValueError(f"window and hop must be > 0 s, got {self.window_s} and {self.hop_s}")


@dataclass
class _Stretch:
    """A damaged stretch: from ``start_s`` to the keyframe at ``end_s`` (inf: none yet)."""

    start_s: float
    reason: str
    end_s: float = math.inf


class StreamFacts(Protocol):
    """What cutting needs of the stream (``LiveStream`` has it): its name, frame rate, seconds per
    frame, reorder margin (it grows as B-frames are seen), upright size (H, W) px and extraction
    options (``ExtractConfig``)."""

    name: str
    fps: float
    frame_s: float

    @property
    def reorder_margin_s(self) -> float: ...

    @property
    def display_size(self) -> tuple[int, int]: ...

    @property
    def config(self) -> ExtractConfig: ...


def cut_windows(events: Iterable[Event], cfg: WindowConfig, stream: StreamFacts) -> Iterator[Window]:
    """The windows of a live stream's ``events`` (``LiveStream.events``), in order, each as soon as
    it is final; see the module docstring."""
    cutter = _Cutter(cfg, stream)
    for event in events:
        cutter.add(event)
        yield from cutter.ready()
    yield from cutter.finish()


class _Cutter:
    """The state of ``cut_windows``: frames not yet behind every window, the stretch's I-frames,
    the damaged stretches, how far the stream is final (``horizon_s``) and known (``end_s``)."""

    def __init__(self, cfg: WindowConfig, stream: StreamFacts) -> None:
        self.cfg, self.stream = cfg, stream
        self.frames: deque[tuple[float, object]] = deque()  # (time_s, FrameField) not yet behind every window
        self.images: list[tuple[int, float, np.ndarray]] = []  # (frame index, time_s, RGB) of this stretch
        self.stretches: list[_Stretch] = []
        self.horizon_s = -math.inf  # every window ending by then is final
        self.end_s = 0.0  # the stream is known up to here (frames and packets dropped)
        self.next = 0  # index of the next window to give

    def add(self, event: Event) -> None:
        frame_s = self.stream.frame_s
        if isinstance(event, TimedFrame):
            t, frame = event.time_s, event.field
            if frame.iframe is not None:
                self.images.append((frame.index, t, frame.iframe))
            elif not self.images and frame.picture is not None:  # a stretch without I-frame: its context frame
                self.images.append((frame.index, t, frame.picture()))
            self.frames.append((t, replace(frame, picture=None)))  # not the decoded picture it holds
            self.end_s = max(self.end_s, t + frame_s)
            # a frame shown up to a reorder margin later can still show this one damaged
            self.horizon_s = max(self.horizon_s, t + frame_s - self.stream.reorder_margin_s)
        elif isinstance(event, Damage):
            self.stretches.append(_Stretch(event.start_s, event.reason))
            while self.frames and self.frames[-1][0] >= event.start_s - _EPS_S:
                self.frames.pop()
            self.images = [im for im in self.images if im[1] < event.start_s - _EPS_S]
            self.horizon_s = max(self.horizon_s, event.start_s)
        elif isinstance(event, Skipping):  # the open stretch reaches at least this far
            self.end_s = max(self.end_s, event.time_s + frame_s)
            self.horizon_s = max(self.horizon_s, event.time_s + frame_s)
        elif isinstance(event, Resync):
            self.stretches[-1].end_s = event.time_s
            self.images = []  # the new stretch starts at a keyframe, its own context
            self.end_s = max(self.end_s, event.time_s)
            self.horizon_s = max(self.horizon_s, event.time_s)

    def bounds(self, k: int) -> tuple[float, float]:
        start = k * self.cfg.hop_s
        return start, start + self.cfg.window_s

    def ready(self) -> Iterator[Window]:
        while self.bounds(self.next)[1] <= self.horizon_s + _EPS_S:
            yield self._window(self.next, *self.bounds(self.next))
            self.next += 1
            self._forget(self.bounds(self.next)[0])

    def finish(self) -> Iterator[Window]:
        """The windows still open when the stream ends: whole ones, then a partial last one."""
        self.horizon_s = self.end_s
        yield from self.ready()
        start, end = self.bounds(self.next)
        covered = self.next > 0 and self.bounds(self.next - 1)[1] >= self.end_s - _EPS_S
        if start < self.end_s - _EPS_S and not covered:
            window = self._window(self.next, start, self.end_s)
            window.partial = True
            yield window

    def _forget(self, start_s: float) -> None:
        """Drop frames before ``start_s`` and I-frames before the latest one there."""
        while self.frames and self.frames[0][0] < start_s - _EPS_S:
            self.frames.popleft()
        earlier = [i for i, im in enumerate(self.images) if im[1] < start_s - _EPS_S]
        if earlier:  # the latest of them may be carried into the window
            del self.images[:earlier[-1]]

    def _window(self, k: int, start: float, end: float) -> Window:
        damaged = [s for s in self.stretches if s.start_s < end - _EPS_S and s.end_s > start + _EPS_S]
        if damaged:
            return Window(k, start, end, error="; ".join(_describe(s) for s in damaged))
        frames = [(t, fr) for t, fr in self.frames if start - _EPS_S <= t < end - _EPS_S]
        if not frames:
            return Window(k, start, end, error="no frame decoded in the window")
        return Window(k, start, end, fields=self._fields(frames, start, end))

    def _fields(self, frames: list, start: float, end: float) -> VideoFields:
        stream, first = self.stream, frames[0][1].index
        shown = [im for im in self.images if im[1] >= start - _EPS_S and im[1] < end - _EPS_S]
        before = [im for im in self.images if im[1] < start - _EPS_S]
        images = before[-1:] + shown if not shown or shown[0][0] != first else shown
        config = stream.config
        meta = {"source": stream.name, "method": config.method, "window": [start, end], "mvmae_version": __version__,
                "mv_convention": RAW_CONVENTION if config.raw else MV_CONVENTION, "num_frames": len(frames),
                "iframe_short_side": config.iframe_short_side}
        return VideoFields(
            mv=np.stack([fr.mv for _, fr in frames]),  # (T, 2, h, w)
            valid=np.stack([fr.valid for _, fr in frames]),  # (T, h, w)
            frame_types=np.frombuffer("".join(fr.frame_type for _, fr in frames).encode("ascii"), np.uint8).copy(),
            iframes=np.stack([im[2] for im in images]) if images else np.zeros((0, 0, 0, 3), np.uint8),
            iframe_index=np.asarray([im[0] - first for im in images], np.int64),
            grid=config.grid, fps=stream.fps, size=stream.display_size, meta=meta)


def _describe(s: _Stretch) -> str:
    then = f"resynchronised at the keyframe at {s.end_s:.3f} s" if s.end_s < math.inf else "no keyframe yet"
    return f"damaged stream from {s.start_s:.3f} s: {s.reason}; {then}"
