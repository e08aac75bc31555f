"""Shards read over real HTTP from a loopback server that fails on purpose (``shard_faults``):
dropped connections, HTTP 500, stalls, truncated bodies, slow-but-alive transfers, and failures
that clear after a few tries; the reader, ``mvmae shards verify`` and a short ``mvmae train``.

Every read here is bounded: ``ReadConfig`` timeouts are small (a stall is given up after 1 s),
and each read runs under ``shard_faults.bounded`` so that a hang fails the test instead of
blocking the suite.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mvmae.cli import main
from mvmae.shards.clips import ClipConfig
from mvmae.shards.reader import build_eval_pipeline, build_train_pipeline, make_loader
from mvmae.shards.stream import ReadConfig, ShardReadError, read_shards

import shard_faults as sf
from processes import kill_tree, processes_with, wait_for

READ = ReadConfig(retries=2, retry_delay_s=0.1, stall_s=1, connect_timeout_s=2, max_time_s=30)
CLIP = ClipConfig(num_frames=8, mv_size=7, iframe_size=64)  # small clips: the reading is tested
LIMIT_S = 90  # a read still running after this long is a hang (it takes a few seconds)
BAD = "train-000001.tar"
FAILURES = ("500", "drop", "short", "close_early", "stall")
HALF_SENT = ("drop", "short", "close_early", "stall")  # the first half of the body is sent
STALLED = re.compile(r"stalled|too slow")  # the reader's watchdog or curl's --speed-limit, whichever first


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    sf.require_curl()
    return sf.fault_dataset(tmp_path_factory)


def train_keys(urls, read: ReadConfig = READ, num_workers: int = 0) -> tuple[list[str], dict]:
    """Keys of one epoch of the train pipeline (resampled=False) and its SkipCounter summary."""
    pipeline = build_train_pipeline(urls, CLIP, 1, read=read)
    loader = make_loader(pipeline, num_workers, timeout_s=60) if num_workers else pipeline
    keys = sf.bounded(lambda: [k for batch in loader for k in batch["key"]], LIMIT_S)
    return keys, pipeline.skips.summary()


def assert_delivered(keys: list[str], dataset: dict, failing: dict[str, str]) -> None:
    """Every sample exactly once, but those of the failing shards ({name: mode}) that did not
    arrive before the failure: the samples in the half of the body sent, or (a reset connection
    may lose what was in flight) for ``drop`` the first of those."""
    counts = collections.Counter(keys)
    assert max(counts.values()) == 1, counts
    for tar in dataset["tars"]:
        mode, shard_keys = failing.get(tar.name), dataset["keys"][tar.name]
        got = [k for k in shard_keys if k in counts]
        sent = sf.keys_within(tar, tar.stat().st_size // 2) if mode in HALF_SENT else []
        if mode is None:
            assert got == shard_keys
        elif mode == "drop":
            assert got == sent[:len(got)], (got, sent)
        else:
            assert got == sent, (tar.name, mode, got, sent)
    assert sum(counts.values()) == len(keys)


def assert_backoff(server: sf.FaultServer, name: str, read: ReadConfig) -> None:
    """A request per attempt, each retry at least its backoff delay after the previous request."""
    times = server.times(name)
    assert len(times) == read.retries + 1
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= delay for gap, delay in zip(gaps, read.retry_delays())), (gaps, read.retry_delays())


@pytest.mark.parametrize("mode", FAILURES + ("refused",))
def test_failing_shard_retried_with_backoff_then_skipped(dataset, mode, caplog) -> None:
    """One shard always fails: retried with backoff (2 retries), then skipped and counted; every
    sample of the other shards arrives once, and those of the failing shard sent before the
    failure arrive once (the retries skip them)."""
    caplog.set_level(logging.WARNING, logger="mvmae")
    with sf.fault_server(dataset["dir"], {} if mode == "refused" else {BAD: [mode]}) as server:
        urls = [server.url(t.name) for t in dataset["tars"]]
        if mode == "refused":  # nothing listens there any more
            with sf.fault_server(dataset["dir"]) as gone:
                urls[1] = gone.url(BAD)
        keys, skips = train_keys(urls)  # bounded: a hang fails after LIMIT_S
        if mode != "refused":
            assert_backoff(server, BAD, READ)
    assert skips == {"seen": len(keys), "skipped": 0, "shards_seen": 4, "shards_skipped": 1,
                     "shard_retries": 2}
    assert_delivered(keys, dataset, {BAD: mode})
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    assert len(retries) == 2 and all(urls[1] in m for m in retries)
    assert "retry 1 of 2 in 0.1 s" in retries[0] and "retry 2 of 2 in 0.2 s" in retries[1]
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped shard")]
    assert len(skipped) == 1 and urls[1] in skipped[0] and "(3 attempts)" in skipped[0]


@pytest.mark.parametrize("plan", [["drop", "ok"], ["500", "stall", "ok"], ["close_early", "short", "ok"]],
                         ids="-".join)
def test_failures_that_clear_deliver_every_sample_once(dataset, plan) -> None:
    """A shard that fails then succeeds: every sample exactly once, in order, byte for byte."""
    local = list(read_shards({"url": str(t)} for t in dataset["tars"]))
    with sf.fault_server(dataset["dir"], {BAD: plan, "train-000003.tar": plan}) as server:
        urls = [{"url": server.url(t.name)} for t in dataset["tars"]]
        remote = sf.bounded(lambda: list(read_shards(urls, READ)), LIMIT_S)
        assert server.count(BAD) == server.count("train-000003.tar") == len(plan)
        assert server.count("train-000000.tar") == 1
    assert [s["__key__"] for s in remote] == [s["__key__"] for s in local]
    for got, want in zip(remote, local):
        assert {k: v for k, v in got.items() if k != "__url__"} == {k: v for k, v in want.items() if k != "__url__"}


def test_failures_that_clear_in_the_train_pipeline(dataset) -> None:
    """The same through the train pipeline and two DataLoader workers: the exact multiset of
    samples, the retries counted, nothing skipped."""
    with sf.fault_server(dataset["dir"], {BAD: ["drop", "ok"], "train-000002.tar": ["stall", "ok"]}) as server:
        keys, skips = train_keys([server.url(t.name) for t in dataset["tars"]], num_workers=2)
    assert collections.Counter(keys) == collections.Counter(sf.all_keys(dataset))
    assert skips == {"seen": 12, "skipped": 0, "shards_seen": 4, "shards_skipped": 0, "shard_retries": 2}


def test_slow_but_alive_is_not_a_failure(dataset) -> None:
    """A transfer that takes longer than stall_s in all, but never pauses that long, is read once."""
    with sf.fault_server(dataset["dir"], {BAD: ["slow"]}) as server:
        start = time.monotonic()
        keys, skips = train_keys([server.url(t.name) for t in dataset["tars"]])
        elapsed = time.monotonic() - start
        assert server.count(BAD) == 1
    assert elapsed >= (sf.SLOW_PIECES - 1) * sf.SLOW_PAUSE_S > 2 * READ.stall_s  # pauses between pieces
    assert collections.Counter(keys) == collections.Counter(sf.all_keys(dataset))
    assert skips["shard_retries"] == 0 and skips["shards_skipped"] == 0


def test_transfer_past_max_time_is_aborted(dataset) -> None:
    """A transfer alive but slower than max_time_s allows is aborted, then the shard skipped."""
    read = ReadConfig(retries=0, stall_s=1, connect_timeout_s=2, max_time_s=1.5)
    with sf.fault_server(dataset["dir"], {BAD: ["slow"]}) as server:
        pipeline = build_eval_pipeline([server.url(BAD)], ClipConfig(mode="center"), 4, read=read)
        start = time.monotonic()
        with pytest.raises(ShardReadError) as info:
            sf.bounded(lambda: [k for batch in pipeline for k in batch["key"]], LIMIT_S)
        elapsed = time.monotonic() - start
    assert re.search(r"max_time_s=1.5 s|operation timed out", str(info.value), re.IGNORECASE), str(info.value)
    assert elapsed >= 1.5  # aborted at max_time_s, not earlier (a hang is bounded by sf.bounded)


def test_stalled_pipe_command_is_killed(dataset) -> None:
    """A ``pipe:`` command that sends part of a shard then hangs: killed after stall_s with its
    whole process group (no command left behind), retried, then the shard skipped."""
    tar = dataset["tars"][1]
    marker = f"{time.monotonic_ns() % 10 ** 9}.5"  # a unique sleep duration, to find the process by
    url = f"pipe:head -c {tar.stat().st_size // 2} {tar}; sleep {marker}"
    read = ReadConfig(retries=1, retry_delay_s=0.05, stall_s=1)
    keys, skips = train_keys([str(dataset["tars"][0]), url], read)
    assert collections.Counter(keys) == collections.Counter(
        dataset["keys"][dataset["tars"][0].name] + sf.keys_within(tar, tar.stat().st_size // 2))
    assert (skips["shards_skipped"], skips["shard_retries"]) == (1, 1)
    wait_for(lambda: processes_with(f"sleep {marker}") == [], 10, "the stalled command to be gone")


@pytest.mark.parametrize("mode,reason", [("500", re.compile("error: 500")), ("stall", STALLED)])
def test_eval_pipeline_is_loud_naming_the_url(dataset, mode, reason) -> None:
    with sf.fault_server(dataset["dir"], {BAD: [mode]}) as server:
        pipeline = build_eval_pipeline([server.url(t.name) for t in dataset["tars"]], ClipConfig(mode="center"),
                                       4, read=READ)
        with pytest.raises(ShardReadError) as info:
            sf.bounded(lambda: [k for batch in pipeline for k in batch["key"]], LIMIT_S)
    assert info.value.url == server.url(BAD)
    assert str(info.value).startswith(f"{server.url(BAD)} ")
    assert reason.search(str(info.value).lower()) and "(3 attempts)" in str(info.value)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_dataloader_workers_never_hang(dataset, num_workers) -> None:
    """A shard that stalls forever and one that answers 500, read by DataLoader workers: the
    epoch ends, both shards skipped and counted in the main process."""
    read = ReadConfig(retries=1, retry_delay_s=0.05, stall_s=1, connect_timeout_s=2, max_time_s=30)
    plan = {BAD: ["stall"], "train-000002.tar": ["500"]}
    with sf.fault_server(dataset["dir"], plan) as server:
        keys, skips = train_keys([server.url(t.name) for t in dataset["tars"]], read, num_workers)
        assert server.count(BAD) == server.count("train-000002.tar") == 2
    assert_delivered(keys, dataset, {BAD: "stall", "train-000002.tar": "500"})
    assert (skips["shards_skipped"], skips["shard_retries"], skips["shards_seen"]) == (2, 2, 4)


FAST_FLAGS = ["--retries", "1", "--retry-delay", "0.05", "--stall-timeout", "1", "--connect-timeout", "2"]


@pytest.mark.slow
def test_verify_over_http_retries_and_names_the_shard(dataset, cli_runner) -> None:
    """`mvmae shards verify` reads as training does: a dropped transfer is retried (all good); a
    shard that stalls on every try is reported with its URL, in bounded time."""
    with sf.fault_server(dataset["dir"], {BAD: ["drop", "ok"]}) as server:
        urls = [server.url(t.name) for t in dataset["tars"]]
        result = sf.bounded(lambda: cli_runner.invoke(main, ["shards", "verify", *urls, *FAST_FLAGS]), LIMIT_S)
        assert server.count(BAD) == 2
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "4 shard(s), 12 samples: all good"
    with sf.fault_server(dataset["dir"], {BAD: ["stall"]}) as server:
        urls = [server.url(t.name) for t in dataset["tars"]]
        result = sf.bounded(lambda: cli_runner.invoke(main, ["shards", "verify", *urls, *FAST_FLAGS]), LIMIT_S)
        inspect = sf.bounded(lambda: cli_runner.invoke(main, ["shards", "inspect", *urls, *FAST_FLAGS]), LIMIT_S)
    first = sf.keys_within(dataset["tars"][1], dataset["tars"][1].stat().st_size // 2)[-1]
    assert result.exit_code == 1
    problem, summary = result.stdout.splitlines()
    assert problem.startswith(f"{server.url(BAD)} {first}: transfer failed after this sample: ")
    assert STALLED.search(problem) and problem.endswith("(2 attempts)")
    assert summary.startswith("4 shard(s)") and summary.endswith("1 problem(s) in 1 shard(s)")
    assert inspect.exit_code == 1 and inspect.stdout == ""
    *warnings, error = inspect.stderr.splitlines()
    assert error.startswith(f"error: {server.url(BAD)} {first}: transfer failed")
    assert len(warnings) == 1 and "retry 1 of 1" in warnings[0]


# --------------------------------------------------------------------------- training


def test_read_settings_in_the_training_configs() -> None:
    """``read`` and ``loader_timeout_s`` are YAML-able fields of both training configs."""
    from mvmae.train.config import ConfigError, config_to_dict, load_config
    from mvmae.train.finetune import FinetuneConfig
    from mvmae.train.pretrain import PretrainConfig

    for cls in (FinetuneConfig, PretrainConfig):
        cfg = load_config(cls, None, {"read.stall_s": 5, "read.retries": 1, "loader_timeout_s": 30})
        assert (cfg.read.stall_s, cfg.read.retries, cfg.read.max_time_s, cfg.loader_timeout_s) == (5, 1, 1800, 30)
        assert load_config(cls, None, config_to_dict(cfg)) == cfg
        with pytest.raises(ConfigError, match="stall_s"):
            load_config(cls, None, {"read.stall_s": 0})
        with pytest.raises(ConfigError, match="loader_timeout_s"):
            load_config(cls, None, {"loader_timeout_s": -1})


REPO = Path(__file__).resolve().parents[2]
# A micro motion-only classifier on 16-frame clips of 8x8 cells: an epoch takes about a second.
TRAIN_YAML = {
    "model": {"inputs": "mv", "motion_size": "micro", "num_segments": 1, "dim": 32, "temporal_heads": 4},
    "tokens": {"num_frames": 16, "mv_size": 8, "iframe_size": 64, "tubelet_frames": 4},
    "batch_size": 2, "workers": 1, "epochs": 1, "phase1_epochs": 0, "warmup_epochs": 0, "lr": 1e-3,
    "flip_prob": 0.0, "loader_timeout_s": 60,
    "read": {"retries": 1, "retry_delay_s": 0.05, "stall_s": 1, "connect_timeout_s": 2, "max_time_s": 30},
}


@pytest.mark.slow
def test_training_does_not_hang(dataset, tmp_path) -> None:
    """`mvmae train` on shards over HTTP, one stalling forever, one answering 500: the run ends,
    both shards skipped (warned, and counted in the epoch's metrics)."""
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(TRAIN_YAML))
    plan = {BAD: ["stall"], "train-000002.tar": ["500"]}
    with sf.fault_server(dataset["dir"], plan) as server:
        args = [sys.executable, "-m", "mvmae.cli", "train", "--config", str(tmp_path / "run.yaml"),
                "--classes", str(dataset["classes"]), "--out", str(tmp_path / "run"),
                "--train", sf.brace(server.base)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail("mvmae train still running after 240 s")
        finally:  # a run that hangs or fails an assertion leaves no process (DataLoader workers, curl)
            kill_tree(proc.pid)
            proc.communicate()
    run = subprocess.CompletedProcess(args, proc.returncode, "", stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in plan:
        assert any(line.startswith("warning: skipped shard") and server.url(name) in line
                   for line in run.stderr.splitlines()), run.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (train,) = [r for r in records if r.get("split") == "train"]
    assert (train["num_shards_skipped"], train["num_shard_retries"]) == (2, 2)
    assert train["num_samples_skipped"] == 0 and math.isfinite(train["loss"])
