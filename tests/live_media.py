"""Live H.264 streams for the streaming tests and benchmark, REAL bytes (no mocks): a libx264 pan in
MPEG-TS written to memory, the H.264 elementary stream of it, damage that keeps it a stream
(TS packets whose payload is overwritten with noise: headers, sync bytes and continuity counters
intact), and where each picture's bytes lie.

Times are seconds of display time from the first picture (the stream's first IDR), as
``mvmae predict -`` reports them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
except ImportError:  # ... or as the `tests` package
    from tests import media

from mvmae.synth import x264_options

TS_PACKET = 188  # bytes of an MPEG-TS packet
TS_HEADER = 4  # bytes of its header (sync byte, PID, continuity counter)


def make_ts_stream(*, num_frames: int = 200, size: tuple[int, int] = (128, 160), fps: int = 25, gop: int = 25,
                   bframes: int = 2, vx: float = 2.0, vy: float = 1.0, crf: int = 23) -> bytes:
    """An MPEG-TS stream (bytes) of a libx264 pan (content moves (+vx, +vy) px/frame): an IDR
    every ``gop`` frames, ``bframes`` B-frames, 3 references; bit-exact from run to run."""
    frames = media.render_pan(vx=vx, vy=vy, num_frames=num_frames, size=size)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt, stream.options = "yuv420p", x264_options(bframes, 3, gop, crf)
        for t, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def elementary_stream(ts: bytes) -> bytes:
    """The H.264 elementary stream (Annex B) carried by an MPEG-TS stream: its packets' bytes."""
    with av.open(io.BytesIO(ts), format="mpegts") as container:
        return b"".join(bytes(p) for p in container.demux(video=0) if p.size)


@dataclass(frozen=True)
class Picture:
    """One picture of a TS stream: its PES starts at byte ``pos``; ``time_s`` its display time."""

    pos: int
    time_s: float
    is_idr: bool


def ts_pictures(ts: bytes) -> list[Picture]:
    """The stream's pictures in decode order (each one PES packet in x264's TS)."""
    with av.open(io.BytesIO(ts), format="mpegts") as container:
        stream = container.streams.video[0]
        packets = [(p.pos, p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
        tb = float(stream.time_base)
    t0 = packets[0][1]
    return [Picture(pos, (pts - t0) * tb, key) for pos, pts, key in packets]


def damage_ts(ts: bytes, first_byte: int, num_packets: int, seed: int = 0) -> tuple[bytes, range]:
    """``ts`` with the payloads of ``num_packets`` TS packets from the one holding ``first_byte``
    overwritten with seeded noise; (the damaged stream, the byte range damaged)."""
    data = bytearray(ts)
    start = first_byte // TS_PACKET * TS_PACKET
    noise = np.random.default_rng(seed).integers(0, 256, (num_packets, TS_PACKET - TS_HEADER), dtype=np.uint8)
    for i in range(num_packets):
        p = start + i * TS_PACKET
        data[p + TS_HEADER:p + TS_PACKET] = noise[i].tobytes()
    return bytes(data), range(start, start + num_packets * TS_PACKET)


def damaged_pictures(pictures: list[Picture], damaged: range) -> list[Picture]:
    """The pictures whose bytes (from their PES start to the next one's) meet ``damaged``."""
    ends = [p.pos for p in pictures[1:]] + [1 << 62]
    return [p for p, end in zip(pictures, ends) if p.pos < damaged.stop and end > damaged.start]


def damage_elementary(h264: bytes, first_byte: int, num_bytes: int, seed: int = 0) -> bytes:
    """``h264`` with ``num_bytes`` bytes from ``first_byte`` overwritten with seeded noise."""
    data = bytearray(h264)
    data[first_byte:first_byte + num_bytes] = np.random.default_rng(seed).integers(
        0, 256, num_bytes, dtype=np.uint8).tobytes()
    return bytes(data)
