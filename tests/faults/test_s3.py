"""Shards into and out of object storage: a real S3 server on loopback (moto) behind a fault
middleware answering 503 SlowDown, dropping connections and losing the replies of writes that
succeeded, during the job's uploads and during reads.

Each time: nothing lost, nothing twice, no partial object visible (every tar in the bucket is
the local run's tar byte for byte, with its marker), and the shards read back as local ones.
"""

from __future__ import annotations

import collections
import logging

import pytest

from mvmae.cli import main
from mvmae.job.job import JobConfig, run_job
from mvmae.shards.clips import ClipConfig
from mvmae.shards.reader import build_train_pipeline
from mvmae.shards.stream import ReadConfig, ShardReader

import shard_faults as sf
from s3_server import check_same_as_local

READ_FLAGS = ["--retries", "3", "--retry-delay", "0.01", "--stall-timeout", "5", "--connect-timeout", "5"]


def _list_file(dataset: dict):
    return dataset["dir"].parent / "list.txt"


def test_extract_into_s3_through_write_faults(s3, dataset, cli_runner, tmp_path) -> None:
    """503s, a dropped connection and lost replies of successful PUTs while the job uploads:
    the same shards as a local run, each once, all with their markers."""
    rules = [s3.faults.add("PUT", r"/run1/train-000000\.tar$", "slowdown", 2),
             s3.faults.add("PUT", r"/run1/train-000001\.tar$", "drop"),
             s3.faults.add("PUT", r"/run1/train-000002\.json$", "lose_reply"),
             s3.faults.add("PUT", r"/run1/train-000003\.tar$", "lose_reply")]
    scratch = tmp_path / "scratch"
    args = ["extract", "run", str(_list_file(dataset)), s3.url("run1"), "--shard-size", str(sf.SHARD_SIZE),
            "--iframe-size", "96", "--scratch", str(scratch)]
    result = sf.bounded(lambda: cli_runner.invoke(main, args), 300)
    s3.faults.clear()
    assert result.exit_code == 0, result.output
    assert [rule.hits for rule in rules] == [2, 1, 1, 1]
    check_same_as_local(s3, "run1", dataset)
    assert not list(scratch.glob("*.tar")) and not list(scratch.glob("train-0*.json"))
    again = cli_runner.invoke(main, args)  # a rerun trusts the markers: nothing to do
    assert again.exit_code == 0 and "(0 written, 4 already complete)" in again.output, again.output


def test_upload_failing_past_retries_is_left_for_the_next_run(s3, dataset, tmp_path, caplog) -> None:
    """A shard whose PUT keeps failing is named failed and kept in the scratch folder, its
    marker absent; the next run uploads it without extracting it again."""
    config = JobConfig(input=_list_file(dataset), out_dir=tmp_path / "scratch", out_url=s3.url("run2"),
                       shard_size=sf.SHARD_SIZE, workers=0, upload_retries=1, upload_retry_delay_s=0.01,
                       extract=_extract_config())
    s3.faults.add("PUT", r"/run2/train-000002\.tar$", "drop", times=1000)
    try:
        summary = run_job(config)
    finally:
        s3.faults.clear()
    assert summary.shards_failed == ["train-000002"] and summary.shards_written == 3
    assert "run2/train-000002.json" not in s3.keys("run2/") and "run2/train-000002.tar" not in s3.keys("run2/")
    assert (config.out_dir / "train-000002.tar").exists()
    with caplog.at_level(logging.INFO, logger="mvmae"):
        summary = run_job(config)
    assert summary.shards_failed == [] and (summary.shards_written, summary.shards_skipped) == (1, 3)
    assert "train-000002: built by an earlier run, uploading it" in caplog.text
    check_same_as_local(s3, "run2", dataset)


def _extract_config():
    from mvmae.extract.config import ExtractConfig

    return ExtractConfig(iframe_short_side=96)


@pytest.fixture(scope="module")
def bucket_shards(s3, dataset) -> list[str]:
    """The reference shards copied into the bucket (``read/``): their URLs."""
    client = s3.client()
    for tar in dataset["tars"]:
        client.put_object(Bucket=s3.bucket, Key=f"read/{tar.name}", Body=tar.read_bytes())
    return [s3.url("read", t.name) for t in dataset["tars"]]


def test_read_s3_through_faults(s3, dataset, bucket_shards, cli_runner) -> None:
    """Reads hit by 503s, dropped connections and replies lost mid-way: every sample once, the
    same bytes as the local shards; verify and inspect read s3:// brace patterns."""
    rules = [s3.faults.add("GET", r"/read/train-000000\.tar$", "slowdown", 2),
             s3.faults.add("GET", r"/read/train-000001\.tar$", "drop"),
             s3.faults.add("GET", r"/read/train-000002\.tar$", "lose_reply")]
    config = ReadConfig(retries=3, retry_delay_s=0.01, stall_s=5, connect_timeout_s=5)
    try:
        for url, tar in zip(bucket_shards, dataset["tars"]):
            local = {s["__key__"]: s for s in ShardReader(str(tar))}
            remote = list(ShardReader(url, config))
            assert [s["__key__"] for s in remote] == dataset["keys"][tar.name]
            for sample in remote:
                assert {k: v for k, v in sample.items() if k != "__url__"} == \
                    {k: v for k, v in local[sample["__key__"]].items() if k != "__url__"}
    finally:
        s3.faults.clear()
    assert [rule.hits for rule in rules] == [2, 1, 1]
    pattern = s3.url("read", f"train-{{000000..{sf.NUM_SHARDS - 1:06d}}}.tar")
    result = cli_runner.invoke(main, ["shards", "verify", pattern, *READ_FLAGS])
    assert result.exit_code == 0, result.output
    result = cli_runner.invoke(main, ["shards", "inspect", pattern, "--json", *READ_FLAGS])
    assert result.exit_code == 0, result.output


def test_train_reader_over_s3(s3, dataset, bucket_shards) -> None:
    """Training reads s3:// shards as local ones: every sample once."""
    rule = s3.faults.add("GET", r"/read/train-000003\.tar$", "drop")
    try:
        pipeline = build_train_pipeline(bucket_shards, ClipConfig(num_frames=8, mv_size=7, iframe_size=64), 1,
                                        read=ReadConfig(retries=2, retry_delay_s=0.01))
        keys = [k for batch in pipeline for k in batch["key"]]
    finally:
        s3.faults.clear()
    assert collections.Counter(keys) == collections.Counter(sf.all_keys(dataset))
    assert pipeline.skips.summary()["shards_skipped"] == 0 and rule.hits == 1


def test_fault_records_travel_through_the_bucket(s3, tmp_path) -> None:
    """A job into object storage copies its fault file into the bucket after each save; a run
    from another scratch folder (another machine) brings it back before reading its records."""
    from mvmae.job.faults import FaultLog
    from mvmae.job.publish import bring_faults, send_faults
    from mvmae.job.store import Store
    from mvmae.shards.videolist import VideoEntry

    store = Store(s3.url("faults"), retries=1, retry_delay_s=0.01)
    first = FaultLog(tmp_path / "a", "train", "job1")
    (tmp_path / "a").mkdir()
    send_faults(store, first)
    entry = VideoEntry(source="v.mp4", path=tmp_path / "v.mp4", label=0, class_name="c", key="v")
    first.record_timeout(entry, "train-000000", 4.0)
    assert s3.keys("faults/") == ["faults/train-faults.json"]
    (tmp_path / "b").mkdir()
    bring_faults(store, tmp_path / "b", "train", "job1")
    second = FaultLog(tmp_path / "b", "train", "job1")
    assert second.excluded([entry], retries=2)["v"][0] == "timeout"
    bring_faults(store, tmp_path / "c", "train", "other-job")  # another job's records are not taken
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


def test_memory_url_is_another_store(dataset, tmp_path) -> None:
    """Any fsspec store behind the same code: memory:// (in this process: --workers 0) gets the
    local run's shards byte for byte."""
    import fsspec

    config = JobConfig(input=_list_file(dataset), out_dir=tmp_path / "scratch", out_url="memory://mvmae-test/shards",
                       shard_size=sf.SHARD_SIZE, workers=0, extract=_extract_config())
    assert run_job(config).shards_written == sf.NUM_SHARDS
    fs = fsspec.filesystem("memory")
    for tar in dataset["tars"]:
        assert fs.cat_file(f"/mvmae-test/shards/{tar.name}") == tar.read_bytes()
    assert fs.cat_file("/mvmae-test/shards/train-manifest.jsonl") == (dataset["dir"] / "train-manifest.jsonl").read_bytes()


@pytest.mark.parametrize("url,reason", [("http://host/shards", "OUT must be a folder or an object storage URL"),
                                        ("memory://x/shards", "use --workers 0")])
def test_refused_out_urls(tmp_path, url, reason) -> None:
    with pytest.raises(ValueError, match=reason):
        JobConfig(input=tmp_path / "list.txt", out_dir=tmp_path, out_url=url, workers=1)
