"""``kill -9`` of one node of a two-node pretraining (two torchrun launchers on loopback, see
``tests/train/nodes.py``) in the middle of the run: the surviving node stops on its own (no hang),
and the same two launches with ``--resume`` end bit-identical to an uninterrupted run. The
reference is the single-node 2-process torchrun of ``test_train_kill.py``: two nodes of one
process each are the same ranks reading the same shards, so they must end identical to it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from train_faults import FolderWatch, assert_same_run, command

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from nodes import kill_nodes, log_text, start_nodes, wait_nodes  # noqa: E402

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 300
SURVIVOR_TIMEOUT_S = 120  # the survivor's next collective fails once its peer's sockets close


def _records(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _mvmae_args(fault_data: dict, out: Path, *flags: str) -> list[str]:
    return command("pretrain", fault_data, out, *flags)[3:]  # without "python -m mvmae.cli"


def test_node_killed_mid_run_then_resumed(fault_data, references, tmp_path):
    reference = references("torchrun")
    out, watch = tmp_path / "run", FolderWatch(tmp_path / "run")
    num_records = len(reference.summary["records"])
    procs = start_nodes(_mvmae_args(fault_data, out), tmp_path / "killed")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        # After epoch 1's records (epochs 0 and 1 checkpointed, 4 more to come): a run of about a
        # second per epoch, so poll fast and without loading checkpoints here.
        while _records(out) < 4:
            assert all(p.poll() is None for p in procs), log_text(tmp_path / "killed", 0)[-3000:]
            assert time.monotonic() < deadline, "the run never got to epoch 2"
            watch.poll(verify=False)
            time.sleep(0.002)
        kill_nodes(procs[1:])
        killed_at = _records(out)
        survivor = wait_nodes(procs[:1], SURVIVOR_TIMEOUT_S)
    finally:
        kill_nodes(procs)
    assert killed_at < num_records, "killed too late: the run had ended"
    assert survivor != [0]  # it noticed its peer's death and failed, instead of finishing alone
    assert _records(out) < num_records
    resumed = start_nodes(_mvmae_args(fault_data, out, "--resume"), tmp_path / "resumed")
    codes = wait_nodes(resumed, RUN_TIMEOUT_S)
    assert codes == [0, 0], log_text(tmp_path / "resumed", 0)[-3000:] + log_text(tmp_path / "resumed", 1)[-3000:]
    watch.poll()
    watch.check()
    assert_same_run(out, reference.summary)
