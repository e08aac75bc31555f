"""Fixtures of the training tests: small motion-defined synthetic datasets in shards, and a
codebook learnt from one (real H.264 clips through ``run_job``, no mocks; ``synth_data``); another
process that tries to lock run folders."""

from __future__ import annotations

import gc
import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

import synth_data
from synth_data import EXTRACT_WORKERS, SYNTH_CLASSES, SYNTH_FRAMES, brace


@pytest.fixture(scope="session")
def synth_shards(tmp_path_factory) -> dict:
    """``synth_data.synth_shards``: 12 train videos in 3 shards, 4 val videos in 1 (the
    training fault tests share it). Read-only for tests."""
    return synth_data.synth_shards(tmp_path_factory)


@pytest.fixture(scope="session")
def synth_codebook(synth_shards, tmp_path_factory) -> Path:
    """``synth_data.synth_codebook``: 32 codes of the train shards' tokens (16 frames, 8x8 cells,
    tubelet 2x1). Read-only for tests."""
    return synth_data.synth_codebook(tmp_path_factory)


# The acceptance dataset of the fine-tuning tests: enough validation clips for a top-1 that
# means something (6 per class; one error costs 4.2 points), few enough training clips that an
# epoch stays about a second. 4 classes x 24 clips of 32 frames, val_ratio 0.25 -> 18 train and
# 6 val clips per class: 72 train videos (9 shards of 8), 24 val videos (3 shards of 8).
MOTION_CLIPS_PER_CLASS, MOTION_VAL_RATIO, MOTION_SHARD_SIZE = 24, 0.25, 8


@pytest.fixture(scope="session")
def motion_shards(tmp_path_factory) -> dict:
    """A larger ``mvmae.synth`` dataset in shards of 8 (about 15 s): the classes differ by the
    direction of the actor's motion alone, so only the motion path can tell them apart.

    Same keys as ``synth_shards``: ``{"dir", "shards", "train", "val", "num_train": 72,
    "num_val": 24}``. Read-only for tests.
    """
    from mvmae.job.job import JobConfig, run_job
    from mvmae.synth import SynthConfig, make_dataset

    root = tmp_path_factory.mktemp("motion_shards")
    cfg = SynthConfig(num_classes=SYNTH_CLASSES, clips_per_class=MOTION_CLIPS_PER_CLASS,
                      num_frames=SYNTH_FRAMES, size=(128, 160), val_ratio=MOTION_VAL_RATIO)
    lists = make_dataset(root / "data", cfg)
    shards = root / "shards"
    counts = {}
    for split in ("train", "val"):
        summary = run_job(JobConfig(input=lists[split], out_dir=shards, split=split,
                                    shard_size=MOTION_SHARD_SIZE, workers=EXTRACT_WORKERS))
        assert summary.num_failed == 0 and not summary.shards_failed, summary
        counts[split] = summary.num_samples
    gc.collect()  # synth_data.EXTRACT_WORKERS
    return {"dir": root / "data", "shards": shards, "train": brace(shards, "train"),
            "val": brace(shards, "val"), "num_train": counts["train"], "num_val": counts["val"]}


REPO = Path(__file__).resolve().parents[2]
# Another process, started once: ``lock_folder(PATH).close()`` for each PATH line on stdin, one JSON
# line back: the exit status and stderr that ``python -c`` of the same call would have ended with.
_LOCKER = """\
import json, sys, traceback
from pathlib import Path
from mvmae.train.run_folder import lock_folder
print(json.dumps("ready"), flush=True)
for line in sys.stdin:
    try:
        lock_folder(Path(line.rstrip("\\n"))).close()
    except Exception as exc:
        reply = {"returncode": 1, "stderr": "".join(traceback.format_exception_only(exc))}
    else:
        reply = {"returncode": 0, "stderr": ""}
    print(json.dumps(reply), flush=True)
"""


@pytest.fixture(scope="session")
def other_process_locks():
    """``other_process_locks(out) -> CompletedProcess``: another process (not this one, nor a fork
    of it) tries ``lock_folder(out)`` and closes it: exit status 1 and the ResumeError in stderr
    when refused. One process for the session answers every call (each start-up of one that
    imports torch costs seconds); it holds no lock between calls."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _LOCKER], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)

    def reply() -> object:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "the locking process did not answer in 120 s"
        line = proc.stdout.readline()
        assert line, f"the locking process ended (exit status {proc.wait()})"
        return json.loads(line)

    def locks(out: Path) -> subprocess.CompletedProcess:
        proc.stdin.write(f"{out}\n")
        proc.stdin.flush()
        answer = reply()
        return subprocess.CompletedProcess([str(out)], answer["returncode"], "", answer["stderr"])

    try:
        assert reply() == "ready"
        yield locks
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
