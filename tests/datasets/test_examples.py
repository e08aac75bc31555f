"""The cluster examples in ``examples/``: every script parses, and the SLURM array extraction runs
as written. No SLURM here: ``srun`` is a stand-in that runs its command once (what it does for a
one-task step) and ``mvmae`` runs this checkout; the array tasks run one after the other with the
variables SLURM gives them. The training scripts (pretrain.sbatch, then train.sbatch) run as
written on two "nodes" in ``tests/train/test_distributed_nodes.py``, whose multi-node claims they
carry."""

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
