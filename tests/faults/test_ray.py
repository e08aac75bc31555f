"""The Ray engine on a real local Ray instance (started once for the module, 2 CPUs): the same
shards, byte for byte, as the local engine over the same list, the same stats, classes and
manifest; ``kill -9`` of the Ray worker running a shard changes nothing (Ray runs the task again)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mvmae.extract.decoder import ExtractConfig
from mvmae.job.job import JobConfig, run_job

import shard_faults as sf

ray = pytest.importorskip("ray")

OUTPUTS = ("classes.json", "train-manifest.jsonl")


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    return sf.fault_dataset(tmp_path_factory)


def _config(dataset: dict, out: Path) -> JobConfig:
    return JobConfig(input=dataset["dir"].parent / "list.txt", out_dir=out, shard_size=sf.SHARD_SIZE,
                     engine="ray", workers=2, extract=ExtractConfig(iframe_short_side=96))


def check_same_as_local(out: Path, dataset: dict) -> None:
    local = dataset["dir"]
    assert sorted(p.name for p in out.glob("train-0*")) == sorted(p.name for p in local.glob("train-0*"))
    for tar in dataset["tars"]:
        assert (out / tar.name).read_bytes() == tar.read_bytes(), tar.name
        stats = tar.with_suffix(".json").name
        assert json.loads((out / stats).read_text()) == json.loads((local / stats).read_text())
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (local / name).read_bytes(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]


def test_ray_job_equals_local_job(ray_instance, dataset, tmp_path) -> None:
    summary = run_job(_config(dataset, tmp_path / "out"))
    assert (summary.shards_written, summary.shards_failed, summary.num_ok) == (sf.NUM_SHARDS, [], 12)
    check_same_as_local(tmp_path / "out", dataset)
    again = run_job(_config(dataset, tmp_path / "out"))  # resume: the same command, nothing to do
    assert (again.shards_written, again.shards_skipped) == (0, sf.NUM_SHARDS)


def _shard_workers() -> list[int]:
    """PIDs of Ray worker processes running a shard task (Ray titles them ``ray::<function>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::build_on_ray"):
                pids.append(int(entry.name))
    return pids


def test_kill_a_ray_worker_mid_shard(ray_instance, dataset, tmp_path) -> None:
    """kill -9 of the Ray worker building a shard: Ray runs its task again; nothing changes."""
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(summary=run_job(_config(dataset, tmp_path / "out"))))
    job.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and job.is_alive() and time.monotonic() < deadline:
        pids = _shard_workers()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.02)
    job.join(300)
    assert killed is not None, "no Ray worker was seen running a shard"
    assert not job.is_alive() and "summary" in result
    assert (result["summary"].shards_failed, result["summary"].num_ok) == ([], 12)
    check_same_as_local(tmp_path / "out", dataset)
