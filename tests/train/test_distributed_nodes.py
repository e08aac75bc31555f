"""Multi-node ``pretrain`` and ``train`` through the SLURM scripts as written
(``examples/slurm/pretrain.sbatch``, then ``train.sbatch``: its fine-tuning and its evaluation), on
two "nodes" of one process each on this machine. No SLURM here: ``srun`` is a stand-in that starts
its command once per node (SLURM_NNODES copies at once, each node's output in its own log),
``scontrol show hostnames`` names this machine, ``torchrun`` and ``mvmae`` are this checkout's, gloo
on loopback. Each rank reads its own share of shards that do not divide evenly over ranks x
DataLoader workers (5 shards for 2 ranks x 2 workers in pretraining; 3 in fine-tuning, fewer
than the 4 readers): every epoch is the equal epoch sized from the manifest on both ranks, no epoch hangs, checkpoints and logs are written once, and validation over
both ranks equals one process evaluating the same checkpoint on the same shards.

One launch of each script serves every claim (a launch costs several interpreter start-ups with
torch): the fine-tuning starts from the pretraining's checkpoint, as the scripts chain them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mvmae.train import checkpoint as ckpt
from nodes import free_port, kill_nodes, node_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600
PRETRAIN = {"model_size": "micro", "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
            "masking": "mgm", "batch_size": 2, "workers": 2, "epochs": 2, "warmup_epochs": 1,
            "lr": 3e-4, "log_every": 1, "seed": 0}
TRAIN = {"model": {"inputs": "mv", "motion_size": "micro", "num_segments": 2, "dim": 32, "temporal_heads": 4},
         "tokens": {"num_frames": 16, "mv_size": 8, "iframe_size": 64, "tubelet_frames": 4},
         "epochs": 2, "phase1_epochs": 1, "unfreeze_blocks": 1, "batch_size": 2, "val_batch_size": 2,
         "workers": 2, "lr": 1e-3, "warmup_epochs": 1, "label_smoothing": 0.0, "flip_prob": 0.0,
         "crop_area": [0.8, 1.0], "seed": 0}


@pytest.fixture(scope="module")
def uneven_shards(synth_shards, tmp_path_factory) -> dict:
    """The synthetic videos again, in shards of 2: train = the first 5 shards (10 videos), val =
    2 shards (4 videos)."""
    from mvmae.job.job import JobConfig, run_job

    shards = tmp_path_factory.mktemp("uneven_shards")
    for split in ("train", "val"):
        summary = run_job(JobConfig(input=synth_shards["dir"] / f"{split}.txt", out_dir=shards, split=split,
                                    shard_size=2))
        assert summary.num_failed == 0
    return {"train": str(shards / "train-{000000..000004}.tar"), "val": str(shards / "val-{000000..000001}.tar"),
            "num_val": 4, "shards": shards}


def _yaml(folder: Path, name: str, values: dict) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _records(out: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def _cluster_stand_ins(folder: Path) -> Path:
    """``srun`` that runs its command once per node (SLURM_NNODES copies at once, node i's output
    in ``$MVMAE_NODE_LOGS/node<i>.log``), ``scontrol show hostnames`` naming this machine,
    ``torchrun`` and ``mvmae`` of this checkout."""
    folder.mkdir(parents=True)
    scripts = {
        "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                'for node in $(seq 0 $((SLURM_NNODES - 1))); do "$@" > "$MVMAE_NODE_LOGS/node$node.log" 2>&1 & done\n'
                'status=0; for job in $(jobs -p); do wait "$job" || status=1; done; exit $status\n',
        "scontrol": "#!/bin/bash\necho 127.0.0.1\n",
        "torchrun": f"#!/bin/bash\nexec {sys.executable} -m torch.distributed.run \"$@\"\n",
        "mvmae": f"#!/bin/bash\nexec {sys.executable} -m mvmae.cli \"$@\"\n",
    }
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


@dataclass
class Launch:
    """One ``bash examples/slurm/SCRIPT``: its exit status, its own output (what runs outside
    srun), and each node's log."""

    returncode: int
    output: str
    nodes: list[str]

    def tail(self) -> str:
        return "\n".join(text[-3000:] for text in (self.output, *self.nodes))


def sbatch(script: str, args: list[str], folder: Path) -> Launch:
    """``bash examples/slurm/SCRIPT ARGS`` as SLURM would start it on 2 nodes (job 17), with the
    stand-ins first on the PATH; logs under ``folder``. Past TIMEOUT_S (a hang) every process
    below it is killed and the test fails."""
    logs = folder / "logs"
    logs.mkdir(parents=True)
    bin_dir = _cluster_stand_ins(folder / "bin")
    env = {**node_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "17", "SLURM_SUBMIT_DIR": str(REPO),
           "MVMAE_RDZV_PORT": str(free_port()), "MVMAE_NODE_LOGS": str(logs)}
    proc = subprocess.Popen(["bash", str(REPO / "examples/slurm" / script), *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_nodes([proc])  # the script, srun's copies, the launchers and their workers
        raise AssertionError(f"{script} was still running after {TIMEOUT_S} s: an epoch hung") from None
    nodes = [(logs / f"node{i}.log").read_text(errors="replace") if (logs / f"node{i}.log").exists() else ""
             for i in range(2)]
    return Launch(proc.returncode, output, nodes)


def _written_once(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir() if p.is_file() and p.name != ".lock") == [
        "best.pt", "config.yaml", "epoch_0000.pt", "epoch_0001.pt", "last.pt", "metrics.jsonl"]


@pytest.fixture(scope="module")
def pretrained(uneven_shards, synth_codebook, tmp_path_factory) -> dict:
    """pretrain.sbatch (PRETRAIN) on the 5 uneven train shards: ``{"out": run folder, "launch"}``."""
    folder = tmp_path_factory.mktemp("pretrain_sbatch")
    out = folder / "run"
    launch = sbatch("pretrain.sbatch", [uneven_shards["train"], str(synth_codebook), str(out),
                                        _yaml(folder, "pretrain", PRETRAIN)], folder)
    assert launch.returncode == 0, launch.tail()
    return {"out": out, "launch": launch}


def test_two_nodes_pretrain_over_uneven_shards(pretrained):
    """5 shards of 2 for 2 ranks x 2 workers (3 + 2 per rank; 2 + 1 and 1 + 1 per worker): each
    epoch is the equal epoch of 10 // (2 ranks x batch 2) = 2 batches on every rank (a rank that
    ran dry would end the epoch early for all, ``in_lockstep``: fewer steps), and both nodes finish."""
    out = pretrained["out"]
    assert [log.count("pretraining done") for log in pretrained["launch"].nodes] == [1, 1]
    _written_once(out)
    state = ckpt.load_checkpoint(out / "last.pt")
    assert state[ckpt.EPOCH] == 1 and state[ckpt.STEPS_PER_EPOCH] == 10 // (2 * PRETRAIN["batch_size"])
    assert state[ckpt.STEP] == 2 * state[ckpt.STEPS_PER_EPOCH]
    epochs = _records(out, "epoch")
    assert [r["epoch"] for r in epochs] == [0, 1] and all(math.isfinite(r["loss"]) for r in epochs)


def test_two_nodes_train_validate_like_one_process(pretrained, uneven_shards, synth_shards, tmp_path):
    """train.sbatch from the pretraining's last.pt, on 3 train shards of 4, fewer than 2 ranks x 2
    workers (the first shard is shared sample by sample): both nodes finish, every epoch the equal
    epoch of 12 // (2 x 2) = 3 batches per rank; val metrics (each rank scores its own
    val shard, gathered) equal ``mvmae eval`` of the last checkpoint in one process over the same
    val shards; the script's own evaluation of best.pt (4 clips x 2 crops) covers every val video."""
    out = tmp_path / "run"
    classes = synth_shards["shards"] / "classes.json"
    launch = sbatch("train.sbatch", [synth_shards["train"], uneven_shards["val"], str(classes),
                                     str(pretrained["out"] / "last.pt"), str(out), _yaml(tmp_path, "train", TRAIN)],
                    tmp_path)
    assert launch.returncode == 0, launch.tail()
    assert [log.count("training done") for log in launch.nodes] == [1, 1]
    _written_once(out)
    state = ckpt.load_checkpoint(out / "last.pt")
    assert (state[ckpt.STEPS_PER_EPOCH], state[ckpt.STEP]) == (3, 2 * 3)
    script_eval = json.loads((out / "eval/metrics.json").read_text())
    assert (script_eval["num_samples"], script_eval["views"]) == (uneven_shards["num_val"], 8)
    last_val = _records(out, "val")[-1]
    assert last_val["epoch"] == 1 and last_val["num_samples"] == uneven_shards["num_val"]
    report = tmp_path / "eval"
    result = subprocess.run([sys.executable, "-m", "mvmae.cli", "eval", "--ckpt", str(out / "last.pt"),
                             "--data", uneven_shards["val"], "--out", str(report), "--workers", "0"],
                            env=node_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    single = json.loads((report / "metrics.json").read_text())
    for name in ("top1", "top5", "macro_f1", "macro_precision", "macro_recall"):
        assert last_val[name] == pytest.approx(single[name], abs=1e-6), name
