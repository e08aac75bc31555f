"""Faults injected into a running ``mvmae extract run --workers 2``: kill -9 of the whole job at
seeded moments, of single workers, of the parent alone; a worker frozen inside a video (SIGSTOP:
what a hang in FFmpeg or compiled code looks like from outside) and one crashing there (SIGSEGV).

Every test compares with an uninterrupted run of the same list in one process (``workers=0``):
the same samples byte for byte and the same manifest, but for the one video a test hangs or
crashes on purpose, which must be recorded with its code and be the only one missing.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from extract_faults import (check_visible, faults_of, good_clips, group_members,
                            kill_group, linked_list, no_core_dumps, outputs,
                            process_group, process_state, run_cli, start_job,
                            stop_worker_on_a_video, temporaries, wait_for, worker_pids)
from job_outputs import read_manifest, read_samples
from mvmae.job.job import JobConfig, run_job

NUM_SHARDS = 11  # 12 copies of bikes.mp4, 6 short clips and 4 bad files, 2 per shard
SUMMARY = "22 videos: 18 ok, 4 failed; 18 samples in 11 shards"


@pytest.fixture(scope="module")
def kill_inputs(tmp_path_factory, edge_media, bikes_mp4) -> dict:
    """The list (``list``), its good inputs (``good``: resolved path -> key), and what the
    uninterrupted run in one process wrote (``samples``, ``manifest``). bikes.mp4 (10 s, about
    0.2 s to extract) keeps every shard busy long enough for kills to land inside it."""
    d = tmp_path_factory.mktemp("extract_kill")
    clips = good_clips(d / "clips")
    videos = [(bikes_mp4, "ride")] * 12
    for k, clip in enumerate(clips):
        videos.insert(2 * k + 1, clip)
    bad = [(edge_media[name], cls) for name, cls in
           [("empty", "jump"), ("text", "run"), ("hevc", "wave"), ("truncated", "run")]]
    listing, good = linked_list(videos, d / "list", extra=bad)
    run_job(JobConfig(input=listing, out_dir=d / "reference", shard_size=2, workers=0))
    assert len(good) == 18
    return {"list": listing, "good": good, "samples": read_samples(d / "reference"),
            "manifest": read_manifest(d / "reference")}


def job_args(kill_inputs: dict, out, *extra: str) -> list[str]:
    return [str(kill_inputs["list"]), str(out), "--workers", "2", "--shard-size", "2", *extra]


def watch(job, out, until=lambda: False) -> None:
    """Poll the folder while ``job`` runs (nothing partial may ever show) until ``until()``."""
    while job.poll() is None and not until():
        check_visible(out)
        time.sleep(0.01)


def finish(job, out) -> tuple[str, str]:
    watch(job, out)
    stdout, stderr = outputs(job)
    assert job.returncode == 0, stderr
    return stdout, stderr


def assert_uninterrupted(kill_inputs: dict, out, victim: str | None = None) -> list[dict]:
    """The folder holds what the uninterrupted run wrote, but for ``victim`` (a key), missing
    from the samples; returns the manifest records that differ (the victim's)."""
    assert check_visible(out) == NUM_SHARDS
    assert temporaries(out) == []
    samples = read_samples(out)  # each key at most once (read_samples asserts it)
    expected = {k: v for k, v in kill_inputs["samples"].items() if k != victim}
    assert samples == expected
    manifest, reference = read_manifest(out), kill_inputs["manifest"]
    assert len(manifest) == len(reference)
    differ = [m for m, r in zip(manifest, reference) if m != r]
    assert [m["key"] for m in differ] == ([victim] if victim else [])
    return differ


@pytest.mark.slow
def test_kill_9_of_the_whole_job_then_rerun(kill_inputs, tmp_path) -> None:
    """Five kill -9 of the process group at seeded moments (when N shards are visible, plus a
    random delay: during start-up, mid-shard, between a tar and its stats), each followed by the
    same command; finally one that is left to finish."""
    out = tmp_path / "out"
    rng = random.Random(20240607)
    interrupted = []
    for threshold in sorted(rng.sample(range(0, NUM_SHARDS), 5)):
        job = start_job(*job_args(kill_inputs, out))
        try:
            watch(job, out, lambda: check_visible(out) >= threshold)
            delay_end = time.monotonic() + rng.uniform(0.0, 0.15)
            watch(job, out, lambda: time.monotonic() > delay_end)
        finally:
            killed = job.poll() is None
            kill_group(job)
        if killed:
            interrupted.append(check_visible(out))
    assert sum(0 < n < NUM_SHARDS for n in interrupted) >= 2, interrupted
    stdout, _ = finish(start_job(*job_args(kill_inputs, out)), out)
    assert SUMMARY in stdout
    assert_uninterrupted(kill_inputs, out)
    # A kill of the whole job blames no video: nothing is skipped on later runs.
    assert not any(v["timeouts"] for v in faults_of(out).values())


@pytest.mark.slow
def test_kill_9_of_single_workers(kill_inputs, tmp_path) -> None:
    """Five kill -9 of one worker each, at seeded moments: the job replaces the worker, redoes
    the shard and finishes by itself with every video (retries 5: no video can be given up)."""
    out = tmp_path / "out"
    rng = random.Random(99)
    job = start_job(*job_args(kill_inputs, out, "--retries", "5"))
    killed = []
    try:
        while len(killed) < 5 and job.poll() is None:
            pids = worker_pids(out, job)
            if not pids:
                watch(job, out, lambda: bool(worker_pids(out, job)))
                continue
            delay_end = time.monotonic() + rng.uniform(0.0, 0.2)
            watch(job, out, lambda: time.monotonic() > delay_end)
            pid = rng.choice(pids)
            if process_group(pid) == job.pid:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                wait_for(lambda: process_state(pid) in (None, "Z"), 30, f"worker {pid} to die")
        stdout, stderr = finish(job, out)
    finally:
        kill_group(job)
    assert len(killed) == 5, "the job ended before five workers were killed"
    assert SUMMARY in stdout
    # Each kill of a busy worker is reported once (one that had just finished its last shard
    # had nothing in hand); a kill inside a video counts against that video in the faults file.
    deaths = stderr.count("killed by SIGKILL")
    assert 1 <= deaths <= 5, stderr
    # each is a shard redone, which the summary names (the progress bar went back by its videos)
    assert f"{deaths} shard(s) redone after a lost worker" in stdout, stdout
    in_video = stderr.count("the worker extracting it died (killed by SIGKILL)")
    assert sum(v["deaths"] for v in faults_of(out).values()) == in_video
    assert_uninterrupted(kill_inputs, out)
    rerun = run_cli("extract", "run", *job_args(kill_inputs, out))
    assert rerun.returncode == 0 and "(0 written, 11 already complete)" in rerun.stdout


@pytest.mark.slow
def test_kill_9_of_the_parent_alone_stops_its_workers(kill_inputs, tmp_path) -> None:
    """kill -9 of the job's own process only: its workers die with it (no orphan goes on
    writing), and the same command finishes the job."""
    out = tmp_path / "out"
    job = start_job(*job_args(kill_inputs, out))
    try:
        watch(job, out, lambda: bool(worker_pids(out, job)))
        assert worker_pids(out, job), "no worker started"
        os.kill(job.pid, signal.SIGKILL)
        job.wait()
        wait_for(lambda: not group_members(job.pid), 30, "the workers to exit")
    finally:
        kill_group(job)
    finish(start_job(*job_args(kill_inputs, out)), out)
    assert_uninterrupted(kill_inputs, out)


@pytest.mark.slow
def test_hung_video_is_recorded_timeout_and_never_tried_again(kill_inputs, tmp_path) -> None:
    """A worker frozen inside a video is killed once the video has taken --video-timeout; the
    video is recorded 'timeout' in the faults file at once, so a run killed right then (kill -9
    of the whole job) and started again skips it: it ends failed with code 'timeout', every
    other video as in the uninterrupted run."""
    out = tmp_path / "out"
    # 10 s: well above a good video's time on a loaded 2-core machine (4 s once killed one there)
    args = job_args(kill_inputs, out, "--video-timeout", "10")
    job = start_job(*args)
    try:
        pid, video = stop_worker_on_a_video(out, job, kill_inputs["good"])
        key = kill_inputs["good"][video]
        wait_for(lambda: faults_of(out).get(key, {}).get("timeouts"), 120, f"{key} recorded")
        wait_for(lambda: process_state(pid) in (None, "Z"), 30, "the frozen worker to be killed")
    finally:
        kill_group(job)
    check_visible(out)
    stdout, stderr = finish(start_job(*args), out)
    assert "still extracting" not in stderr  # the rerun did not try the video again
    assert "  failed:      1  timeout" in stdout
    (record,) = assert_uninterrupted(kill_inputs, out, victim=key)
    assert (record["status"], record["code"], record["keys"]) == ("failed", "timeout", [])
    assert "10 s" in record["reason"] and "killed" in record["reason"]
    assert faults_of(out)[key]["source"] == record["source"]


@pytest.mark.slow
def test_crashing_video_is_tried_again_then_recorded_crashed(kill_inputs, tmp_path) -> None:
    """A worker dies by SIGSEGV inside a video: the video is tried once more (--retries 1) by a
    fresh worker; when that one dies on it too, the video is recorded 'crashed' and the job
    finishes without it."""
    out = tmp_path / "out"
    job = start_job(*job_args(kill_inputs, out, "--retries", "1"), preexec_fn=no_core_dumps)
    try:
        pid, video = stop_worker_on_a_video(out, job, kill_inputs["good"])
        key = kill_inputs["good"][video]
        for death in (1, 2):
            os.kill(pid, signal.SIGSEGV)
            os.kill(pid, signal.SIGCONT)
            wait_for(lambda: faults_of(out).get(key, {}).get("deaths") == death, 60, f"death {death}")
            if death == 1:
                pid, _ = stop_worker_on_a_video(out, job, kill_inputs["good"], wanted=video)
        stdout, stderr = finish(job, out)
    finally:
        kill_group(job)
    assert stderr.count("killed by SIGSEGV") == 2, stderr
    assert "  failed:      1  crashed" in stdout
    (record,) = assert_uninterrupted(kill_inputs, out, victim=key)
    assert (record["status"], record["code"], record["keys"]) == ("failed", "crashed", [])
    assert "died 2 times" in record["reason"] and "SIGSEGV" in record["reason"]
