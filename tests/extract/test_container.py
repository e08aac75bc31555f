"""What the decoder and the probe share (``mvmae.extract.container``), on real files."""

from __future__ import annotations

import av
import pytest

from mvmae.extract import h264
from mvmae.extract.container import PacketReader, nal_framing, open_video, stream_info


@pytest.fixture(scope="module")
def annexb_pan(edge_media, tmp_path_factory):
    """The pan clip's packets stream-copied into a raw Annex B ``.h264`` file."""
    path = tmp_path_factory.mktemp("annexb") / "pan.h264"
    with av.open(str(edge_media["pan"])) as inp, av.open(str(path), "w", format="h264") as out:
        copy = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = copy
                out.mux(packet)
    return path


@pytest.mark.parametrize(("name", "length_size"), [("pan", 4), ("annexb", None)])
def test_nal_framing_and_packets(edge_media, annexb_pan, name, length_size) -> None:
    """avcC (MP4) streams have length-prefixed NAL units and the SPS in the extradata; a raw
    stream has start codes; either way every picture's packet is read and none is missing."""
    container, stream = open_video(edge_media["pan"] if name == "pan" else annexb_pan)
    try:
        framing, sps_nals = nal_framing(stream)
        packets = PacketReader(container, stream)
        infos = [h264.picture_info(h264.iter_nals(p, framing))[0] for p in packets if p.size]
    finally:
        container.close()
    assert framing == length_size
    if name == "pan":
        assert h264.first_sps(sps_nals).max_num_ref_frames == 4  # bf 2 with b-pyramid, refs 3
    assert packets.num_packets == len(infos) == 48 and packets.error == ""
    assert [i.picture_type for i in infos].count("I") == 2


@pytest.mark.parametrize(("sps_refs", "reported"), [(3, 3), (16, 16), (17, 16), (4_000_000_000, 16)])
def test_stream_info_bounds_the_sps_reference_count(edge_media, sps_refs, reported) -> None:
    """A damaged SPS can declare billions of reference frames; H.264 allows 16, which is what
    the decoder uses (num_candidate_refs) and what the probe and the samples' meta report."""
    container, stream = open_video(edge_media["pan"])
    try:
        info = stream_info(container, stream, h264.SeqParams(100, 30, sps_refs))
        unknown = stream_info(container, stream, None)
    finally:
        container.close()
    assert info.max_num_ref_frames == reported == h264.num_candidate_refs(h264.SeqParams(100, 30, sps_refs))
    assert info.profile == "High" and info.size == (144, 192) and info.num_frames_declared == 48
    assert unknown.max_num_ref_frames == 0 and unknown.profile  # FFmpeg's profile name then
