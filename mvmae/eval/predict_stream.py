"""``mvmae predict -``: a trained classifier on a live H.264 stream, window by window.

The stream (``extract.livestream``) is cut into time windows (``extract.windows``); each window's
fields go the way of a whole video in ``mvmae predict`` (``eval.predict``): encoded as in a
shard (MVs quantized, I-frames as JPEG), read back through the reader's clip sampling with the
checkpoint's clip config, token spec and views, and classified. A window of a damaged stretch
gets the reason instead of scores.

The default window is the checkpoint's clip span (frames per clip x stride, over the stream's
frame rate), so one clip covers a window; the default hop is the window (no overlap).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from mvmae.eval.predict import Prediction, PredictConfig, Predictor
from mvmae.extract.livestream import LiveStream
from mvmae.extract.windows import Window, WindowConfig, cut_windows
from mvmae.shards.encoded import SAMPLE_KEY
from mvmae.shards.sample import encode_sample

log = logging.getLogger(__name__)

STREAM_FORMATS = {"auto": None, "mpegts": "mpegts", "h264": "h264"}  # --format -> FFmpeg's demuxer


@dataclass
class StreamConfig:
    """window_s, hop_s: seconds (None: the checkpoint's clip span over the stream's frame rate,
    and the window). format: ``auto`` (probed), ``mpegts`` or ``h264`` (an elementary stream).
    analyze_s: seconds of stream read to learn its parameters before the first packet."""

    window_s: float | None = None
    hop_s: float | None = None
    format: str = "auto"
    analyze_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("window_s", "hop_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 s, got {value}")
        if self.format not in STREAM_FORMATS:
            raise ValueError(f"format must be one of {sorted(STREAM_FORMATS)}, got {self.format!r}")
        if self.analyze_s < 0:
            raise ValueError(f"analyze_s must be >= 0, got {self.analyze_s}")


@dataclass
class WindowPrediction:
    """One window's result: ``prediction`` (scores over its views), or ``window.error``."""

    window: Window
    prediction: Prediction | None = None

    @property
    def error(self) -> str | None:
        return self.window.error if self.prediction is None else self.prediction.error

    def record(self, classes, k: int) -> dict:
        """The window's JSON line: ``{"window", "start", "end", "top", "views"}`` (seconds from the
        stream's first keyframe, ms precision; ``"partial": true`` for a last window cut short by
        the end), or ``"error"`` instead of ``top`` and ``views``."""
        w = self.window
        record = {"window": w.index, "start": round(w.start_s, 3), "end": round(w.end_s, 3)}
        if w.partial:
            record["partial"] = True
        if self.error is not None:
            return {**record, "error": self.error}
        return {**record, "top": self.prediction.top(classes, k), "views": self.prediction.num_views}


class StreamPredictor:
    """A classifier checkpoint (``Predictor``) over one live stream: ``predictions()``."""

    def __init__(self, cfg: PredictConfig, stream_cfg: StreamConfig, source: BinaryIO, name: str = "<stdin>") -> None:
        self.predictor = Predictor(cfg)
        self.live = LiveStream(source, name, self.predictor.extract, STREAM_FORMATS[stream_cfg.format],
                               stream_cfg.analyze_s)
        span = self.predictor.clips[0].span  # display frames one clip covers
        window_s = stream_cfg.window_s or span / self.live.fps
        self.windows = WindowConfig(window_s, stream_cfg.hop_s or window_s)
        log.info(f"{name}: {self.live.fps:g} fps; windows of {self.windows.window_s:.3f} s every "
                 f"{self.windows.hop_s:.3f} s (a clip spans {span} frames)")

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    def close(self) -> None:
        self.live.close()

    def predictions(self) -> Iterator[WindowPrediction]:
        """Each window's prediction as soon as the window is final, in order."""
        name = self.live.name
        for window in cut_windows(self.live.events(), self.windows, self.live):
            if window.error is not None:
                yield WindowPrediction(window)
                continue
            raw = encode_sample(SAMPLE_KEY, window.fields, 0, "", name)
            yield WindowPrediction(window, self.predictor.predict(name, raw))
