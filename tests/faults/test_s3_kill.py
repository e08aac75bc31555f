"""``kill -9`` of a job writing into object storage (a real S3 server on loopback, moto) while
it uploads: the job is a real ``mvmae extract run LIST s3://...`` process, killed with its worker
while the server holds a PUT half-received (the shard's tar, then another shard's commit
marker), then the same command run again.

After each kill no partial object is visible (every tar in the bucket is a complete shard of
the local run, byte for byte; a marker only beside its tar); the runs after resume (a shard built
before the kill is uploaded, not extracted again) and the last one leaves the local run's
shards, markers and manifest: every video exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import processes
import shard_faults as sf
from s3_server import check_same_as_local

pytestmark = pytest.mark.slow  # three job processes, about 30 s on 2 cores


def check_nothing_partial(s3, prefix: str, dataset: dict) -> list[str]:
    """Every tar in the bucket is a whole shard of the local run, every marker its shard's and
    beside its tar; returns the names of the shards whose marker is there."""
    local, keys = dataset["dir"], s3.keys(prefix + "/")
    names = [k.rsplit("/", 1)[1] for k in keys]
    for name in names:
        if name.startswith("train-0") and name.endswith(".tar"):
            assert s3.read(f"{prefix}/{name}") == (local / name).read_bytes(), f"{name} is not the whole shard"
    committed = [n[:-len(".json")] for n in names if n.startswith("train-0") and n.endswith(".json")]
    for shard in committed:
        assert f"{shard}.tar" in names, f"{shard}: a marker without its tar"
        assert json.loads(s3.read(f"{prefix}/{shard}.json")) == json.loads((local / f"{shard}.json").read_text())
    return committed


def _run_killed_on(s3, args: list[str], path: str) -> None:
    """Run the job until the server holds a PUT of ``path`` half-received, then kill -9 it and its
    worker, then let the held request go (dropped, never served)."""
    rule = s3.faults.add("PUT", path, "hold")
    job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        processes.wait_for(lambda: rule.hits or job.poll() is not None, 240, f"a PUT of {path}")
        assert rule.hits == 1, f"the job ended (status {job.poll()}) before uploading {path}: {job.stderr.read()}"
        processes.kill_tree(job.pid)
    finally:
        job.kill()
        job.wait()
        job.stderr.close()
        s3.faults.clear()  # releases the held request


def test_job_killed_mid_upload_then_rerun(s3, dataset, tmp_path) -> None:
    args = [sys.executable, "-m", "mvmae.cli", "extract", "run", str(dataset["dir"].parent / "list.txt"),
            s3.url("kill"), "--shard-size", str(sf.SHARD_SIZE), "--iframe-size", "96", "--workers", "1",
            "--scratch", str(tmp_path / "scratch")]
    _run_killed_on(s3, args, r"/kill/train-000001\.tar$")  # the tar's body half sent
    assert check_nothing_partial(s3, "kill", dataset) == ["train-000000"]
    assert "kill/train-000001.tar" not in s3.keys("kill/")

    _run_killed_on(s3, args, r"/kill/train-000002\.json$")  # tar 2 uploaded, its marker half sent
    assert check_nothing_partial(s3, "kill", dataset) == ["train-000000", "train-000001"]
    assert "kill/train-000002.tar" in s3.keys("kill/")  # whole, but not committed: a rerun redoes it
    assert (tmp_path / "scratch/train-000002.tar").exists()  # built, kept for the next run

    rerun = subprocess.run([*args[:3], "-v", *args[3:]], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "train-000002: built by an earlier run, uploading it" in rerun.stderr  # not extracted again
    assert "(2 written, 2 already complete)" in rerun.stdout, rerun.stdout
    check_same_as_local(s3, "kill", dataset)
    assert not list((tmp_path / "scratch").glob("*.tar")) and not list((tmp_path / "scratch").glob("train-0*.json"))
