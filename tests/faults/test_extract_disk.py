"""``mvmae extract run`` when the output cannot be written: a full disk (a small tmpfs: ENOSPC),
a file-size limit (RLIMIT_FSIZE: EFBIG, needs no privileges, so it runs everywhere) and a
read-only output folder (tmpfs remounted read-only as root, chmod 0555 otherwise: EROFS/EACCES).

Each time: exit status 1 with one line naming the file and the reason, complete shards only (no
partial one, no temporary file after a write that failed), and the same command, once the cause
is gone, finishes the job with the samples of an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import time
from pathlib import Path

import pytest

from extract_faults import (check_visible, good_clips, kill_group, linked_list, outputs,
                            start_job, temporaries, worker_pids)
from job_outputs import read_manifest, read_samples
from mvmae.job.job import JobConfig, run_job

NUM_SHARDS = 8  # 12 short clips, bikes.mp4 and 2 bad files, 2 per shard


@pytest.fixture(scope="module")
def disk_inputs(tmp_path_factory, edge_media, bikes_mp4) -> dict:
    """The list, and what the uninterrupted run in one process wrote (``samples``, ``manifest``,
    shard ``sizes`` in bytes). The shard with bikes.mp4 is several times larger than the others."""
    d = tmp_path_factory.mktemp("extract_disk")
    clips = good_clips(d / "clips")
    videos = clips + clips[:4] + [(bikes_mp4, "ride")] + clips[4:]
    bad = [(edge_media["empty"], "jump"), (edge_media["random_bytes"], "run")]
    listing, _ = linked_list(videos, d / "list", extra=bad)
    reference = d / "reference"
    run_job(JobConfig(input=listing, out_dir=reference, shard_size=2, workers=0))
    sizes = sorted(p.stat().st_size for p in reference.glob("train-*.tar"))
    assert len(sizes) == NUM_SHARDS and sizes[-1] > 3 * sizes[-2], sizes
    return {"list": listing, "samples": read_samples(reference), "manifest": read_manifest(reference),
            "sizes": sizes}


class Tmpfs:
    """A tmpfs mounted at ``path`` (needs mount privileges: root, CAP_SYS_ADMIN)."""

    def __init__(self, path, size: str) -> None:
        self.path = path
        path.mkdir()
        self._mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs")

    def remount(self, options: str) -> None:
        """Remount with ``options``; a read-only remount is refused while a file there is open
        for writing: tried again for a while (the closes of just-killed processes), then the
        error names the processes that still hold files there."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return self._mount("-o", f"remount,{options}")
            except OSError as exc:
                if "busy" not in str(exc) or time.monotonic() > deadline:
                    raise OSError(f"{exc} (files open there: {self.holders() or 'none'})") from None
                time.sleep(0.1)

    def holders(self) -> list[str]:
        """'pid: file' for every file under the mount point a process has open."""
        found = []
        for fd in Path("/proc").glob("[0-9]*/fd/*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(f"{self.path}{os.sep}"):
                found.append(f"{fd.parts[2]}: {target}")
        return found

    def _mount(self, *args: str) -> None:
        result = subprocess.run(["mount", *args, str(self.path)], capture_output=True, text=True)
        if result.returncode:
            raise OSError(f"mount {' '.join(args)} {self.path}: {result.stderr.strip()}")

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    """``make(size) -> Tmpfs``; unmounted after the test. Skips, saying why, where this
    machine lets nobody mount (the file-size-limit case then still covers a failing write)."""
    mounted = []

    def make(size: str) -> Tmpfs:
        try:
            mounted.append(Tmpfs(tmp_path / f"disk{len(mounted)}", size))
        except (OSError, FileNotFoundError) as exc:
            pytest.skip(f"cannot mount a tmpfs here ({exc}); test_file_size_limit covers a "
                        "write that fails without privileges")
        return mounted[-1]

    yield make
    for fs in mounted:
        fs.unmount()


def job_args(disk_inputs: dict, out, workers: int) -> list[str]:
    return [str(disk_inputs["list"]), str(out), "--workers", str(workers), "--shard-size", "2"]


def run_watched(args: list[str], out, **popen) -> tuple[int, str, str]:
    """Run the job, checking the folder while it runs (nothing partial may ever show)."""
    job = start_job(*args, **popen)
    try:
        while job.poll() is None:
            check_visible(out)
            time.sleep(0.01)
    finally:
        kill_group(job)
    stdout, stderr = outputs(job)
    return job.returncode, stdout, stderr


def assert_one_line_error(stderr: str, out, reason: str, action: str) -> str:
    """The job's error, no traceback: one line 'error: cannot write <path in out>: <reason>;
    <action>, then run the same command again (complete shards are kept)'."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert re.fullmatch(rf"error: cannot write {re.escape(f'{out}{os.sep}')}[^/]+: {re.escape(reason)}; "
                        rf"{re.escape(action)}, then run the same command again \(complete shards are "
                        r"kept\)", errors[0]), errors[0]
    assert "Traceback" not in stderr
    return errors[0]


def assert_finished(disk_inputs: dict, out) -> None:
    assert check_visible(out) == NUM_SHARDS
    assert temporaries(out) == []
    assert read_samples(out) == disk_inputs["samples"]
    assert read_manifest(out) == disk_inputs["manifest"]


@pytest.mark.slow
def test_full_disk_then_rerun_after_space_is_freed(disk_inputs, tmpfs) -> None:
    """A tmpfs with room for a few shards fills up mid-job."""
    workers = 2
    disk = tmpfs(f"{disk_inputs['sizes'][-1] // 1024}k")  # less than the shards need together
    out = disk.path / "shards"
    status, _, stderr = run_watched(job_args(disk_inputs, out, workers), out)
    assert status == 1
    assert_one_line_error(stderr, out, "No space left on device (ENOSPC)", "free space")
    assert temporaries(out) == []  # the shard that did not fit was removed
    assert check_visible(out) < NUM_SHARDS
    disk.remount("size=64m")
    status, stdout, stderr = run_watched(job_args(disk_inputs, out, workers), out)
    assert status == 0, stderr
    assert "15 videos: 13 ok, 2 failed; 13 samples in 8 shards" in stdout
    assert_finished(disk_inputs, out)


def _limit_file_size(num_bytes: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (num_bytes, num_bytes))
    return preexec


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 0])
def test_file_size_limit_then_rerun_without_it(disk_inputs, tmp_path, workers) -> None:
    """RLIMIT_FSIZE below the size of the bikes shard (Python ignores SIGXFSZ, so the write
    fails with EFBIG): the small shards are written, that one is refused; in worker processes
    and in the job's own process (``--workers 0``) alike."""
    out = tmp_path / "shards"
    limit = 2 * disk_inputs["sizes"][-2]
    status, _, stderr = run_watched(job_args(disk_inputs, out, workers), out,
                                    preexec_fn=_limit_file_size(limit))
    assert status == 1
    line = assert_one_line_error(stderr, out, "File too large (EFBIG)",
                                 "raise the file-size limit (ulimit -f)")
    assert ".tar: File too large" in line
    assert temporaries(out) == []
    assert check_visible(out) < NUM_SHARDS
    status, _, stderr = run_watched(job_args(disk_inputs, out, workers), out)
    assert status == 0, stderr
    assert_finished(disk_inputs, out)


@pytest.mark.slow
def test_read_only_output_folder_then_rerun_once_writable(disk_inputs, tmpfs, tmp_path) -> None:
    """A job killed mid-way (kill -9) leaves complete shards and hidden temporary files; the
    folder then turns read-only (a read-only remount as root, chmod 0555 otherwise): the next
    run stops at its first write with EROFS / EACCES; once writable again it finishes."""
    if os.geteuid() == 0:  # root writes through file modes: only a read-only mount stops it
        disk = tmpfs("64m")
        out = disk.path / "shards"
        lock, unlock, reason = (lambda: disk.remount("ro"), lambda: disk.remount("rw"),
                                "Read-only file system (EROFS)")
    else:
        disk, out = None, tmp_path / "shards"
        lock, unlock, reason = (lambda: out.chmod(0o555), lambda: out.chmod(0o755),
                                "Permission denied (EACCES)")
    job = start_job(*job_args(disk_inputs, out, 2))
    try:
        while job.poll() is None and not (check_visible(out) >= 2 and worker_pids(out, job)):
            time.sleep(0.01)
    finally:
        kill_group(job)
    visible = check_visible(out)
    assert 2 <= visible < NUM_SHARDS and temporaries(out), "the first run was not cut mid-job"
    lock()
    status, _, stderr = run_watched(job_args(disk_inputs, out, 2), out)
    assert status == 1
    assert_one_line_error(stderr, out, reason, "make the folder writable")
    assert check_visible(out) == visible
    unlock()
    status, _, stderr = run_watched(job_args(disk_inputs, out, 2), out)
    assert status == 0, stderr
    assert_finished(disk_inputs, out)
