"""``mvmae train`` and ``mvmae eval`` reading their shards from a real S3 server on loopback
(moto) end exactly as from the local shards: the training run's checkpoints are bit-identical to
those of the session's uninterrupted reference run over the local shards (:mod:`train_faults`),
its metric records the same (the classes read from ``classes.json`` beside the shards in the
bucket), and ``eval`` of its ``best.pt`` gives the same metrics and
per-video scores from the bucket as from the folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mvmae.shards.fetch import expand_urls

import train_faults as tf

pytestmark = pytest.mark.slow  # a training run and two evals, about 40 s on 2 cores (the reference is shared)


def upload(s3, pattern: str, prefix: str) -> str:
    """The local shards of ``pattern`` and the classes.json beside them copied into the bucket
    under ``prefix``: the same pattern there."""
    paths = [Path(url) for url in expand_urls(pattern)]
    client = s3.client()
    for path in [*paths, paths[0].parent / "classes.json"]:
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    return pattern.replace(str(paths[0].parent), s3.url(prefix))


def test_train_and_eval_read_the_bucket_as_local_shards(s3, fault_data, references, tmp_path) -> None:
    reference = references("train")
    data = {**fault_data, "train": upload(s3, fault_data["train"], "synth"),
            "val": upload(s3, fault_data["val"], "synth")}
    assert data["train"].startswith("s3://") and data["val"].startswith("s3://")
    out = tmp_path / "run"
    tf.ok(tf.run(tf.job("train", data, out), out, tmp_path / "run.log"))  # classes.json from the bucket
    tf.assert_same_run(out, reference.summary)

    scores = {}
    for where, urls in (("local", fault_data["val"]), ("s3", data["val"])):
        cmd = [sys.executable, "-m", "mvmae.cli", "eval", "--ckpt", str(out / "best.pt"), "--data", urls,
               "--out", str(tmp_path / where), "--workers", "0"]
        result = subprocess.run(cmd, env=tf.child_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        scores[where] = (json.loads((tmp_path / where / "metrics.json").read_text()),
                         (tmp_path / where / "predictions.csv").read_text())
    assert scores["s3"] == scores["local"]
