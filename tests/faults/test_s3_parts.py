"""Parts of one job (``--part i/N``, each from its own scratch folder: another machine) writing
into one bucket on a real S3 server on loopback (moto), and the bucket's shards read by
``mvmae shards export`` and ``mvmae codebook`` exactly as the local ones.

The parts together leave the local run's shards, markers and manifest; ``mvmae shards manifest
s3://...`` rewrites the manifest from the markers alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from mvmae.cli import main

import shard_faults as sf
from s3_server import check_same_as_local

CODEBOOK_FLAGS = ["--size", "8", "--frames", "8", "--mv-size", "7", "--workers", "0", "--max-tokens", "5000"]


@pytest.fixture(scope="module")
def parts_in_bucket(s3, dataset, tmp_path_factory) -> str:
    """``--part 0/2`` and ``--part 1/2`` into ``s3://mvmae/parts`` from two scratch folders: its URL."""
    from click.testing import CliRunner

    for part in ("0/2", "1/2"):
        args = ["extract", "run", str(dataset["dir"].parent / "list.txt"), s3.url("parts"), "--part", part,
                "--shard-size", str(sf.SHARD_SIZE), "--iframe-size", "96", "--workers", "0",
                "--scratch", str(tmp_path_factory.mktemp("scratch"))]
        result = sf.bounded(lambda: CliRunner().invoke(main, args), 300)
        assert result.exit_code == 0, result.output
        assert f"{sf.NUM_SHARDS // 2} written" in result.output, result.output
    return s3.url("parts")


def test_parts_into_one_bucket_then_shards_manifest(s3, dataset, parts_in_bucket, cli_runner) -> None:
    check_same_as_local(s3, "parts", dataset)  # the last part's manifest lists every part's shards
    s3.client().delete_object(Bucket=s3.bucket, Key="parts/train-manifest.jsonl")
    result = cli_runner.invoke(main, ["shards", "manifest", parts_in_bucket])
    assert result.exit_code == 0, result.output
    check_same_as_local(s3, "parts", dataset)


def test_export_and_codebook_read_the_bucket_as_local_shards(s3, dataset, parts_in_bucket, cli_runner,
                                                              tmp_path) -> None:
    key = dataset["keys"]["train-000002.tar"][1]
    commands = {"export": lambda shards: ["shards", "export", f"{shards}/train-000002.tar", "--key", key],
                "codebook": lambda shards: ["codebook", sf.brace(shards), *CODEBOOK_FLAGS]}
    for name, command in commands.items():
        arrays = {}
        for where, shards in (("local", str(dataset["dir"])), ("s3", parts_in_bucket)):
            out = tmp_path / f"{name}-{where}.npz"
            result = cli_runner.invoke(main, [*command(shards), "--out", str(out)])
            assert result.exit_code == 0, result.output
            with np.load(out) as f:
                arrays[where] = {k: f[k] for k in f.files}
        assert arrays["s3"].keys() == arrays["local"].keys(), name
        for k, value in arrays["local"].items():
            np.testing.assert_array_equal(arrays["s3"][k], value, err_msg=f"{name}: {k}")
