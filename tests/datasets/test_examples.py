"""The cluster examples in ``examples/``: every script parses, and the SLURM array extraction runs
as written. No SLURM here: ``srun`` is a stand-in that runs its command once (what it does for a
one-task step) and ``mvmae`` runs this checkout; the array tasks run one after the other with the
variables SLURM gives them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from dataset_trees import place

from mvmae.cli import main

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in (REPO / "examples").rglob("*") if p.suffix in (".sh", ".sbatch"))


def test_examples_exist():
    names = {p.relative_to(REPO / "examples").as_posix() for p in SCRIPTS}
    assert {"slurm/extract.sbatch", "slurm/pretrain.sbatch", "slurm/train.sbatch", "ray/extract.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _stand_ins(folder: Path) -> Path:
    """``srun`` (drops its options, runs the command) and ``mvmae`` (this checkout) on a PATH."""
    folder.mkdir(parents=True)
    (folder / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (folder / "mvmae").write_text(f'#!/bin/bash\nexec {sys.executable} -m mvmae.cli "$@"\n')
    for name in ("srun", "mvmae"):
        (folder / name).chmod(0o755)
    return folder


def test_slurm_array_extraction_as_written(tiny_clips, tmp_path):
    """Two array tasks (ids 3 and 4 of --array=3-4) of extract.sbatch on a folder split's list, in
    shards of one video: task 3 is part 0/2, task 4 part 1/2, together the whole job, every video
    in the manifest once."""
    root = tmp_path / "videos"
    for name in ("jump", "run"):
        for i in range(3):
            place(tiny_clips[".mp4"], root / name / f"{name}{i}.mp4")
    assert CliRunner().invoke(main, ["datasets", "folders", str(root), "--out", str(tmp_path / "lists")]).exit_code == 0
    bin_dir = _stand_ins(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_CPUS_PER_TASK": "1"}
    out = tmp_path / "shards"
    for task in ("3", "4"):
        script = [str(REPO / "examples/slurm/extract.sbatch"), str(tmp_path / "lists/train.txt"), str(out),
                  "train", "--shard-size", "1"]
        result = subprocess.run(["bash", *script], env={**env, "SLURM_ARRAY_TASK_ID": task}, cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        if task == "3":  # part 0 of 2: shards 0 and 2 of the 4
            assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "train-000002.tar"]
    manifest = [json.loads(line) for line in (out / "train-manifest.jsonl").read_text().splitlines()]
    assert sorted(Path(row["source"]).name for row in manifest) == ["jump0.mp4", "jump2.mp4", "run0.mp4", "run1.mp4"]
    assert all(row["status"] == "ok" for row in manifest)


# --- the training scripts: two "nodes" on this machine ----------------------------------------

TINY_PRETRAIN = {"model_size": "micro", "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
                 "batch_size": 2, "workers": 0, "epochs": 1, "warmup_epochs": 0}
TINY_TRAIN = {"model": {"inputs": "mv", "motion_size": "micro", "num_segments": 2, "dim": 32, "temporal_heads": 4},
              "tokens": {"num_frames": 16, "mv_size": 8, "iframe_size": 64, "tubelet_frames": 4},
              "epochs": 1, "phase1_epochs": 1, "batch_size": 2, "val_batch_size": 2, "workers": 0,
              "warmup_epochs": 0, "flip_prob": 0.0}


def _cluster_stand_ins(folder: Path) -> Path:
    """``srun`` that runs its command once per node (SLURM_NNODES copies at once), ``scontrol show
    hostnames`` naming this machine, ``torchrun`` and ``mvmae`` of this checkout."""
    _stand_ins(folder)
    (folder / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                                 'for _ in $(seq "$SLURM_NNODES"); do "$@" & done\n'
                                 'status=0; for job in $(jobs -p); do wait "$job" || status=1; done; exit $status\n')
    (folder / "scontrol").write_text('#!/bin/bash\necho 127.0.0.1\n')
    (folder / "torchrun").write_text(f'#!/bin/bash\nexec {sys.executable} -m torch.distributed.run "$@"\n')
    for name in ("srun", "scontrol", "torchrun"):
        (folder / name).chmod(0o755)
    return folder


def _sbatch(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bin_dir = _cluster_stand_ins(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "CUDA_VISIBLE_DEVICES": "",
           "GLOO_SOCKET_IFNAME": "lo", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "17",
           "SLURM_SUBMIT_DIR": str(REPO), "MVMAE_RDZV_PORT": str(port)}
    result = subprocess.run(["bash", str(REPO / "examples/slurm" / script), *args], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    (tmp_path / "output.log").write_text(result.stdout + result.stderr)
    return result


@pytest.mark.slow
def test_slurm_pretrain_and_train_as_written(tmp_path_factory, tmp_path):
    """pretrain.sbatch then train.sbatch (its fine-tuning and evaluation) on two nodes of one
    process each, with tiny configs in place of the recipes: both end, with one set of outputs."""
    import synth_data
    import yaml

    shards, codebook = synth_data.synth_shards(tmp_path_factory), synth_data.synth_codebook(tmp_path_factory)
    configs = {}
    for name, values in (("pretrain", TINY_PRETRAIN), ("train", TINY_TRAIN)):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(values))
    runs = tmp_path / "runs"
    result = _sbatch("pretrain.sbatch", [shards["train"], str(codebook), str(runs / "pretrain"),
                                         str(configs["pretrain"])], tmp_path / "pretrain")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("pretraining done") == 2
    classes = shards["shards"] / "classes.json"
    result = _sbatch("train.sbatch", [shards["train"], shards["val"], str(classes), str(runs / "pretrain/last.pt"),
                                      str(runs / "train"), str(configs["train"])], tmp_path / "train")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("training done") == 2
    metrics = json.loads((runs / "train/eval/metrics.json").read_text())
    assert metrics["num_samples"] == shards["num_val"]
