"""Bad and edge-case inputs through ``mvmae extract video``, ``mvmae probe`` and the Python API.

Failures must be one line on stderr naming the file and the reason, exit 1, no traceback (unless
``--debug``), never a hang; the odd-but-valid inputs must extract, with warnings where the
result is degenerate and the lost frames counted in ``meta``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mvmae.cli import main
from mvmae.extract import errors
from mvmae.extract.probe import probe_video
from mvmae.extract.video import extract_video

# A guard against a hang (CliRunner runs the command in this process), not a speed claim: how
# fast bad input is refused is measured by the benchmarks, not asserted here.
HANG_LIMIT_S = 120
PAN_FRAMES = 48  # frames of the `pan` clip and of the truncated faststart clip (tests/conftest.py)

# (edge_media name, error class, reason fragment the message must contain, lower-cased)
FAILING = [
    ("empty", errors.EmptyFileError, "empty"),
    ("truncated", errors.NotAVideoError, "not a readable video container"),
    ("random_bytes", errors.NotAVideoError, "not a readable video container"),
    ("text", errors.NotAVideoError, "not a readable video container"),
    ("audio_only", errors.NoVideoStreamError, "no video stream"),
    ("hevc", errors.UnsupportedCodecError, "hevc"),
    ("mpeg4", errors.UnsupportedCodecError, "mpeg4"),
    ("unknown_codec", errors.UnsupportedCodecError, "codec unknown to ffmpeg"),
    ("header_only", errors.NoFramesError, "no frame could be decoded"),
    ("missing", errors.MissingFileError, "no such file"),
]
FAILING_IDS = [case[0] for case in FAILING]

# Inputs that must extract; the warning fragment (if any) must be in meta["warnings"] and on stderr.
WORKING_WARNINGS = {
    "single_frame": "no motion vectors",
    "all_intra": "intra",
    "corrupted_middle": "lost",
    "truncated_faststart": "lost",
}


def _extract(cli_runner, path: Path, out: Path, *args: str):
    """``mvmae extract video PATH --out OUT`` in this process, failed by SIGALRM after HANG_LIMIT_S."""
    def hang(signum, frame):
        raise TimeoutError(f"{path}: still extracting after {HANG_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_LIMIT_S)
    try:
        return cli_runner.invoke(main, [*args, "extract", "video", str(path), "--out", str(out)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _load(out: Path) -> dict:
    with np.load(out, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["meta"] = json.loads(str(data["meta"]))
    return data


# --------------------------------------------------------------------------- failing inputs


@pytest.mark.parametrize(("name", "error", "reason"), FAILING, ids=FAILING_IDS)
def test_cli_bad_input_is_one_line_error(cli_runner, edge_media, tmp_path, name, error, reason) -> None:
    path = edge_media[name]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = _extract(cli_runner, path, out_dir / "x.npz")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # handled, not a crash
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert reason in lines[0].lower()
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert list(out_dir.iterdir()) == []  # no output, no temp file


@pytest.mark.parametrize(("name", "error", "reason"), FAILING, ids=FAILING_IDS)
def test_api_bad_input_raises_typed_error(edge_media, name, error, reason) -> None:
    path = edge_media[name]
    with pytest.raises(error) as info:
        extract_video(path)
    exc = info.value
    assert isinstance(exc, errors.VideoError)
    assert exc.path == str(path)
    assert reason in exc.reason.lower()
    assert str(exc) == f"{path}: {exc.reason}"
    assert exc.code == error.code


def test_unsupported_codec_reason_names_the_codec(edge_media) -> None:
    for name, codec in [("hevc", "hevc"), ("mpeg4", "mpeg4")]:
        with pytest.raises(errors.UnsupportedCodecError) as info:
            extract_video(edge_media[name])
        assert f"codec is {codec}" in info.value.reason
        assert "h.264" in info.value.reason.lower()


def test_audio_only_reason_says_what_was_found(edge_media) -> None:
    with pytest.raises(errors.NotAVideoError) as info:
        extract_video(edge_media["audio_only"])
    assert "audio" in info.value.reason


def test_failed_extraction_keeps_existing_output(cli_runner, edge_media, tmp_path) -> None:
    out = tmp_path / "x.npz"
    out.write_bytes(b"previous result")
    result = _extract(cli_runner, edge_media["random_bytes"], out)
    assert result.exit_code == 1
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]


@pytest.mark.parametrize(("name", "error", "reason"),
                         [case for case in FAILING if case[0] != "header_only"],
                         ids=[n for n in FAILING_IDS if n != "header_only"])
def test_probe_bad_input(cli_runner, edge_media, name, error, reason) -> None:
    path = edge_media[name]
    with pytest.raises(error) as info:
        probe_video(path)
    assert info.value.path == str(path)
    result = cli_runner.invoke(main, ["probe", str(path)])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and reason in lines[0].lower()
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- --debug


def test_debug_lets_the_error_propagate(cli_runner, edge_media, tmp_path) -> None:
    result = _extract(cli_runner, edge_media["empty"], tmp_path / "x.npz", "--debug")
    assert result.exit_code != 0
    assert isinstance(result.exception, errors.EmptyFileError)
    assert result.exception.path == str(edge_media["empty"])
    assert not (tmp_path / "x.npz").exists()


def _run_mvmae(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a real process (real stderr, real logging setup)."""
    return subprocess.run([sys.executable, "-c", "from mvmae.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=60)


def test_folder_is_unreadable_not_missing(tmp_path) -> None:
    folder = tmp_path / "clip.mp4"
    folder.mkdir()
    for read in (probe_video, extract_video):
        with pytest.raises(errors.UnreadableFileError) as info:
            read(folder)
        assert info.value.code == "unreadable" and "a folder" in info.value.reason, read


@contextlib.contextmanager
def _as_nobody():
    """Run the block as user nobody when the tests run as root (whom file permissions do not stop)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


def test_permission_denied_is_unreadable(cli_runner, edge_media) -> None:
    """A file this user may not open: code 'unreadable' with the system's reason, not 'not_video'."""
    folder = Path(tempfile.mkdtemp(prefix="mvmae-perm-"))  # not under tmp_path: nobody may enter that
    try:
        folder.chmod(0o755)
        path = Path(shutil.copyfile(edge_media["pan"], folder / "locked.mp4"))
        path.chmod(0)
        with _as_nobody():
            with pytest.raises(errors.UnreadableFileError) as info:
                probe_video(path)
            result = cli_runner.invoke(main, ["probe", "--json", str(path)])
    finally:
        shutil.rmtree(folder)
    assert info.value.code == "unreadable" and "permission denied" in info.value.reason.lower()
    assert result.exit_code == 1
    row = json.loads(result.stdout)
    assert (row["path"], row["code"]) == (str(path), "unreadable")
    assert "permission denied" in row["error"].lower()


def test_debug_prints_traceback_in_a_real_process(edge_media, tmp_path) -> None:
    path = edge_media["hevc"]
    plain = _run_mvmae("extract", "video", str(path), "--out", str(tmp_path / "x.npz"))
    debug = _run_mvmae("--debug", "extract", "video", str(path), "--out", str(tmp_path / "x.npz"))
    assert plain.returncode == 1 and debug.returncode == 1
    assert len(plain.stderr.splitlines()) == 1 and "Traceback" not in plain.stderr
    assert "Traceback" in debug.stderr and "UnsupportedCodecError" in debug.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- inputs that must work


@pytest.mark.parametrize("name", ["empty", "random_bytes", "hevc", "missing"])
def test_bad_input_in_a_real_process(edge_media, tmp_path, name) -> None:
    path = edge_media[name]
    proc = _run_mvmae("extract", "video", str(path), "--out", str(tmp_path / "x.npz"))
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and str(path) in lines[0], proc.stderr


def test_single_frame(cli_runner, edge_media, tmp_path, caplog) -> None:
    out = tmp_path / "x.npz"
    with caplog.at_level(logging.WARNING):
        result = _extract(cli_runner, edge_media["single_frame"], out)
    assert result.exit_code == 0, result.output
    z = _load(out)
    assert z["mv"].shape == (1, 2, 18, 24) and z["valid"].shape == (1, 18, 24)
    assert bytes(z["frame_types"]) == b"I"
    assert not z["valid"].any() and not z["mv"].any()
    assert z["iframes"].shape == (1, 144, 192, 3) and z["iframe_index"].tolist() == [0]
    assert any("no motion vectors" in w for w in z["meta"]["warnings"])
    assert any("no motion vectors" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_all_intra(cli_runner, edge_media, tmp_path, caplog) -> None:
    out = tmp_path / "x.npz"
    with caplog.at_level(logging.WARNING):
        result = _extract(cli_runner, edge_media["all_intra"], out)
    assert result.exit_code == 0, result.output
    z = _load(out)
    assert bytes(z["frame_types"]) == b"I" * 10
    assert not z["valid"].any()
    assert z["iframe_index"].tolist() == list(range(10)) and len(z["iframes"]) == 10
    assert any("intra" in w for w in z["meta"]["warnings"])
    assert any("intra" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("grid", [4, 8, 16])
def test_odd_size_works(cli_runner, edge_media, tmp_path, grid) -> None:
    out = tmp_path / "x.npz"
    result = cli_runner.invoke(main, ["extract", "video", str(edge_media["odd_size"]), "--out", str(out),
                                      "--grid", str(grid)])
    assert result.exit_code == 0, result.output
    z = _load(out)
    h, w = math.ceil(145 / grid), math.ceil(177 / grid)
    assert z["mv"].shape == (24, 2, h, w) and z["mv"].dtype == np.float32
    assert z["valid"].shape == (24, h, w)
    assert z["size"].tolist() == [145, 177] and int(z["grid"]) == grid
    assert z["iframes"].shape[1:] == (145, 177, 3)  # short side 145 < 256: never upscaled
    assert z["valid"][1:].mean() > 0.5  # P/B frames of a pan have vectors
    assert z["meta"]["warnings"] == []


def test_corrupted_middle(cli_runner, edge_media, tmp_path, caplog) -> None:
    out = tmp_path / "x.npz"
    with caplog.at_level(logging.WARNING):
        result = _extract(cli_runner, edge_media["corrupted_middle"], out)
    assert result.exit_code == 0, result.output
    z = _load(out)
    meta = z["meta"]
    assert meta["frames_lost"] > 0 or meta["decode_errors"] > 0
    num_frames = len(z["frame_types"])
    assert 0 < num_frames <= PAN_FRAMES
    assert num_frames + meta["frames_lost"] == PAN_FRAMES  # every frame decoded or counted lost
    assert bytes(z["frame_types"][:1]) == b"I"  # the start of the file is intact
    assert any("lost" in w for w in meta["warnings"])
    assert any("lost" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_truncated_faststart(cli_runner, edge_media, tmp_path, caplog) -> None:
    """Header intact, the second half of the samples missing: what is there decodes, the rest is lost."""
    out = tmp_path / "x.npz"
    with caplog.at_level(logging.WARNING):
        result = _extract(cli_runner, edge_media["truncated_faststart"], out)
    assert result.exit_code == 0, result.output
    z = _load(out)
    meta = z["meta"]
    num_frames = len(z["frame_types"])
    assert 0 < num_frames < PAN_FRAMES
    assert z["valid"][1:].mean() > 0.5
    assert any("lost" in w for w in meta["warnings"])
    assert meta["frames_lost"] > 0
    # The container declares 48 frames: the ones past the cut are lost too, not only the packet cut in two.
    assert num_frames + meta["frames_lost"] == PAN_FRAMES, meta


@pytest.mark.parametrize("name", sorted(WORKING_WARNINGS))
def test_warning_on_stderr_in_a_real_process(edge_media, tmp_path, name) -> None:
    path, out = edge_media[name], tmp_path / "x.npz"
    proc = _run_mvmae("extract", "video", str(path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert len(proc.stdout.splitlines()) == 1 and str(out) in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.lower().startswith("warning:")]
    assert warnings and all(str(path) in line for line in warnings), proc.stderr
    assert any(WORKING_WARNINGS[name] in line for line in warnings)
    assert "Traceback" not in proc.stderr


def test_warning_on_stderr_through_clirunner(cli_runner, edge_media, tmp_path) -> None:
    """The CLI's warnings go to the stderr of the invocation, also when run in-process twice."""
    for k in range(2):
        result = _extract(cli_runner, edge_media["all_intra"], tmp_path / f"x{k}.npz")
        assert result.exit_code == 0
        assert "intra" in result.stderr, (k, result.stderr)
