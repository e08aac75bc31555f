"""README's walk-through "From a folder of your own videos to a trained model" runs as written.

The bash block between ``<!-- walkthrough -->`` and ``<!-- /walkthrough -->`` in README.md is run
by bash in a temporary folder, ``mvmae`` being this checkout, at the smaller sizes its variables
allow (``CLIPS``, ``PRETRAIN_EPOCHS``, ``EPOCHS``: the README's defaults take about 2.5 minutes on
two shared cores), then every output the README names is checked and the prediction line must name
one of the classes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import needs
import pytest

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- walkthrough -->", "<!-- /walkthrough -->"
SMALL = {"CLIPS": "6", "PRETRAIN_EPOCHS": "1", "EPOCHS": "2"}  # 4 train + 2 val videos a class


def walkthrough_block(readme: str) -> str:
    """The one bash block between the walk-through's markers."""
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1, f"README.md needs one {BEGIN} ... {END}"
    section = readme[readme.index(BEGIN) + len(BEGIN):readme.index(END)]
    (block,) = re.findall(r"^```bash\n(.*?)^```$", section, flags=re.S | re.M)
    return block


def test_the_block_is_found_and_reads_only_sizes_from_the_environment():
    block = walkthrough_block((REPO / "README.md").read_text(encoding="utf-8"))
    assert block.lstrip().startswith("# 0.") and "mvmae export" in block
    assert set(re.findall(r"\$\{(\w+):-", block)) == set(SMALL)  # every knob has a default


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(tmp_path):
    needs.extra("onnx")  # mvmae export writes ONNX and checks it with onnxruntime
    needs.extra("onnxruntime")
    block = walkthrough_block((REPO / "README.md").read_text(encoding="utf-8"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mvmae").write_text(f'#!/bin/bash\nexec {sys.executable} -m mvmae.cli "$@"\n')
    (bin_dir / "mvmae").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, **SMALL, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(["bash", "-e", "-c", block], cwd=work, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    for path in ("my_videos/circle_cw", "new_video.mp4", "lists/train.txt", "lists/val.txt",
                 "shards/train-000000.tar", "shards/val-000000.tar", "shards/train-manifest.jsonl",
                 "codebook.npz", "runs/pretrain/last.pt", "runs/train/best.pt", "runs/train/metrics.jsonl",
                 "runs/eval/metrics.json", "runs/eval/confusion_matrix.csv", "runs/eval/confusion_matrix.png",
                 "runs/eval/per_class.csv", "runs/eval/predictions.csv", "model.onnx"):
        assert (work / path).exists(), path
    new_video = (work / "new_video.mp4").read_bytes()  # a video no step before predict saw
    assert all(p.read_bytes() != new_video for p in work.glob("my_videos/*/*.mp4"))
    classes = json.loads((work / "lists/classes.json").read_text())
    assert len(classes) == 4
    assert 0 <= json.loads((work / "runs/eval/metrics.json").read_text())["top1"] <= 1
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("new_video.mp4: ")]
    top = re.fullmatch(r"new_video\.mp4: (\w+) ([01]\.\d+), (\w+) ([01]\.\d+)", line)
    assert top and top[1] in classes and top[3] in classes, line
