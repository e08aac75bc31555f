"""Real H.264 for the synthetic sets: libx264 with a fixed, bit-exact structure."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np


def x264_options(bframes: int, refs: int, gop: int, crf: int) -> dict[str, str]:
    """libx264 options for a fixed structure: exactly ``bframes`` B-frames, an IDR every ``gop``.

    b-adapt=0 keeps the B-frame pattern fixed (adaptive placement drops B-frames on fast motion);
    mbtree=0 and one thread make this libx264 bit-exact from run to run.
    """
    return {
        "bf": str(bframes), "refs": str(refs), "g": str(gop), "keyint_min": str(gop),
        "sc_threshold": "0", "crf": str(crf), "threads": "1",
        "x264-params": "b-adapt=0:mbtree=0:log-level=error",
    }


def encode_h264(path: str | Path, frames: Iterable[np.ndarray], fps: int,
                options: dict[str, str], pix_fmt: str = "yuv420p", codec: str = "libx264",
                container_options: dict[str, str] | None = None,
                container_format: str | None = None) -> Path:
    """Encode RGB uint8 frames (H, W, 3) into ``path`` (container from the suffix, or
    ``container_format`` such as "mp4" for a temporary name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = container_options or {}
    with av.open(str(path), "w", format=container_format, options=opts) as container:
        stream = None
        for t, rgb in enumerate(frames):
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = rgb.shape[:2]
                stream.pix_fmt = pix_fmt
                stream.options = dict(options)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(format=pix_fmt, threads=1)  # no slice threads: picture.upright_rgb
            frame.pts, frame.time_base = t, Fraction(1, fps)
            container.mux(stream.encode(frame))
        if stream is None:
            raise ValueError(f"{path}: no frames to encode")
        container.mux(stream.encode(None))
    return path
