"""The parts of one ``mvmae extract run`` job (``--part i/N``) in one shared output folder, as a
SLURM array or a Kubernetes indexed job runs them: two parts at once, one of them on "another
machine" (a process in its own UTS and PID namespaces: another host name, other process ids);
the same part started twice (a requeue while the first still runs); workers crashing in two
parts at once. Each time the folder ends with what one uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest

from extract_faults import (CLI, check_visible, faults_of, good_clips, kill_group, linked_list,
                            no_core_dumps, outputs, run_cli, start_job, stop_worker_on_a_video,
                            temporaries, wait_for)
from job_outputs import read_manifest, read_samples
from mvmae.job.job import JobConfig, run_job
from mvmae.shards.writer import temporary_path

pytestmark = pytest.mark.slow
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def parts_inputs(tmp_path_factory, bikes_mp4) -> dict:
    """10 videos in 5 shards of 2 (part 0/2: shards 0, 2, 4; part 1/2: shards 1, 3), bikes.mp4
    (about 0.2 s to extract) between the short clips; what one run in one process wrote."""
    d = tmp_path_factory.mktemp("extract_parts")
    videos = []
    for clip in good_clips(d / "clips")[:5]:
        videos += [clip, (bikes_mp4, "ride")]
    listing, good = linked_list(videos, d / "list")
    reference = d / "reference"
    run_job(JobConfig(input=listing, out_dir=reference, shard_size=2, workers=0))
    return {"list": listing, "good": good, "reference": reference,
            "samples": read_samples(reference), "manifest": read_manifest(reference)}


def job_args(inputs: dict, out, *extra: str) -> list[str]:
    return [str(inputs["list"]), str(out), "--shard-size", "2", *extra]


def finish(job) -> str:
    """Wait for a ``start_job`` process; its stdout (it must succeed)."""
    try:
        stdout, stderr = outputs(job)
    finally:
        kill_group(job)
    assert job.returncode == 0, stderr
    return stdout


def assert_one_dataset(inputs: dict, out, victims: set[str] = frozenset()) -> list[dict]:
    """``out`` holds what the uninterrupted run wrote (but the ``victims``' samples), and no
    hidden file (temporary file or lock); returns the manifest records that differ."""
    assert check_visible(out) == 5
    assert sorted(p.name for p in out.glob(".*")) == []
    assert read_samples(out) == {k: v for k, v in inputs["samples"].items() if k not in victims}
    manifest = read_manifest(out)
    assert len(manifest) == len(inputs["manifest"])
    differ = [m for m, r in zip(manifest, inputs["manifest"]) if m != r]
    assert {m["key"] for m in differ} == victims
    return differ


def _other_machine() -> list[str]:
    """The command prefix that runs a command as on another machine (host 'other-machine', its
    own process ids); skips where this machine allows no such namespaces."""
    prefix = ["unshare", "--user", "--map-root-user", "--uts", "--pid", "--fork",
              "sh", "-c", 'hostname other-machine && exec "$@"', "sh"]
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here to run a process as on another machine")
    probe = subprocess.run([*prefix, "hostname"], capture_output=True, text=True, timeout=30)
    if probe.returncode or probe.stdout.strip() != "other-machine":
        pytest.skip(f"cannot make UTS/PID namespaces here: {probe.stderr.strip()}")
    return prefix


def test_two_parts_at_once_from_two_machines_write_one_dataset(parts_inputs, tmp_path) -> None:
    """Part 0/2 here, part 1/2 on another machine, at once into one folder, while a process of
    this machine is writing classes.json: the other machine's part leaves that write alone (its
    process ids say nothing about this machine's), both parts finish, and the folder holds the
    uninterrupted run's dataset, manifest included (the last part to finish lists every shard)."""
    elsewhere = _other_machine()
    out = tmp_path / "out"
    out.mkdir()
    pending = temporary_path(out / "classes.json")  # a write in flight on this machine
    pending.write_bytes((parts_inputs["reference"] / "classes.json").read_bytes())
    here = start_job(*job_args(parts_inputs, out, "--part", "0/2", "--workers", "1"))
    err = tempfile.TemporaryFile("w+")
    there = subprocess.Popen([*elsewhere, *CLI, "extract", "run",
                              *job_args(parts_inputs, out, "--part", "1/2", "--workers", "1")],
                             stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=True)
    try:
        there.wait(timeout=300)
        err.seek(0)
        assert there.returncode == 0, err.read()
        finish(here)
    finally:
        kill_group(there)
        kill_group(here)
    os.replace(pending, out / "classes.json")  # the write in flight completes
    assert_one_dataset(parts_inputs, out)
    assert sorted(p.name for p in out.glob("train-faults*")) == []


def test_the_same_part_started_twice_is_refused(parts_inputs, tmp_path) -> None:
    """A requeued part started while the first run of it still works: refused with one line
    naming the folder, the part and the running process; the first run finishes undisturbed."""
    out = tmp_path / "out"
    args = job_args(parts_inputs, out, "--workers", "1")
    first = start_job(*args)
    try:
        wait_for(lambda: (out / "train-job.json").exists() or first.poll() is not None, 120,
                 "the first run to start")
        os.killpg(first.pid, signal.SIGSTOP)  # so that it surely runs while the second starts
        try:
            assert first.poll() is None, "the first run ended before the second started"
            second = run_cli("extract", "run", *args, timeout=120)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        stdout = finish(first)
    finally:
        kill_group(first)
    assert second.returncode == 1, second.stdout
    errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {out}: part 0/1 of this job is running there already (pid {first.pid} "
                      f"on {HOST}); wait for it to end or stop it"], second.stderr
    assert "Traceback" not in second.stderr
    assert "10 videos: 10 ok, 0 failed; 10 samples in 5 shards (5 written" in stdout
    assert_one_dataset(parts_inputs, out)
    rerun = run_cli("extract", "run", *args)  # the lock went with the first run
    assert rerun.returncode == 0 and "(0 written, 5 already complete)" in rerun.stdout, rerun.stderr


def test_workers_crashing_in_two_parts_at_once_are_both_remembered(parts_inputs, tmp_path) -> None:
    """A worker of each of two running parts dies inside a video (SIGSEGV, --retries 0): each
    part records its video in its own fault file, neither record is lost, and each video ends
    failed 'crashed' in the manifest, every other video as in the uninterrupted run."""
    out = tmp_path / "out"
    parts, stopped = [], []
    try:
        # Part 1, then part 0, each frozen on a video (so past reading the fault files) before
        # either worker dies; part 0's record comes first, part 1's in a process that read none.
        for i in (1, 0):
            parts.append(start_job(*job_args(parts_inputs, out, "--part", f"{i}/2", "--workers", "1",
                                             "--retries", "0"), preexec_fn=no_core_dumps))
            stopped.append(stop_worker_on_a_video(out, parts[-1], parts_inputs["good"]))
        victims = {}
        for i, (pid, video) in zip((0, 1), reversed(stopped)):
            key = parts_inputs["good"][video]
            os.kill(pid, signal.SIGSEGV)
            os.kill(pid, signal.SIGCONT)
            wait_for(lambda: faults_of(out).get(key, {}).get("deaths") == 1, 60, f"{key} recorded")
            victims[key] = i
        for part in parts:
            finish(part)
    finally:
        for part in parts:
            kill_group(part)
    assert {key: v["deaths"] for key, v in faults_of(out).items()} == {key: 1 for key in victims}
    for key, i in victims.items():  # each part's file holds its own record only
        assert list(json.loads((out / f"train-faults-{i}of2.json").read_text())["videos"]) == [key]
    differ = assert_one_dataset(parts_inputs, out, set(victims))
    assert {(m["status"], m["code"]) for m in differ} == {("failed", "crashed")}
    assert temporaries(out) == []
