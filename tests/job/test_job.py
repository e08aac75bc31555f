"""``mvmae extract run``: outcomes per video, files of a dataset, segments, parts, resume, kill -9."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mvmae.cli import main
from mvmae.extract.export import load_export
from mvmae.job.job import JobConfig, run_job
from mvmae.shards.sample import FORMAT_VERSION, RECORD, decode_sample
from mvmae.shards.stream import ShardError

from job_outputs import count_samples, read_manifest, read_samples

CLASSES = ["jump", "run", "wave"]  # of the videos of the job_media fixture (conftest.py)
NUM_GOOD, NUM_BAD = 8, 6
FAILURE_CODES = {"not_video": 3, "empty": 1, "missing": 1, "unsupported_codec": 1}
CLI = [sys.executable, "-c", "from mvmae.cli import main; main()"]
TEMPORARY = re.compile(r"\..+\.tmp-.+-\d+-[0-9a-f]{8}")  # .<name>.tmp-<host>-<pid>-<tag>
LOCK = re.compile(r"\.train-(part-\d+of\d+|job)\.lock")  # a running part's, the job's files'


def check_outcomes(out: Path, job_media: dict) -> None:
    """Manifest, stats files and shards agree with what each input video is."""
    manifest = read_manifest(out)
    assert len(manifest) == NUM_GOOD + NUM_BAD
    by_name = {Path(v["source"]).name: v for v in manifest}
    for name, (path, cls, code) in job_media["bad"].items():
        v = by_name[path.name]
        assert (v["status"], v["code"], v["keys"]) == ("failed", code, []), name
        assert v["reason"] and v["class_name"] == cls
    for path, cls in job_media["good"]:
        v = by_name[path.name]
        assert (v["status"], v["code"], v["keys"]) == ("ok", "", [path.stem])
        assert v["label"] == CLASSES.index(cls) and v["class_name"] == cls
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("train-[0-9]*.json"))]
    assert [s["shard"] for s in stats] == [p.stem for p in sorted(out.glob("*.tar"))]
    assert sum(s["num_videos"] for s in stats) == NUM_GOOD + NUM_BAD
    assert sum(s["num_samples"] for s in stats) == NUM_GOOD
    assert sum(s["num_frames"] for s in stats) == NUM_GOOD * 40
    assert sum((Counter(s["failures_by_code"]) for s in stats), Counter()) == FAILURE_CODES
    for s in stats:
        assert s["bytes"] == (out / f"{s['shard']}.tar").stat().st_size
    records = {k: json.loads(s[RECORD]) for k, s in read_samples(out).items()}
    assert sorted(records) == sorted(p.stem for p, _ in job_media["good"])
    for path, cls in job_media["good"]:
        r = records[path.stem]
        assert (r["class_name"], r["label"], r["num_frames"]) == (cls, CLASSES.index(cls), 40)
        assert r["segment"] == {"index": 0, "start": 0, "num_segments": 1}


def test_run_list_with_class_names(job_dataset, job_media) -> None:
    result, out = job_dataset["result"], job_dataset["out"]
    assert result.exit_code == 0, result.stderr
    assert re.search(rf"^{NUM_GOOD + NUM_BAD} videos: {NUM_GOOD} ok, {NUM_BAD} failed; {NUM_GOOD} "
                     r"samples in 5 shards \(5 written, 0 already complete\)", result.stdout, re.M)
    reported = {code: int(n) for n, code in re.findall(r"failed:\s+(\d+)\s+(\w+)", result.stdout)}
    assert reported == FAILURE_CODES
    assert json.loads((out / "classes.json").read_text()) == CLASSES
    job = json.loads((out / "train-job.json").read_text())
    assert (job["shard_size"], job["split"], job["format_version"]) == (3, "train", FORMAT_VERSION)
    check_outcomes(out, job_media)


def test_run_list_with_integer_labels(job_list_ints, job_media, tmp_path) -> None:
    summary = run_job(JobConfig(input=job_list_ints, out_dir=tmp_path, shard_size=4))
    assert (summary.num_videos, summary.num_ok, summary.num_failed) == (NUM_GOOD + NUM_BAD, NUM_GOOD, NUM_BAD)
    assert summary.failures_by_code == FAILURE_CODES
    assert (summary.num_shards, summary.shards_written, summary.num_samples) == (4, 4, NUM_GOOD)
    # Integer labels are class indices; their names are the numbers.
    assert json.loads((tmp_path / "classes.json").read_text()) == ["0", "1", "2"]
    for key, sample in read_samples(tmp_path).items():
        cls = {path.stem: c for path, c in job_media["good"]}[key]
        record = json.loads(sample[RECORD])
        assert record["label"] == int(sample["cls"]) == CLASSES.index(cls)
        assert record["class_name"] == str(CLASSES.index(cls))


def test_run_class_folder(job_class_folder, tmp_path, cli_runner) -> None:
    result = cli_runner.invoke(main, ["extract", "run", str(job_class_folder), str(tmp_path),
                                      "--shard-size", "5", "--workers", "2"])
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "classes.json").read_text()) == CLASSES
    manifest = read_manifest(tmp_path)
    assert len(manifest) == NUM_GOOD + NUM_BAD - 1  # the missing file is not in the folder
    for v in manifest:  # sources are relative to the folder, class folder first
        assert v["source"] == f"{v['class_name']}/{Path(v['source']).name}"
    assert Counter(v["code"] for v in manifest if v["status"] == "failed") == \
        {"not_video": 3, "empty": 1, "unsupported_codec": 1}
    assert len(read_samples(tmp_path)) == NUM_GOOD


def test_max_seconds_cuts_long_video(job_media, pan_clip_factory, tmp_path, cli_runner) -> None:
    """--max-seconds 1 at 25 fps: 25-frame segments; the 60-frame clip (I-frames at 0, 24, 48)
    gives 25 + 25 + 10 frames, the 40-frame one 25 + 15."""
    long_clip = pan_clip_factory(vx=2, vy=1, num_frames=60)
    short = job_media["good"][0][0]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{long_clip} run\n{short} jump\n")
    result = cli_runner.invoke(main, ["extract", "run", str(listing), str(tmp_path / "out"),
                                      "--max-seconds", "1", "--workers", "0"])
    assert result.exit_code == 0, result.stderr
    assert "2 videos: 2 ok, 0 failed; 5 samples in 1 shards" in result.stdout
    samples = read_samples(tmp_path / "out")
    key = long_clip.stem
    assert sorted(samples) == sorted([f"{key}_0", f"{key}_1", f"{key}_2", f"{short.stem}_0", f"{short.stem}_1"])
    segments = [decode_sample({"__key__": f"{key}_{k}", **samples[f"{key}_{k}"]}) for k in range(3)]
    assert [s.num_frames for s in segments] == [25, 25, 10]
    assert [s.record["segment"] for s in segments] == [
        {"index": k, "start": start, "num_segments": 3} for k, start in enumerate([0, 25, 50])]
    # A segment that does not start on an I-frame carries the latest earlier one (negative index).
    assert [s.iframe_index.tolist() for s in segments] == [[0, 24], [-1, 23], [-2]]
    assert [len(s.iframes) for s in segments] == [2, 2, 1]
    assert all(s.record["source"] == str(long_clip) for s in segments)
    manifest = {Path(v["source"]).stem: v for v in read_manifest(tmp_path / "out")}
    assert manifest[key]["keys"] == [f"{key}_0", f"{key}_1", f"{key}_2"]
    assert manifest[short.stem]["keys"] == [f"{short.stem}_0", f"{short.stem}_1"]


def test_parts_are_disjoint_and_cover_every_video(job_list_names, job_media, tmp_path) -> None:
    """--part i/3 on three machines (folders): each video in exactly one part, shards and keys disjoint.
    (In this process: the plan, not the worker processes, decides the parts; a spawned worker per
    part would cost its start-up.)"""
    outs = [tmp_path / f"part{i}" for i in range(3)]
    for i, out in enumerate(outs):
        summary = run_job(JobConfig(input=job_list_names, out_dir=out, shard_size=2, part_index=i,
                                    num_parts=3, workers=0))
        assert summary.num_shards == len(range(i, 7, 3))  # 14 videos in 7 shards, shard j in part j % 3
    shard_names = [{p.name for p in out.glob("*.tar")} for out in outs]
    keys = [set(read_samples(out)) for out in outs]
    sources = [[v["source"] for v in read_manifest(out)] for out in outs]
    for a in range(3):
        assert shard_names[a] == {f"train-{j:06d}.tar" for j in range(a, 7, 3)}
        for b in range(a + 1, 3):
            assert not shard_names[a] & shard_names[b] and not keys[a] & keys[b]
            assert not set(sources[a]) & set(sources[b])
    assert sorted(s for part in sources for s in part) == sorted(
        line.rsplit(maxsplit=1)[0] for line in job_list_names.read_text().splitlines()[1:])
    assert set().union(*keys) == {p.stem for p, _ in job_media["good"]}


def test_rerun_of_finished_job_writes_nothing(job_dataset, tmp_path, cli_runner) -> None:
    out = tmp_path / "shards"
    shutil.copytree(job_dataset["out"], out)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("train-[0-9]*")}
    result = cli_runner.invoke(main, ["extract", "run", str(job_dataset["list"]), str(out), "--shard-size", "3"])
    assert result.exit_code == 0, result.stderr
    assert "5 shards (0 written, 5 already complete)" in result.stdout
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("train-[0-9]*")} == before
    assert not list(out.glob(".*"))  # no temporary files left


def test_different_job_in_same_folder_is_refused(job_dataset, tmp_path, cli_runner) -> None:
    out = tmp_path / "shards"
    shutil.copytree(job_dataset["out"], out)
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    result = cli_runner.invoke(main, ["extract", "run", str(job_dataset["list"]), str(out), "--shard-size", "4"])
    assert result.exit_code == 1
    # One line; the empty progress bar that the command draws first goes to stderr as well.
    lines = [line for line in result.stderr.splitlines() if line.strip() and "video [" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "different job" in lines[0], result.stderr
    assert str(out) in lines[0] and "Traceback" not in result.stderr
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before
    # Another split in the same folder is a different job and is allowed (extracted in this process).
    result = cli_runner.invoke(main, ["extract", "run", str(job_dataset["list"]), str(out),
                                      "--shard-size", "4", "--split", "other", "--workers", "0"])
    assert result.exit_code == 0, result.stderr
    assert len(list(out.glob("other-[0-9]*.tar"))) == 4


def test_export_of_a_shard_sample_matches_extract_video(job_dataset, job_media, tmp_path, cli_runner) -> None:
    """extract run -> shards export gives what extract video gives, within the quantization."""
    video, cls = job_media["good"][3]
    ref_path, exp_path = tmp_path / "ref.npz", tmp_path / "exp.npz"
    result = cli_runner.invoke(main, ["extract", "video", str(video), "--out", str(ref_path)])
    assert result.exit_code == 0, result.stderr
    urls = str(job_dataset["out"] / "train-{000000..000004}.tar")
    result = cli_runner.invoke(main, ["shards", "export", urls, "--key", video.stem, "--out", str(exp_path)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{video.stem}: 40 frames")
    ref, exp = load_export(ref_path), load_export(exp_path)
    np.testing.assert_array_equal(exp.valid, ref.valid)
    np.testing.assert_array_equal(exp.frame_types, ref.frame_types)
    valid = np.broadcast_to(ref.valid[:, None], ref.mv.shape)  # (T, 2, h, w)
    assert ref.valid.mean() > 0.5
    assert np.abs(exp.mv - ref.mv)[valid].max() <= 0.125 + 1e-6
    assert not exp.mv[~valid].any()
    np.testing.assert_array_equal(exp.iframe_index, ref.iframe_index)
    assert exp.iframes.shape == ref.iframes.shape and len(ref.iframes) == 2
    assert np.abs(exp.iframes.astype(float) - ref.iframes).mean() < 3
    assert (exp.grid, exp.fps, exp.size) == (ref.grid, ref.fps, ref.size)
    assert exp.meta["method"] == ref.meta["method"] == "resolved"
    assert exp.meta["source"] == os.path.relpath(video, job_dataset["list"].parent)  # as listed
    assert exp.meta["label"] == CLASSES.index(cls)
    assert (exp.meta["segment"], exp.meta["num_segments"]) == (0, 1)


def check_visible(out: Path) -> int:
    """What a killed job leaves in OUT_DIR: complete shards (a stats file only beside a complete
    tar) and hidden temporary files, nothing partial. Returns the number of visible shards."""
    allowed = re.compile(r"train-\d{6}\.(tar|json)|train-job\.json|train-manifest\.jsonl|classes\.json")
    names = [p.name for p in out.iterdir()] if out.exists() else []
    for name in names:
        assert allowed.fullmatch(name) or TEMPORARY.fullmatch(name) or LOCK.fullmatch(name), name
    tars = [out / n for n in names if n.endswith(".tar")]
    for tar in tars:  # each version of a tar read whole once (count_samples)
        try:
            num_samples = count_samples(tar)
        except ShardError as exc:
            pytest.fail(f"partial shard visible: {exc}")
        stats_path = tar.with_suffix(".json")
        if stats_path.exists():
            assert json.loads(stats_path.read_text())["num_samples"] == num_samples
    for name in names:
        if re.fullmatch(r"train-\d{6}\.json", name):
            assert (out / name).with_suffix(".tar").exists(), f"{name} without its shard"
    return len(tars)


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_result(job_kill_list, tmp_path) -> None:
    """kill -9 (the whole process group) of `mvmae extract run --workers 2` at seeded random
    moments while it writes shards, then resume: nothing partial is ever visible, and the samples
    end up byte for byte those of an uninterrupted run (here in-process, one worker)."""
    run_job(JobConfig(input=job_kill_list, out_dir=tmp_path / "reference", shard_size=2))
    out = tmp_path / "killed"
    command = [*CLI, "extract", "run", str(job_kill_list), str(out), "--workers", "2", "--shard-size", "2"]
    rng = random.Random(0)
    # Kill when this many shards are visible, plus a random delay: mid-shard, between a shard
    # and its stats file, or (when a resumed run has not got that far yet) during start-up.
    interrupted = []  # shards visible after each kill that stopped an unfinished job
    for threshold in sorted(rng.sample(range(1, 12), 3)):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while proc.poll() is None and check_visible(out) < threshold and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            killed = proc.poll() is None
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if killed:
            interrupted.append(check_visible(out))
    assert any(0 < n < 12 for n in interrupted), interrupted
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "24 videos: 24 ok, 0 failed; 24 samples in 12 shards" in resumed.stdout
    assert check_visible(out) == 12
    assert not list(out.glob(".*"))  # the temporary files of the killed runs are gone
    assert read_samples(out) == read_samples(tmp_path / "reference")
    assert read_manifest(out) == read_manifest(tmp_path / "reference")
