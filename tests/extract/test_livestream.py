"""A live stream read as it arrives (``extract.livestream``) and cut into windows
(``extract.windows``): the same fields as ``extract_video`` on the same bytes; damage found,
reported from where it may reach and decoding resumed at the next IDR with fields identical to an
undamaged stream's; windows in order, damaged ones with the reason. Real libx264 streams
(``tests/live_media.py``), no mocks."""

from __future__ import annotations

import io

import numpy as np
import pytest

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import live_media
except ImportError:  # ... or as the `tests` package
    from tests import live_media

from mvmae.extract.config import ExtractConfig
from mvmae.extract.decoder import FrameField
from mvmae.extract.livestream import Damage, LiveStream, Resync, Skipping, TimedFrame
from mvmae.extract.video import extract_video
from mvmae.extract.windows import WindowConfig, cut_windows

FPS, NUM_FRAMES, GOP = 25, 200, 25  # 8 s, an IDR every second, 2 B-frames


@pytest.fixture(scope="module")
def ts() -> bytes:
    return live_media.make_ts_stream(num_frames=NUM_FRAMES, fps=FPS, gop=GOP)


def read(data: bytes, format: str | None = None) -> tuple[list, LiveStream]:
    live = LiveStream(io.BytesIO(data), "<test>", ExtractConfig(), format=format)
    try:
        return list(live.events()), live
    finally:
        live.close()


def frames_of(events: list) -> list[TimedFrame]:
    return [e for e in events if isinstance(e, TimedFrame)]


def test_a_clean_stream_gives_the_fields_of_extract_video(ts, tmp_path):
    events, live = read(ts, "mpegts")
    frames = frames_of(events)
    assert len(frames) == len(events) == NUM_FRAMES and live.num_damaged == 0
    assert [f.time_s for f in frames] == pytest.approx([i / FPS for i in range(NUM_FRAMES)], abs=1e-9)
    (tmp_path / "s.ts").write_bytes(ts)
    whole = extract_video(tmp_path / "s.ts")
    np.testing.assert_array_equal(np.stack([f.field.mv for f in frames]), whole.mv)
    np.testing.assert_array_equal(np.stack([f.field.valid for f in frames]), whole.valid)
    assert "".join(f.field.frame_type for f in frames) == bytes(whole.frame_types).decode()
    assert live.max_b_run == 2 and live.reorder_margin_s == pytest.approx(3 / FPS)


@pytest.mark.parametrize("where, num_packets, seed", [(0.5, 6, 0), (0.3, 3, 1), (0.7, 12, 2)])
def test_damage_is_reported_and_decoding_resumes_at_the_next_idr(ts, where, num_packets, seed):
    pictures = live_media.ts_pictures(ts)
    bad, damaged_bytes = live_media.damage_ts(ts, int(len(ts) * where), num_packets, seed)
    hit = live_media.damaged_pictures(pictures, damaged_bytes)
    assert hit, "the noise must land on pictures"
    after = pictures[pictures.index(hit[-1]) + 1:]
    resync_s = next(p.time_s for p in after if p.is_idr)  # the first IDR after the damage
    clean = {round(f.time_s, 6): f.field for f in frames_of(read(ts, "mpegts")[0])}

    events, live = read(bad, "mpegts")
    damage = [e for e in events if isinstance(e, Damage)]
    resync = [e for e in events if isinstance(e, Resync)]
    assert len(damage) == len(resync) == live.num_damaged == 1, events
    assert damage[0].start_s <= min(p.time_s for p in hit) + 1e-9
    assert resync[0].time_s == pytest.approx(resync_s)
    i, j = events.index(damage[0]), events.index(resync[0])
    assert all(isinstance(e, Skipping) for e in events[i + 1:j])
    before, resumed = frames_of(events[:i]), frames_of(events[j:])
    assert all(f.time_s < damage[0].start_s for f in before)
    # Every frame from the IDR on, and every frame before the damage, as undamaged decoding gives it.
    assert [f.time_s for f in resumed] == pytest.approx([t / FPS for t in range(round(resync_s * FPS), NUM_FRAMES)])
    for f in before + resumed:
        np.testing.assert_array_equal(f.field.mv, clean[round(f.time_s, 6)].mv)


def test_an_elementary_stream_is_resynchronised_too(ts):
    """Raw H.264 (Annex B) carries no timestamps: pictures are put in display order by their
    picture order count (the same fields as the MPEG-TS stream's), frames counted at the stream's
    frame rate, and damage seen through the decoder's errors."""
    h264 = live_media.elementary_stream(ts)
    clean, _ = read(h264, "h264")
    assert [f.time_s for f in frames_of(clean)] == pytest.approx([i / FPS for i in range(NUM_FRAMES)])
    for f, g in zip(frames_of(clean), frames_of(read(ts, "mpegts")[0])):
        np.testing.assert_array_equal(f.field.mv, g.field.mv)
    events, live = read(live_media.damage_elementary(h264, len(h264) // 2, 600), None)  # format probed
    assert live.num_damaged >= 1
    resumed = frames_of(events[events.index(next(e for e in events if isinstance(e, Resync))):])
    assert resumed and resumed[0].field.frame_type == "I"
    tail = frames_of(clean)[-len(resumed):]  # the same pictures, from the IDR on
    for f, g in zip(resumed, tail):
        np.testing.assert_array_equal(f.field.mv, g.field.mv)


class _Stream:
    """What ``cut_windows`` needs of a stream, for a list of events."""

    name, fps, frame_s, reorder_margin_s, display_size = "<list>", 10.0, 0.1, 0.3, (16, 16)
    config = ExtractConfig()


def _frame(index: int, frame_type: str) -> TimedFrame:
    mv, valid = np.full((2, 2, 2), index, np.float32), np.ones((2, 2), bool)
    image = np.full((4, 4, 3), index, np.uint8) if frame_type == "I" else None
    return TimedFrame(index / 10, FrameField(index, frame_type, mv, valid, image, pts=index, decode_index=index))


def test_windows_on_a_list_of_events():
    """10 fps, an I-frame every 8 frames; damage from 2.0 s to the keyframe at 3.2 s; 4.7 s in all;
    windows of 1 s every 0.5 s."""
    types = "IPPPPPPP" * 6
    events = [_frame(i, types[i]) for i in range(20)] + [Damage(2.0, "noise"), Skipping(2.5), Resync(3.2)]
    events += [_frame(i, "I" if i == 32 else "P") for i in range(32, 47)]
    windows = list(cut_windows(events, WindowConfig(1.0, 0.5), _Stream()))
    assert [(w.index, w.start_s, w.end_s) for w in windows] == [
        (k, k * 0.5, k * 0.5 + 1.0) for k in range(8)] + [(8, 4.0, pytest.approx(4.7))]
    assert windows[-1].partial and not any(w.partial for w in windows[:-1])
    errors = [w.index for w in windows if w.error]
    assert errors == [3, 4, 5, 6] and "noise" in windows[3].error and "3.200" in windows[6].error
    w = windows[1]  # 0.5-1.5 s: frames 5..14, the I-frame at 0 carried, the one at 8 shown
    assert bytes(w.fields.frame_types).decode() == "PPPIPPPPPP"
    assert w.fields.iframe_index.tolist() == [-5, 3] and w.fields.mv[:, 0, 0, 0].tolist() == list(range(5, 15))
    w = windows[7]  # 3.5-4.5 s: after the keyframe at 3.2 s, which is carried
    assert w.error is None and w.fields.mv[:, 0, 0, 0].tolist() == list(range(35, 45))
    assert w.fields.iframe_index.tolist() == [-3]
    assert windows[8].fields.num_frames == 7  # 4.0-4.7 s
