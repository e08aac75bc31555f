"""The job_* fixtures (real H.264 datasets for `mvmae extract run` and `mvmae shards ...`), shared by
tests/job and tests/shards through tests/conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
except ImportError:  # ... or as the `tests` package
    from tests import media

# --- job_* fixtures: datasets for `mvmae extract run` and `mvmae shards ...` -----------------

# Good clips: (stem, class name, vx, vy); 40 frames 144x192, 25 fps, 2 B-frames, GOP 24.
JOB_CLIPS = [("jump_a", "jump", 1, 0), ("jump_b", "jump", 2, 1), ("jump_c", "jump", 3, -1),
             ("run_a", "run", -2, 1), ("run_b", "run", 0, 2), ("run_c", "run", -1, -2),
             ("wave_a", "wave", 2.5, 0.5), ("wave_b", "wave", -3, 0)]
JOB_CLASSES = ["jump", "run", "wave"]


@pytest.fixture(scope="session")
def job_media(tmp_path_factory) -> dict:
    """Real clips and bad inputs for the job (about 6 s to build).

    ``{"dir": folder, "good": [(path, class_name)], "bad": {name: (path, class_name, code)}}``:
    8 good clips of 3 classes, and empty, text, random bytes, HEVC, truncated (moov gone) and
    missing files, with the failure code the job must record for each.
    """
    d = tmp_path_factory.mktemp("job_media")
    good = [(media.make_pan_clip(d / f"{stem}.mp4", vx=vx, vy=vy, num_frames=40), cls)
            for stem, cls, vx, vy in JOB_CLIPS]
    bad = {
        "empty": (media.make_empty_file(d / "empty.mp4"), "jump", "empty"),
        "text": (media.make_text_file(d / "text.mp4"), "run", "not_video"),
        "random_bytes": (media.make_random_bytes_file(d / "random_bytes.mp4"), "wave", "not_video"),
        "hevc": (media.make_hevc_clip(d / "hevc.mp4", num_frames=12), "jump", "unsupported_codec"),
        "truncated": (media.make_truncated_file(good[0][0], d / "truncated.mp4"), "run", "not_video"),
        "missing": (d / "missing.mp4", "wave", "missing"),
    }
    return {"dir": d, "good": good, "bad": bad}


def job_entries(job_media: dict) -> list[tuple[Path, str]]:
    """(path, class name) of every input, good and bad interleaved (bad ones in every shard)."""
    bad = [(path, cls) for path, cls, _ in job_media["bad"].values()]
    entries = []
    for i, item in enumerate(job_media["good"]):
        entries.append(item)
        if i < len(bad):
            entries.append(bad[i])
    return entries


def _write_list(path: Path, entries: list[tuple[Path, str]], integer_labels: bool) -> Path:
    lines = ["# path label"]
    for video, cls in entries:
        label = JOB_CLASSES.index(cls) if integer_labels else cls
        lines.append(f"{os.path.relpath(video, path.parent)} {label}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def job_list_names(job_media) -> Path:
    """List file of 'path label' lines, labels as class names (14 videos, 6 of them bad)."""
    return _write_list(job_media["dir"] / "list_names.txt", job_entries(job_media), False)


@pytest.fixture(scope="session")
def job_list_ints(job_media) -> Path:
    """The same videos as ``job_list_names`` with integer labels (index in JOB_CLASSES)."""
    return _write_list(job_media["dir"] / "list_ints.txt", job_entries(job_media), True)


@pytest.fixture(scope="session")
def job_class_folder(job_media) -> Path:
    """A folder with one subfolder per class (hard links to the clips; the bad files but the
    missing one among them)."""
    root = job_media["dir"] / "by_class"
    for video, cls in job_entries(job_media):
        if video.exists():
            (root / cls).mkdir(parents=True, exist_ok=True)
            os.link(video, root / cls / video.name)
    return root


@pytest.fixture(scope="session")
def job_dataset(job_list_names, cli_runner, tmp_path_factory) -> dict:
    """``mvmae extract run`` of ``job_list_names`` (shard size 3: 5 shards, 8 samples) through
    the CLI: ``{"result": click Result, "out": folder, "list": list file}``. Read-only for tests."""
    from mvmae.cli import main

    out = tmp_path_factory.mktemp("job_dataset") / "shards"
    result = cli_runner.invoke(main, ["extract", "run", str(job_list_names), str(out), "--shard-size", "3"])
    return {"result": result, "out": out, "list": job_list_names}


@pytest.fixture(scope="session")
def job_kill_list(job_media) -> Path:
    """24 videos (the good clips linked under 3 names each) for the kill-and-resume test."""
    d = job_media["dir"] / "kill"
    d.mkdir()
    lines = []
    for k in range(3):
        for video, cls in job_media["good"]:
            link = d / f"{video.stem}_{k}.mp4"
            os.link(video, link)
            lines.append(f"{link.name} {cls}")
    path = d / "list.txt"
    path.write_text("\n".join(lines) + "\n")
    return path
