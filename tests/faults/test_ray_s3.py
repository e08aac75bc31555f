"""The Ray engine writing into object storage: a real local Ray instance (2 CPUs, started once
for the module) and a real S3 server on loopback (moto, behind the fault middleware).

- README's "On a Ray cluster, into a bucket" block runs as written (at this test's sizes), the
  driver a CLI process joining the cluster through ``--ray-address auto`` (``RAY_ADDRESS`` names
  this module's instance, so that no other Ray instance of the machine is joined): the bucket
  holds the local run's shards byte for byte, each with its marker, and its manifest; the
  block's ``shards verify`` and ``codebook`` read them back.
- A Ray job into the bucket through 503s and a lost reply reports its progress in videos, as the
  local engine does (not in whole shards), and writes the shards of a local run of its list.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mvmae.extract.config import ExtractConfig
from mvmae.job.job import JobConfig, run_job
from mvmae.synth import encode_h264, x264_options

import media
import needs
import shard_faults as sf
from s3_server import check_same_as_local

ray = needs.extra("ray")
pytestmark = pytest.mark.slow  # a Ray instance, two Ray jobs: about a minute on 2 cores

REPO = Path(__file__).resolve().parents[2]
SECTION = "### On a Ray cluster, into a bucket"


@pytest.fixture(scope="module")
def ray_instance(s3):
    """Started after the S3 server: its workers inherit the AWS variables naming it."""
    # address="local": a new instance, not a cluster someone runs on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def readme_block() -> str:
    """The bash block of README's section on Ray and buckets."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.count(SECTION) == 1, f"README.md needs one '{SECTION}'"
    section = readme[readme.index(SECTION):]
    return re.search(r"^```bash\n(.*?)^```$", section, flags=re.S | re.M)[1]


def readme_commands(dataset: dict, url: str) -> str:
    """The block's commands for this test: its install and credential lines left out (installed;
    the variables name the loopback server), the list, bucket and shard ranges this dataset's,
    and the test's shard and I-frame sizes added to ``extract run``."""
    lines = readme_block().splitlines()
    assert lines[0].startswith("pip install 'mvmae[ray,s3]'") and lines[1].startswith("export AWS_"), lines[:2]
    commands = "\n".join(lines[2:])
    assert "--engine ray --ray-address auto" in commands and commands.count("s3://my-bucket/uav-human/shards") == 3
    last = f"{sf.NUM_SHARDS - 1:06d}"
    commands = re.sub(r"\{000000\.\.0000\d\d\}", f"{{000000..{last}}}", commands)
    commands = commands.replace("train_split.txt", str(dataset["dir"].parent / "list.txt"))
    commands = commands.replace("s3://my-bucket/uav-human/shards", url)
    return commands.replace("--engine ray", f"--shard-size {sf.SHARD_SIZE} --iframe-size 96 --engine ray")


def test_readme_ray_into_a_bucket_runs_as_written(ray_instance, s3, dataset, tmp_path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mvmae").write_text(f'#!/bin/bash\nexec {sys.executable} -m mvmae.cli "$@"\n')
    (bin_dir / "mvmae").chmod(0o755)
    env = {**os.environ, "RAY_ADDRESS": ray_instance, "TMPDIR": str(tmp_path),  # the default scratch: here
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(["bash", "-e", "-c", readme_commands(dataset, s3.url("readme"))], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"12 ok, 0 failed; 12 samples in {sf.NUM_SHARDS} shards ({sf.NUM_SHARDS} written" in result.stdout
    check_same_as_local(s3, "readme", dataset)
    with np.load(tmp_path / "codebook.npz") as codebook:
        assert len(codebook.files) > 0
    assert not list(tmp_path.glob("mvmae-scratch-*/*.tar"))  # uploaded, then removed from the scratch folder


@pytest.fixture(scope="module")
def long_video_list(dataset, tmp_path_factory) -> Path:
    """Two shards of 3: the middle video of the first a 672-frame clip (about a second to
    extract, where the others take a few hundredths), so that the driver, reading the progress
    every half second, sees its shard part-done."""
    root = tmp_path_factory.mktemp("long_video")
    frames = media.render_pan(vx=2, vy=0, num_frames=48)
    encode_h264(root / "long_right.mp4", np.concatenate([frames, frames[::-1]] * 7), 25,
                      x264_options(2, 3, 24, 18))
    clips = sorted(dataset["dir"].parent.glob("*.mp4"))[:5]
    lines = [f"{clips[0]} {clips[0].stem.split('_')[0]}", f"{root / 'long_right.mp4'} right",
             *(f"{c} {c.stem.split('_')[0]}" for c in clips[1:])]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt"


def test_ray_progress_counts_videos_into_a_bucket(ray_instance, s3, long_video_list, tmp_path) -> None:
    """The progress callback of a Ray job moves video by video (not only by whole shards of 3),
    never back, to the total; 503s and a lost reply on the way change nothing: the bucket gets
    the shards of a local run of the same list, byte for byte."""
    s3.faults.add("PUT", r"/progress/train-000000\.tar$", "slowdown", 2)
    s3.faults.add("PUT", r"/progress/train-000001\.json$", "lose_reply")
    config = JobConfig(input=long_video_list, out_dir=tmp_path / "scratch", out_url=s3.url("progress"),
                       shard_size=sf.SHARD_SIZE, engine="ray", workers=2, upload_retry_delay_s=0.01,
                       extract=ExtractConfig(iframe_short_side=96))
    reported: list[tuple[int, int]] = []
    try:
        summary = sf.bounded(lambda: run_job(config, lambda done, total: reported.append((done, total))), 300)
    finally:
        s3.faults.clear()
    assert (summary.shards_written, summary.shards_failed, summary.num_ok) == (2, [], 6)
    counts = [done for done, _ in reported]
    assert {total for _, total in reported} == {6} and counts[0] == 0 and counts[-1] == 6
    assert counts == sorted(counts), counts
    assert any(n % sf.SHARD_SIZE for n in counts), f"only whole shards counted: {counts}"
    local = dataclasses.replace(config, out_dir=tmp_path / "local", out_url=None, engine="local", workers=0)
    run_job(local)
    assert s3.keys("progress/train-0") == [f"progress/train-00000{j}.{ext}" for j in (0, 1) for ext in ("json", "tar")]
    for j in (0, 1):
        assert s3.read(f"progress/train-00000{j}.tar") == (local.out_dir / f"train-00000{j}.tar").read_bytes()
    assert s3.read("progress/train-manifest.jsonl") == (local.out_dir / "train-manifest.jsonl").read_bytes()
