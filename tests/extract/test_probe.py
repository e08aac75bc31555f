"""``mvmae probe``: stream facts read from the bitstream, checked on real files of known structure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import pytest

from mvmae.cli import main
from mvmae.extract import errors
from mvmae.extract.probe import probe_video

try:
    import media
except ImportError:
    from tests import media

REPORT_KEYS = {
    "path", "container", "codec", "profile", "level", "height", "width", "fps", "num_frames", "num_i",
    "num_p", "num_b", "num_reference_b", "gop_lengths", "longest_b_run", "max_num_ref_frames", "duration_s",
    "num_unparsed_packets", "num_frames_declared", "frame_interval_ms", "container_error",
    "num_hidden", "num_i_shown", "rotation",
}


def test_probe_bikes(bikes_mp4) -> None:
    r = probe_video(bikes_mp4)
    assert (r.codec, r.profile) == ("h264", "High")
    assert "mp4" in r.container
    assert (r.width, r.height) == (640, 272)
    assert r.fps == pytest.approx(25.0)
    assert (r.num_frames, r.num_i, r.num_p, r.num_b) == (250, 6, 69, 175)
    assert r.num_reference_b == 60
    assert len(r.gop_lengths) == 6 and sum(r.gop_lengths) == 250
    assert r.longest_b_run == 3
    assert r.max_num_ref_frames == 4
    assert r.duration_s == pytest.approx(10.0, abs=0.05)


def test_probe_bigbuckbunny(bigbuckbunny_mp4) -> None:
    r = probe_video(bigbuckbunny_mp4)
    assert (r.codec, r.profile) == ("h264", "Main")
    assert (r.width, r.height) == (1280, 720)
    assert r.num_frames == 132
    assert r.num_b == 0 and r.num_reference_b == 0 and r.longest_b_run == 0
    assert r.num_i >= 1 and r.num_i + r.num_p == 132
    assert sum(r.gop_lengths) == 132 and len(r.gop_lengths) == r.num_i
    assert r.max_num_ref_frames == 1
    assert r.duration_s == pytest.approx(132 / r.fps, abs=0.1)


def x264_sps_num_ref_frames(bframes: int, refs: int, gop: int) -> int:
    """``max_num_ref_frames`` as libx264 writes it into the SPS (encoder/set.c, x264_sps_init).

    x264 turns b-pyramid (default 'normal') off below 2 B-frames; the SPS then holds
    max(refs, 1 + num_reorder_frames, 4 if pyramid else 1), and 0 for intra-only (keyint 1).
    Measured with this PyAV's libx264: bf 0 refs 1 -> 1, bf 1 refs 1 -> 2, bf 2 refs 1 -> 4,
    bf 3 refs 6 -> 6, keyint 1 -> 0.
    """
    if gop == 1:
        return 0
    pyramid = bframes >= 2
    num_reorder = 2 if pyramid else 1 if bframes else 0
    return min(16, max(refs, 1 + num_reorder, 4 if pyramid else 1))


def _x264_settings(path: Path) -> dict[str, str]:
    """The encoder settings libx264 writes as an SEI string ('... options: ref=3 bframes=2 ...')."""
    data = path.read_bytes()
    start = data.index(b"x264 - core")
    text = data[start:start + 4000].split(b"\x00")[0].decode("ascii", "replace")
    return dict(kv.split("=", 1) for kv in text.split("options: ", 1)[1].split() if "=" in kv)


@pytest.mark.parametrize(("bframes", "refs", "gop", "num_frames"), [
    (0, 1, 8, 20), (0, 3, 8, 20), (1, 1, 8, 20), (2, 1, 12, 30), (2, 3, 12, 30), (3, 6, 16, 33), (0, 1, 1, 5),
])
def test_probe_pan_clip_structure(tmp_path, bframes, refs, gop, num_frames) -> None:
    path = media.make_pan_clip(tmp_path / "pan.mp4", vx=2, vy=1, num_frames=num_frames, size=(64, 96),
                               bframes=bframes, refs=refs, gop=gop)
    settings = _x264_settings(path)
    assert (settings["bframes"], settings["ref"]) == (str(bframes), str(refs))
    r = probe_video(path)
    assert (r.width, r.height, r.num_frames) == (96, 64, num_frames)
    assert r.num_i == math.ceil(num_frames / gop)
    assert r.num_i + r.num_p + r.num_b == num_frames
    assert r.gop_lengths == [gop] * (num_frames // gop) + ([num_frames % gop] if num_frames % gop else [])
    assert r.longest_b_run == bframes
    assert r.max_num_ref_frames == x264_sps_num_ref_frames(bframes, refs, gop)
    if bframes < 2:
        assert r.num_reference_b == 0  # no b-pyramid
    else:
        assert 0 < r.num_reference_b < r.num_b
    assert r.fps == pytest.approx(25.0)
    assert r.duration_s == pytest.approx(num_frames / 25, abs=0.05)


def _decoded_types(path: Path) -> str:
    with av.open(str(path)) as container:
        return "".join("?IPB"[int(f.pict_type)] for f in container.decode(video=0))


@pytest.mark.parametrize(("name", "num_frames"), [("pan", 48), ("truncated_faststart", 24), ("single_frame", 1)])
def test_probe_declared_frames_and_intervals(edge_media, name, num_frames) -> None:
    """The container's frame count is reported beside the bitstream's; 25 fps clips step 40 ms."""
    r = probe_video(edge_media[name])
    assert r.num_frames == num_frames
    assert r.num_frames_declared == (1 if name == "single_frame" else 48)
    assert r.frame_interval_ms == ([] if name == "single_frame" else [pytest.approx(40.0, abs=0.01)] * 2)


def test_probe_counts_match_a_full_decode(edge_media) -> None:
    """Slice types read from the bitstream agree with the decoder's picture types."""
    path = edge_media["pan"]
    types = _decoded_types(path)
    r = probe_video(path)
    assert (r.num_i, r.num_p, r.num_b) == (types.count("I"), types.count("P"), types.count("B"))


def test_probe_text_output(cli_runner, bikes_mp4) -> None:
    result = cli_runner.invoke(main, ["probe", str(bikes_mp4)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.splitlines()[0] == str(bikes_mp4)
    for fragment in ["h264 High", "640x272 px", "25 fps", "10 s", "250: 6 I, 69 P, 175 B",
                     "60 B used as references", "GOPs       6", "longest 3", "up to 4"]:
        assert fragment in out, fragment
    assert result.stderr == ""


def test_probe_json_lines(cli_runner, bikes_mp4, bigbuckbunny_mp4) -> None:
    result = cli_runner.invoke(main, ["probe", "--json", str(bikes_mp4), str(bigbuckbunny_mp4)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["path"] for row in rows] == [str(bikes_mp4), str(bigbuckbunny_mp4)]
    for row in rows:
        assert set(row) == REPORT_KEYS
    bikes = rows[0]
    assert (bikes["num_i"], bikes["num_p"], bikes["num_b"], bikes["num_reference_b"]) == (6, 69, 175, 60)
    assert sum(bikes["gop_lengths"]) == 250 and bikes["max_num_ref_frames"] == 4
    assert rows[1]["profile"] == "Main" and rows[1]["num_b"] == 0


def test_probe_mixed_good_and_bad_text(cli_runner, bikes_mp4, edge_media) -> None:
    bad = [edge_media["empty"], edge_media["hevc"], edge_media["missing"]]
    good = [bikes_mp4, edge_media["pan"]]
    result = cli_runner.invoke(main, ["probe", str(bad[0]), str(good[0]), str(bad[1]), str(good[1]), str(bad[2])])
    assert result.exit_code == 1
    for path in good:
        assert f"{path}\n" in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == len(bad)
    for path, reason, line in zip(bad, ["empty", "hevc", "no such file"], lines):
        assert str(path) in line and reason in line.lower()
    assert "Traceback" not in result.output


def test_probe_mixed_good_and_bad_json(cli_runner, bikes_mp4, edge_media) -> None:
    paths = [edge_media["text"], bikes_mp4, edge_media["audio_only"]]
    result = cli_runner.invoke(main, ["probe", "--json", *map(str, paths)])
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["path"] for row in rows] == list(map(str, paths))
    assert rows[0]["code"] == errors.NotAVideoError.code and "error" in rows[0]
    assert set(rows[1]) == REPORT_KEYS and rows[1]["num_frames"] == 250
    assert rows[2]["code"] == errors.NoVideoStreamError.code and "no video stream" in rows[2]["error"]


def test_probe_survives_a_damaged_slice_header(cli_runner, edge_media, tmp_path) -> None:
    """A packet whose slice header does not parse must not abort probe (extract treats it as lost)."""
    damaged = media.make_damaged_slice_file(edge_media["pan"], tmp_path / "damaged.mp4", packet_index=10)
    result = cli_runner.invoke(main, ["probe", str(damaged), str(edge_media["pan"])])
    assert f"{edge_media['pan']}\n" in result.stdout, result.output  # the good file is still reported
    for line in result.stderr.splitlines():
        assert str(damaged) in line, line  # any error names its file
    try:
        report = probe_video(damaged)
    except errors.VideoError:
        pass  # a typed, per-file error is acceptable
    else:
        assert report.num_frames >= 47


def test_probe_header_only_file_is_bad(cli_runner, edge_media) -> None:
    """No picture at all behind an intact header: extract fails (NoFramesError), probe must flag it."""
    path = edge_media["header_only"]
    result = cli_runner.invoke(main, ["probe", str(path)])
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and str(path) in lines[0]
