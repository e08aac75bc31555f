"""``benchmarks/gpu_check.py``: the real check where CUDA is (marker ``gpu``, skipped without a
device), and its CPU dry run, which runs every row's code path (gloo, float32, micro models)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout_s)


def _table_rows(stdout: str) -> dict[str, str]:
    """{check: its 'ok' cell} of the printed table."""
    rows = [line.split("|")[1:3] for line in stdout.splitlines() if line.startswith("| ")]
    return {name.strip(): ok.strip() for name, ok in rows[1:]}  # rows[0]: the header


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_passes_on_cuda() -> None:
    proc = _run(timeout_s=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = _table_rows(proc.stdout)
    assert len(rows) == 9 and set(rows.values()) == {"yes"}, rows
    assert "backend nccl" in proc.stdout and "bf16 autocast True" in proc.stdout


@pytest.mark.slow
def test_cpu_dry_run_runs_every_row() -> None:
    proc = _run("--cpu-dry-run", timeout_s=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = _table_rows(proc.stdout)
    assert list(rows) == ["pretrain, eager", "ViT-S step, pretrain's tokens, eager", "train, eager",
                          "ViT-S step, train's tokens, eager", "I-frame JPEG decode"], rows
    assert set(rows.values()) == {"yes"}, proc.stdout
    assert "backend gloo" in proc.stdout
