"""Shards into and out of Google Cloud Storage (``gs://``) through gcsfs, against a real GCS
wire-protocol server on loopback (gcp-storage-emulator, :mod:`gcs_server`): the same code as
for S3 (:mod:`mvmae.job.store`, :class:`mvmae.shards.fetch.ObjectStream`) behind another client.

The job's objects are the local run's files byte for byte, a rerun trusts the markers, and the
shards read back (``shards verify|inspect``, the training reader) as local ones.
"""

from __future__ import annotations

import collections
import json

import pytest

from mvmae.cli import main
from mvmae.shards.clips import ClipConfig
from mvmae.shards.reader import build_train_pipeline
from mvmae.shards.stream import ReadConfig, ShardReader

import shard_faults as sf
from gcs_server import gcs_server

READ_FLAGS = ["--retries", "1", "--retry-delay", "0.01", "--stall-timeout", "10", "--connect-timeout", "5"]


@pytest.fixture(scope="module")
def gcs():
    with gcs_server() as server:
        yield server


@pytest.fixture(scope="module")
def job_in_bucket(gcs, dataset, tmp_path_factory) -> list[str]:
    """``mvmae extract run LIST gs://mvmae/run`` (one supervised worker): its CLI arguments."""
    from click.testing import CliRunner

    args = ["extract", "run", str(dataset["dir"].parent / "list.txt"), gcs.url("run"), "--shard-size",
            str(sf.SHARD_SIZE), "--iframe-size", "96", "--scratch", str(tmp_path_factory.mktemp("scratch"))]
    result = sf.bounded(lambda: CliRunner().invoke(main, args), 300)
    assert result.exit_code == 0, result.output
    return args


def test_extract_into_gcs_equals_local(gcs, dataset, job_in_bucket, cli_runner) -> None:
    local, names = dataset["dir"], [t.stem for t in dataset["tars"]]
    expected = sorted([f"run/{n}.{ext}" for n in names for ext in ("tar", "json")]
                      + [f"run/{f}" for f in ("classes.json", "train-job.json", "train-manifest.jsonl")])
    assert gcs.keys("run/") == expected
    for name in names:
        assert gcs.read(f"run/{name}.tar") == (local / f"{name}.tar").read_bytes(), name
        assert json.loads(gcs.read(f"run/{name}.json")) == json.loads((local / f"{name}.json").read_text())
    assert gcs.read("run/train-manifest.jsonl") == (local / "train-manifest.jsonl").read_bytes()
    assert json.loads(gcs.read("run/classes.json")) == json.loads(dataset["classes"].read_text())
    again = cli_runner.invoke(main, job_in_bucket)  # a rerun trusts the markers: nothing to do
    assert again.exit_code == 0 and f"(0 written, {sf.NUM_SHARDS} already complete)" in again.output, again.output


def test_gcs_shards_read_as_local_ones(gcs, dataset, job_in_bucket, cli_runner) -> None:
    """verify and inspect read a gs:// brace pattern; the shard reader and the training pipeline
    get every sample once, the same bytes as from the local shards."""
    pattern = gcs.url("run", f"train-{{000000..{sf.NUM_SHARDS - 1:06d}}}.tar")
    result = cli_runner.invoke(main, ["shards", "verify", pattern, *READ_FLAGS])
    assert result.exit_code == 0, result.output
    result = cli_runner.invoke(main, ["shards", "inspect", pattern, "--json", *READ_FLAGS])
    assert result.exit_code == 0, result.output
    config = ReadConfig(retries=1, retry_delay_s=0.01, stall_s=10, connect_timeout_s=5)
    tar = dataset["tars"][0]
    local = {s["__key__"]: s for s in ShardReader(str(tar))}
    remote = list(ShardReader(gcs.url("run", tar.name), config))
    assert [s["__key__"] for s in remote] == dataset["keys"][tar.name]
    for sample in remote:
        assert {k: v for k, v in sample.items() if k != "__url__"} == \
            {k: v for k, v in local[sample["__key__"]].items() if k != "__url__"}
    urls = [gcs.url("run", t.name) for t in dataset["tars"]]
    pipeline = build_train_pipeline(urls, ClipConfig(num_frames=8, mv_size=7, iframe_size=64), 1, read=config)
    keys = [k for batch in pipeline for k in batch["key"]]
    assert collections.Counter(keys) == collections.Counter(sf.all_keys(dataset))
    assert pipeline.skips.summary()["shards_skipped"] == 0
