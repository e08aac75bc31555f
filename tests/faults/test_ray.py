"""The Ray engine on a real local Ray instance (started once for the module, 2 CPUs): the same
shards, byte for byte, as the local engine over the same list, the same stats, classes and
manifest, with ``kill -9`` of the Ray worker running a shard on the way (Ray runs the task again;
one job shows both, its other shards built undisturbed); nor does ``kill -9`` of the whole job
(its driver) and a rerun of the same command change anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mvmae.cli import main
from mvmae.extract.config import ExtractConfig
from mvmae.job.job import JobConfig, run_job

import needs
import processes
import shard_faults as sf

ray = needs.extra("ray")
pytestmark = pytest.mark.slow  # a Ray instance and about a minute on 2 cores

OUTPUTS = ("classes.json", "train-manifest.jsonl")


@pytest.fixture(scope="module")
def ray_instance():
    # address="local": a new instance, not a cluster someone runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


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


def _cli_args(dataset: dict, out: Path) -> list[str]:
    return ["extract", "run", str(dataset["dir"].parent / "list.txt"), str(out), "--shard-size", str(sf.SHARD_SIZE),
            "--iframe-size", "96", "--engine", "ray", "--workers", "2"]


def test_whole_ray_job_killed_and_rerun(ray_instance, dataset, tmp_path) -> None:
    """kill -9 of the job's driver (a CLI process joined to the cluster) part-way, then the
    same command again: the shards of the local run, each once."""
    address = ray.get_runtime_context().gcs_address
    args = [sys.executable, "-m", "mvmae.cli", *_cli_args(dataset, tmp_path / "out"), "--ray-address", address]
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "out"
    deadline = time.monotonic() + 120
    while driver.poll() is None and not list(out.glob("train-0*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    assert len(list(out.glob("train-0*.json"))) < sf.NUM_SHARDS, "the job ended before it was killed"
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    check_same_as_local(out, dataset)


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


def test_ray_job_equals_local_job_with_a_worker_killed_mid_shard(ray_instance, dataset, tmp_path,
                                                                  cli_runner) -> None:
    """The Ray engine's job, with kill -9 of the Ray worker building one of its shards: Ray runs
    that task again, and the job writes every shard, the same stats, classes and manifest, byte
    for byte, as the local engine (the other shards are built undisturbed in the same job); the
    same command again is a resume with nothing to do."""
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(summary=run_job(_config(dataset, tmp_path / "out"))))
    job.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and job.is_alive() and time.monotonic() < deadline:
        pids = [p for p in _shard_workers() if processes.descendants(p)]  # its extraction worker is up
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.02)
    job.join(300)
    assert killed is not None, "no Ray worker was seen running a shard"
    assert not job.is_alive() and "summary" in result
    summary = result["summary"]
    assert (summary.shards_written, summary.shards_failed, summary.num_ok) == (sf.NUM_SHARDS, [], 12)
    assert summary.shards_redone >= 1  # the task Ray ran again, counted as a local job counts a redo
    check_same_as_local(tmp_path / "out", dataset)
    again = cli_runner.invoke(main, _cli_args(dataset, tmp_path / "out"))  # resume: nothing to do
    assert again.exit_code == 0 and f"(0 written, {sf.NUM_SHARDS} already complete)" in again.output, again.output
