"""Videos in which no I-frame decodes get a context frame: their first decoded frame, flagged.

Two real H.264 files made here: an mp4 whose edit list starts after its only IDR (an editor's
trim) and a raw ``.h264`` stream that starts on a non-IDR slice (a capture started mid-stream,
decoded from x264's intra-refresh recovery point).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mvmae.extract.probe import probe_video
from mvmae.extract.video import extract_video, iter_segments

try:
    import media
except ImportError:  # pragma: no cover
    from tests import media

NUM_FRAMES, HIDE = 40, 2


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory) -> Path:
    return media.make_edit_list_clip(tmp_path_factory.mktemp("ctx") / "trimmed.mp4", hide=HIDE,
                                     num_frames=NUM_FRAMES)


@pytest.fixture(scope="module")
def mid_stream(tmp_path_factory) -> Path:
    return media.make_non_idr_start_stream(tmp_path_factory.mktemp("ctx") / "mid_stream.h264",
                                           num_frames=NUM_FRAMES)


def pan_frame(t: int) -> np.ndarray:
    """Frame t (uint8 (H, W, 3)) of the pan both files encode (2 px/frame right)."""
    return media.render_pan(vx=2, vy=0, num_frames=NUM_FRAMES)[t]


def median_dx(fields) -> float:
    return float(np.median(fields.mv[:, 0][fields.valid]))


def test_edit_list_hiding_the_idr(trimmed) -> None:
    """The edit list hides the IDR: 38 frames, the first a B-frame, no I-frame. The first decoded
    frame is stored as the context frame at index 0 and flagged; the hidden frames are not
    'lost'; probe counts the I-frame in the bitstream but none shown."""
    fields = extract_video(trimmed)
    types = bytes(fields.frame_types).decode()
    assert fields.num_frames == NUM_FRAMES - HIDE and types[0] == "B" and "I" not in types
    assert fields.iframes.shape == (1, 144, 192, 3) and fields.iframe_index.tolist() == [0]
    assert fields.meta["context_frame"] == {"index": 0, "frame_type": "B"}
    assert (fields.meta["frames_lost"], fields.meta["frames_hidden"]) == (0, HIDE)
    assert any("context frame" in w for w in fields.meta["warnings"])
    # the context frame is the first shown frame: display frame HIDE of the pan, not the IDR
    diff = np.abs(fields.iframes[0].astype(np.int16) - pan_frame(HIDE)).mean()
    assert diff < 3.0
    assert np.abs(fields.iframes[0].astype(np.int16) - pan_frame(0)).mean() > 2 * diff
    assert median_dx(fields) == pytest.approx(2.0, abs=0.25)
    report = probe_video(trimmed)
    assert (report.num_i, report.num_i_shown, report.num_hidden) == (1, 0, HIDE)


def test_stream_starting_on_a_non_idr_slice(mid_stream) -> None:
    """A raw stream without its IDR: FFmpeg shows the frames from the recovery point on, all P;
    the first of them is the context frame."""
    fields = extract_video(mid_stream)
    types = bytes(fields.frame_types).decode()
    assert 0 < fields.num_frames < NUM_FRAMES - 1 and set(types) == {"P"}
    assert fields.iframe_index.tolist() == [0] and fields.meta["context_frame"] == {"index": 0, "frame_type": "P"}
    first = NUM_FRAMES - fields.num_frames  # the shown frames are the last ones of the pan
    assert np.abs(fields.iframes[0].astype(np.int16) - pan_frame(first)).mean() < 4.0
    assert median_dx(fields) == pytest.approx(2.0, abs=0.25)
    report = probe_video(mid_stream)
    assert (report.container, report.num_i, report.num_i_shown) == ("h264", 0, 0)


def test_each_segment_without_iframe_gets_its_own_first_frame(trimmed) -> None:
    """Cut into segments of 16 frames, every segment's context frame is its own first frame
    (as MV-MAE's reference code takes the first frame of each segment), at index 0."""
    segments = list(iter_segments(trimmed, max_frames=16))
    assert [s.num_frames for s in segments] == [16, 16, NUM_FRAMES - HIDE - 32]
    for k, seg in enumerate(segments):
        start = seg.meta["segment_start"]
        assert start == 16 * k and seg.iframe_index.tolist() == [0]
        assert seg.meta["context_frame"]["index"] == 0
        assert seg.meta["context_frame"]["frame_type"] == chr(seg.frame_types[0])
        assert np.abs(seg.iframes[0].astype(np.int16) - pan_frame(HIDE + start)).mean() < 3.0


def test_videos_with_iframes_have_no_context_frame(tmp_path) -> None:
    """A video with I-frames keeps them: no context frame, segments carry the latest I-frame."""
    path = media.make_pan_clip(tmp_path / "pan.mp4", vx=2, vy=0, num_frames=30, gop=24)
    segments = list(iter_segments(path, max_frames=10))
    assert [s.iframe_index.tolist() for s in segments] == [[0], [-10], [-20, 4]]
    assert all(s.meta["context_frame"] is None for s in segments)
