"""The ``mvmae`` command line: help, version, ``extract video`` end to end on bikes.mp4, and how
a write error is reported."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest

import mvmae
from mvmae.cli import handle_errors, main
from mvmae.extract.export import SCHEMA_KEYS, load_export
from mvmae.train.writes import OutputWriteError

BIKES_TYPES = {"I": 6, "P": 69, "B": 175}
BIKES_SIZE = (272, 640)


@pytest.fixture(scope="module")
def bikes_exports(bikes_mp4, cli_runner, tmp_path_factory) -> dict:
    """bikes.mp4 extracted three ways: {name: (Result, out path)} (about 4 s in all)."""
    d = tmp_path_factory.mktemp("bikes_exports")
    runs = {
        "grid16_iframe128": ["--grid", "16", "--iframe-size", "128"],
        "iframe0": ["--iframe-size", "0"],
        "raw": ["--raw", "--grid", "16"],
    }
    exports = {}
    for name, args in runs.items():
        out = d / f"{name}.npz"
        result = cli_runner.invoke(main, ["extract", "video", str(bikes_mp4), "--out", str(out), *args])
        exports[name] = (result, out)
    return exports


def test_help(cli_runner) -> None:
    result = cli_runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for word in ["probe", "extract", "--debug", "--version"]:
        assert word in result.stdout


def test_version(cli_runner) -> None:
    result = cli_runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"mvmae, version {mvmae.__version__}"


def test_extract_video_help_documents_the_schema(cli_runner) -> None:
    result = cli_runner.invoke(main, ["extract", "video", "--help"])
    assert result.exit_code == 0
    text = result.stdout
    for key in SCHEMA_KEYS:
        assert re.search(rf"^\s+{key}\s", text, re.MULTILINE), key
    for word in ["float32", "bool", "uint8", "int64", "resolved|raw"]:
        assert word in text, word
    for option in ["--out", "--grid", "--iframe-size", "--raw", "--threads", "--skip-loop-filter"]:
        assert option in text, option


def test_probe_help(cli_runner) -> None:
    result = cli_runner.invoke(main, ["probe", "--help"])
    assert result.exit_code == 0 and "--json" in result.stdout


@pytest.mark.parametrize("args", [["--grid", "5"], ["--iframe-size", "-1"], ["--threads", "0"],
                                  ["--skip-loop-filter", "all"]])
def test_extract_video_rejects_bad_options(cli_runner, bikes_mp4, tmp_path, args) -> None:
    result = cli_runner.invoke(main, ["extract", "video", str(bikes_mp4), "--out", str(tmp_path / "x.npz"), *args])
    assert result.exit_code == 2  # click usage error
    assert list(tmp_path.iterdir()) == []


def test_extract_video_needs_out(cli_runner, bikes_mp4) -> None:
    result = cli_runner.invoke(main, ["extract", "video", str(bikes_mp4)])
    assert result.exit_code == 2 and "--out" in result.stderr


def test_grid16_iframe128_shapes(bikes_exports, bikes_mp4) -> None:
    result, out = bikes_exports["grid16_iframe128"]
    assert result.exit_code == 0, result.output
    f = load_export(out)
    h, w = 17, 40  # ceil(272 / 16), ceil(640 / 16)
    assert f.mv.shape == (250, 2, h, w) and f.mv.dtype == np.float32
    assert f.valid.shape == (250, h, w) and f.valid.dtype == np.bool_
    types = bytes(f.frame_types).decode()
    assert {t: types.count(t) for t in "IPB"} == BIKES_TYPES
    assert f.iframe_index.tolist() == [i for i, t in enumerate(types) if t == "I"]
    k, ih, iw, c = f.iframes.shape
    assert (k, c) == (6, 3) and f.iframes.dtype == np.uint8
    assert min(ih, iw) == 128
    assert abs(iw - 128 * BIKES_SIZE[1] / BIKES_SIZE[0]) <= 1  # aspect kept within a pixel
    assert (f.grid, f.fps, f.size) == (16, pytest.approx(25.0), BIKES_SIZE)
    assert f.meta["method"] == "resolved"
    assert f.meta["source"] == str(bikes_mp4)
    assert 0.5 < f.valid[types.index("P")].mean()  # P-frames of bikes are mostly inter-coded
    assert not f.valid[f.iframe_index].any() and not f.mv[f.iframe_index].any()
    assert np.isfinite(f.mv).all() and not f.mv[~np.broadcast_to(f.valid[:, None], f.mv.shape)].any()


def test_summary_line(bikes_exports, bikes_mp4) -> None:
    result, out = bikes_exports["grid16_iframe128"]
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith(f"{bikes_mp4}: 250 frames (6 I, 69 P, 175 B)")
    assert "grid 16 px (17x40 cells" in line and "6 I-frames" in line and "method resolved" in line
    assert line.endswith(f"-> {out}")
    assert result.stderr == ""


def test_iframe_size_0_keeps_source_size(bikes_exports) -> None:
    result, out = bikes_exports["iframe0"]
    assert result.exit_code == 0, result.output
    f = load_export(out)
    assert f.iframes.shape == (6, *BIKES_SIZE, 3)
    assert f.mv.shape == (250, 2, 34, 80) and f.grid == 8  # default grid
    assert f.meta["iframe_short_side"] == 0


def test_raw_method(bikes_exports) -> None:
    result, out = bikes_exports["raw"]
    assert result.exit_code == 0, result.output
    assert "method raw" in result.stdout
    f = load_export(out)
    assert f.meta["method"] == "raw"
    assert f.mv.shape == (250, 2, 17, 40)
    assert f.iframes.shape[1:3] == (256, 602)  # default --iframe-size 256
    resolved = load_export(bikes_exports["grid16_iframe128"][1])
    assert bytes(f.frame_types) == bytes(resolved.frame_types)
    assert not np.array_equal(f.mv, resolved.mv)  # raw vectors span several frames: not the same field


def test_meta_is_json_in_the_file(bikes_exports) -> None:
    _, out = bikes_exports["grid16_iframe128"]
    with np.load(out, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    for key in ["method", "codec", "profile", "frames_lost", "warnings", "mvmae_version"]:
        assert key in meta, key
    assert (meta["codec"], meta["profile"], meta["frames_lost"]) == ("h264", "High", 0)
    assert meta["mvmae_version"] == mvmae.__version__


def test_iframe_size_never_upscales(cli_runner, edge_media, tmp_path) -> None:
    out = tmp_path / "x.npz"
    result = cli_runner.invoke(main, ["extract", "video", str(edge_media["single_frame"]), "--out", str(out),
                                      "--iframe-size", "500"])
    assert result.exit_code == 0, result.output
    assert load_export(out).iframes.shape == (1, 144, 192, 3)


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("command", ["check", "extract video"])
def test_an_unwritable_output_is_one_line_naming_the_file(command, cli_runner, edge_media, tmp_path) -> None:
    """A disk fault, not a bug: 'error: cannot write <path>: <reason> (<ERRNO>)', no class name."""
    listing = tmp_path / "list.txt"
    listing.write_text(f"{edge_media['pan']} jump\n")
    missing = tmp_path / "no" / "such"
    if command == "check":
        target = missing / "r.jsonl"
        args, expected = ["check", str(listing), "--report", str(target)], target
    else:
        (tmp_path / "no").write_text("a file where the folder should be")
        target = missing / "x.npz"
        args, expected = ["extract", "video", str(edge_media["pan"]), "--out", str(target)], missing
    result = cli_runner.invoke(main, args)
    assert result.exit_code == 1
    reason = "No such file or directory (ENOENT)" if command == "check" else "Not a directory (ENOTDIR)"
    assert _error_lines(result) == [f"error: cannot write {expected}: {reason}"], result.stderr
    assert "Traceback" not in result.stderr


def test_a_training_write_error_is_one_line_with_its_hint(cli_runner) -> None:
    """What `mvmae train` prints for a checkpoint it cannot write: no class name before it."""
    @click.command()
    @handle_errors
    def save() -> None:
        raise OutputWriteError("/run/last.pt", OSError(errno.ENOSPC, "No space left on device"), "checkpoint")

    result = cli_runner.invoke(save, [])
    assert result.exit_code == 1
    assert _error_lines(result) == ["error: cannot write checkpoint /run/last.pt: No space left on device "
                                    "(ENOSPC); free space, then rerun with --resume"]


def test_help_probe_and_extract_load_no_jit_scipy_or_torch(bikes_mp4, tmp_path) -> None:
    """Start-up: `mvmae --help`, `mvmae probe` and `mvmae extract video` import neither torch nor
    scipy nor a JIT compiler (numba's import and kernel loading cost a cold process about a
    second, benchmarks/startup.py; the extraction kernels are a compiled extension)."""
    code = ("import sys\nfrom mvmae.cli import main\n"
            "for args in (['--help'], ['probe', sys.argv[1]],\n"
            "             ['extract', 'video', sys.argv[1], '--out', sys.argv[2]]):\n"
            "    main(args, standalone_mode=False)\n"
            "print(sorted(m for m in ('numba', 'llvmlite', 'scipy', 'torch') if m in sys.modules))")
    root = Path(mvmae.__file__).resolve().parents[1]
    out = tmp_path / "bikes.npz"
    proc = subprocess.run([sys.executable, "-c", code, str(bikes_mp4), str(out)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout
    assert out.stat().st_size > 0

