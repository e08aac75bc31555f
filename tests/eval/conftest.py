"""Helpers for tests/eval: one real 2-process torchrun launch (gloo, CPU) shared by the gather
tests of metrics and views (each launch costs about 10 s of interpreter start-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("gather_worker.py")


@pytest.fixture(scope="session")
def gathered(tmp_path_factory) -> list[dict]:
    """What each of two torchrun ranks ended with after running ``gather_worker.py``."""
    out = tmp_path_factory.mktemp("gather")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(out)]
    result = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
