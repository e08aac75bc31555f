"""``mvmae extract video --show``: one video's fields as a picture, without the .npz; a clip
without B-frames gets a panel that says so."""

from __future__ import annotations

import pytest
from PIL import Image

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
except ImportError:  # ... or as the `tests` package
    from tests import media

from mvmae.cli import main
from mvmae.extract.config import ExtractConfig
from mvmae.extract.figure import choose_panels
from mvmae.extract.video import extract_video


@pytest.fixture(scope="module")
def ip_clip(tmp_path_factory):
    """A pan of (+2, -1) px per frame coded with I- and P-frames only."""
    return media.make_pan_clip(tmp_path_factory.mktemp("figure") / "ip.mp4", vx=2, vy=-1, num_frames=24,
                               bframes=0, gop=12)


def test_extract_video_show_alone(ip_clip, cli_runner, tmp_path) -> None:
    out = tmp_path / "ip.png"
    result = cli_runner.invoke(main, ["extract", "video", str(ip_clip), "--show", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{ip_clip}: 24 frames (2 I, 22 P, 0 B)") and result.stdout.rstrip().endswith(
        f"-> {out}")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ip.png"]  # no .npz, no temporary


def test_extract_video_show_and_out(ip_clip, cli_runner, tmp_path) -> None:
    result = cli_runner.invoke(main, ["extract", "video", str(ip_clip), "--out", str(tmp_path / "ip.npz"),
                                      "--show", str(tmp_path / "ip.png")])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.rstrip().endswith(f"-> {tmp_path / 'ip.npz'}, {tmp_path / 'ip.png'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ip.npz", "ip.png"]


def test_extract_video_needs_out_or_show(ip_clip, cli_runner) -> None:
    result = cli_runner.invoke(main, ["extract", "video", str(ip_clip)])
    assert result.exit_code == 2 and "give --out FILE.npz, --show FILE.png or both" in result.stderr


def test_a_clip_without_b_frames_says_so(ip_clip) -> None:
    fields = extract_video(ip_clip, ExtractConfig())
    first, p_frame, b_frame = choose_panels(fields)
    assert first.frame == 1 and first.title == "I-frame 0 + field of frame 1 (P)"
    assert bytes(fields.frame_types)[p_frame.frame:p_frame.frame + 1] == b"P" and p_frame.iframe is not None
    assert (b_frame.frame, b_frame.iframe, b_frame.title) == (None, None, "no B-frame in this clip")
