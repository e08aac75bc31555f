"""Helpers of the extraction fault-injection tests: real clips, the CLI in a real process, what
the output folder shows while a job runs, and the processes of a running job.

Imported by tests/faults/test_extract_*.py, test_bad_corpus.py and test_fuzz_extract.py (fixtures
live in those modules; this one has plain functions).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
except ImportError:  # ... or as the `tests` package
    from tests import media

from job_outputs import count_samples
from mvmae.shards.stream import ShardError
from processes import (group_members, kill_tree, process_group, process_state,  # noqa: F401 (for the tests)
                       wait_for)

CLI = [sys.executable, "-c", "from mvmae.cli import main; main()"]
# An atomic write's temporary file: .<name>.tmp-<host>-<pid>-<tag>.
TEMPORARY = re.compile(r"\.(?P<target>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})")

# Good clips: (stem, class name, vx, vy); 48 frames 144x192, 25 fps, 2 B-frames, GOP 24.
CLIPS = [("jump_a", "jump", 1, 0), ("jump_b", "jump", 2, 1), ("run_a", "run", -2, 1),
         ("run_b", "run", 0, 2), ("wave_a", "wave", 2.5, 0.5), ("wave_b", "wave", -3, 0)]

_built: dict[Path, list[tuple[Path, str]]] = {}


def good_clips(folder: Path) -> list[tuple[Path, str]]:
    """The CLIPS as real H.264 files in ``folder`` (built once per folder): [(path, class)]."""
    if folder not in _built:
        folder.mkdir(parents=True, exist_ok=True)
        _built[folder] = [(media.make_pan_clip(folder / f"{stem}.mp4", vx=vx, vy=vy), cls)
                          for stem, cls, vx, vy in CLIPS]
    return _built[folder]


def linked_list(videos: list[tuple[Path, str]], folder: Path,
                extra: list[tuple[Path, str]] = ()) -> tuple[Path, dict[str, str]]:
    """A list file of hard links to ``videos`` (a video listed again gets a new name, so a new
    key: ``<stem>_<k>``), with the ``extra`` inputs (linked as they are) after every third one.
    Returns the list and its good inputs (resolved link path -> sample key)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, extra, good, seen = [], list(extra), {}, Counter()
    for i, (video, cls) in enumerate(videos):
        link = folder / f"{video.stem}_{seen[video.stem]}{video.suffix}"
        seen[video.stem] += 1
        if not link.exists():
            os.link(video, link)
        lines.append(f"{link.name} {cls}")
        good[str(link.resolve())] = link.stem
        if extra and i % 3 == 1:
            lines.append(_listed(*extra.pop(0), folder))
    lines += [_listed(bad, cls, folder) for bad, cls in extra]
    path = folder / "list.txt"
    path.write_text("\n".join(lines) + "\n")
    return path, good


def _listed(video: Path, cls: str, folder: Path) -> str:
    return f"{os.path.relpath(video, folder)} {cls}"


def check_visible(out: Path, split: str = "train") -> int:
    """What OUT_DIR shows at any moment: complete shards (a stats file only beside its tar, and
    agreeing with it), the job's own files, its locks and hidden temporary files, nothing partial.
    Returns the number of visible shards. Each version of a tar is read whole once (``count_samples``)."""
    allowed = re.compile(rf"{split}-\d{{6}}\.(tar|json)|{split}-(job|faults(-\d+of\d+)?)\.json|"
                         rf"{split}-manifest\.jsonl|classes\.json|\.{split}-(part-\d+of\d+|job)\.lock")
    try:
        names = [p.name for p in out.iterdir()]
    except FileNotFoundError:
        return 0
    for name in names:
        assert allowed.fullmatch(name) or TEMPORARY.fullmatch(name), name
    tars = [out / n for n in names if n.endswith(".tar")]
    for tar in tars:
        try:
            num_keys = count_samples(tar)
        except FileNotFoundError:  # rewritten while we looked (a resumed run redoing it)
            continue
        except ShardError as exc:
            pytest.fail(f"partial shard visible: {exc}")
        try:
            stats = json.loads(tar.with_suffix(".json").read_text())
        except FileNotFoundError:
            continue
        assert stats["num_samples"] == num_keys, tar
    return len(tars)


def temporaries(out: Path) -> list[str]:
    """The temporary files in ``out`` (the hidden files but the locks of a running job)."""
    return sorted(p.name for p in out.glob(".*") if p.suffix != ".lock") if out.exists() else []


def start_job(*args: str, **popen) -> subprocess.Popen:
    """``mvmae extract run ARGS`` in a real process, leader of its own process group; its
    output goes to files (a pipe nobody reads could fill up and stall it): see ``outputs``."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([*CLI, "extract", "run", *args], stdout=out, stderr=err, text=True,
                            start_new_session=True, **popen)
    proc.output_files = (out, err)
    return proc


def outputs(proc: subprocess.Popen) -> tuple[str, str]:
    """Wait for a ``start_job`` process and return its (stdout, stderr)."""
    proc.wait()
    texts = []
    for fh in proc.output_files:
        fh.seek(0)
        texts.append(fh.read())
    return texts[0], texts[1]


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def kill_group(proc: subprocess.Popen) -> None:
    """kill -9 of the job and every process it started; waits until all of them are gone
    (a dying worker still holds its files open for a moment)."""
    kill_tree(proc.pid)
    proc.wait()
    wait_for(lambda: not group_members(proc.pid), 30, f"the processes of job {proc.pid} to exit")


def worker_pids(out: Path, job: subprocess.Popen) -> list[int]:
    """Workers of ``job`` busy on a shard: the pids in the names of their temporary files
    (``.<shard>.tar.tmp-<host>-<pid>-<tag>``) that are alive in the job's process group."""
    pids = set()
    for name in temporaries(out):
        match = TEMPORARY.fullmatch(name)
        if match and match["target"].endswith(".tar") and process_group(int(match["pid"])) == job.pid:
            pids.add(int(match["pid"]))
    return sorted(pids)


def open_video(pid: int, inputs: dict[str, str]) -> str | None:
    """The input video (resolved path) process ``pid`` has open, if any."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target in inputs:
            return target
    return None


def stop_worker_on_a_video(out: Path, job: subprocess.Popen, inputs: dict[str, str],
                           wanted: str | None = None, limit_s: float = 120) -> tuple[int, str]:
    """SIGSTOP a worker of ``job`` while it has an input video open (``wanted`` if given), so
    that it is frozen inside that video's extraction: returns (pid, video path)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and job.poll() is None:
        for pid in worker_pids(out, job):
            if not _on(open_video(pid, inputs), wanted):
                continue
            os.kill(pid, signal.SIGSTOP)
            wait_for(lambda: process_state(pid) in ("T", None), 10, f"{pid} to stop")
            video = open_video(pid, inputs)  # frozen now: it stays on this video
            if _on(video, wanted):
                return pid, video
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError(f"no worker of the job got to {wanted or 'a video'} "
                         f"(job exit status {job.poll()})")


def _on(video: str | None, wanted: str | None) -> bool:
    return video is not None and (wanted is None or video == wanted)


def no_core_dumps() -> None:
    """preexec_fn of jobs whose workers the tests crash: no core files in the working tree."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def faults_of(out: Path, split: str = "train") -> dict:
    """The videos of ``<split>-faults.json`` and of the parts' ``<split>-faults-<i>of<N>.json``
    (key -> record), {} before there is one."""
    videos = {}
    for path in sorted(out.glob(f"{split}-faults*.json")):
        try:
            videos.update(json.loads(path.read_text())["videos"])
        except FileNotFoundError:
            continue
    return videos
