"""The Ray examples as written, on a real Ray cluster of two nodes on this machine (two raylets of
one CPU each, ``ray.cluster_utils.Cluster``; the head at ``cluster.address``, as ``ray start
--head`` would give it): ``examples/ray/extract.sh`` extracts a list on the cluster, then
``examples/ray/launch_training.py --nodes 2`` starts one torchrun launcher per Ray node (a
STRICT_SPREAD placement group) and they fine-tune on those shards together (gloo on loopback).
The Ray workers run this checkout (PYTHONPATH) with the environment the raylets started with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from dataset_trees import place

from mvmae.cli import main
from mvmae.train import checkpoint as ckpt

import needs

ray = needs.extra("ray")
pytestmark = pytest.mark.slow  # two raylets, an extraction and a two-node run: about a minute

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 400
TRAIN = {"model": {"inputs": "mv", "motion_size": "micro", "num_segments": 1, "dim": 32, "temporal_heads": 4},
         "tokens": {"num_frames": 8, "mv_size": 4, "iframe_size": 32, "tubelet_frames": 4},
         "epochs": 1, "phase1_epochs": 0, "batch_size": 2, "val_batch_size": 2, "workers": 0, "lr": 1e-3,
         "warmup_epochs": 0, "seed": 0}


def _env() -> dict:
    """This checkout first, one thread, no GPU, gloo on loopback."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "GLOO_SOCKET_IFNAME": "lo"}


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of one CPU each on this machine; their raylets (and so the Ray workers)
    start with ``_env()``. Yields the head's address."""
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        for name, value in _env().items():
            if os.environ.get(name) != value:
                patch.setenv(name, value)
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes()
    try:
        yield nodes.address
    finally:
        nodes.shutdown()


def _stand_ins(folder: Path) -> Path:
    """``mvmae`` of this checkout on a PATH."""
    folder.mkdir(parents=True)
    (folder / "mvmae").write_text(f'#!/bin/bash\nexec {sys.executable} -m mvmae.cli "$@"\n')
    (folder / "mvmae").chmod(0o755)
    return folder


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def extracted(cluster, tiny_clips, tmp_path_factory) -> dict:
    """``RAY_ADDRESS=<head> examples/ray/extract.sh LIST OUT train --shard-size 2`` on a folder
    split's train list (8 videos of 2 classes)."""
    root = tmp_path_factory.mktemp("ray_example")
    for name in ("jump", "run"):
        for i in range(5):
            place(tiny_clips[".mp4"], root / "videos" / name / f"{name}{i}.mp4")
    lists = root / "lists"
    args = ["datasets", "folders", str(root / "videos"), "--out", str(lists), "--val-ratio", "0.2"]
    assert CliRunner().invoke(main, args).exit_code == 0
    env = {**_env(), "PATH": f"{_stand_ins(root / 'bin')}{os.pathsep}{os.environ['PATH']}", "RAY_ADDRESS": cluster}
    out = root / "shards"
    result = subprocess.run(["bash", str(REPO / "examples/ray/extract.sh"), str(lists / "train.txt"), str(out),
                             "train", "--shard-size", "2"], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"root": root, "lists": lists, "shards": out, "output": result.stdout + result.stderr}


def test_ray_extraction_as_written(extracted):
    """Every video of the list extracted on the cluster, each in the manifest once, in 4 shards."""
    listed = sorted(Path(line.split()[0]).name for line in (extracted["lists"] / "train.txt").read_text().splitlines())
    manifest = [json.loads(line) for line in (extracted["shards"] / "train-manifest.jsonl").read_text().splitlines()]
    assert sorted(Path(row["source"]).name for row in manifest) == listed and len(listed) == 8
    assert all(row["status"] == "ok" for row in manifest)
    assert sorted(p.name for p in extracted["shards"].glob("*.tar")) == [f"train-{i:06d}.tar" for i in range(4)]


def _failure_report(output: str) -> str:
    """The launcher's output for an assertion message: Ray's repeated disk-space warnings left
    out, the start (which launcher failed first, a task Ray killed for memory) and the end."""
    lines = [line for line in output.splitlines() if "file_system_monitor" not in line]
    text = "\n".join(lines)
    return text if len(text) <= 8000 else f"{text[:3000]}\n[...]\n{text[-5000:]}"


def test_ray_launched_training_on_two_nodes(cluster, extracted):
    """``launch_training.py --address <head> --nodes 2 --rdzv-port P -- train ...``: one launcher
    on each Ray node, both ranks train (an equal epoch: 8 samples // (2 ranks x 2) = 2 steps) and
    finish, rank 0 writes the run, its validation covers every video."""
    root, shards = extracted["root"], extracted["shards"]
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump(TRAIN))
    out = root / "run"
    data = str(shards / "train-{000000..000003}.tar")
    cmd = [sys.executable, str(REPO / "examples/ray/launch_training.py"), "--address", cluster, "--nodes", "2",
           "--rdzv-port", str(_free_port()), "--", "train", "--config", str(config), "--train", data, "--val", data,
           "--classes", str(extracted["lists"] / "classes.json"), "--out", str(out)]
    result = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, _failure_report(output)
    assert "launchers exited with [0, 0]" in output  # both nodes' ranks finished
    state = ckpt.load_checkpoint(out / "last.pt")
    assert (state[ckpt.EPOCH], state[ckpt.STEPS_PER_EPOCH], state[ckpt.STEP]) == (0, 2, 2)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records] == ["train", "val"] and records[1]["num_samples"] == 8
