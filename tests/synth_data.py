"""The small synthetic dataset in real shards, and the codebook learnt from it, that the training
tests (``tests/train/conftest.py``) and the training fault tests (``tests/faults/train_faults.py``)
share: real H.264 clips of ``mvmae.synth`` through ``run_job`` and ``build_codebook``, no mocks.

Built once per session under the session's temporary folder, by whichever test asks first
(the fault modules import their fixtures, which pytest would otherwise build once per module).
Read-only for tests.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

# 4 classes x 4 clips of 32 frames, 128x160 px; val_ratio 0.25 puts one clip per class in val:
# 12 train videos (3 shards of 4) and 4 val videos (1 shard).
SYNTH_CLASSES, SYNTH_CLIPS_PER_CLASS, SYNTH_FRAMES = 4, 4, 32
SHARD_SIZE = 4

# The shared datasets are extracted in the test process (``workers=0``): a spawned extraction
# worker costs its start-up per job, and what is tested here is what the shards hold, not the
# supervision (tests/job, tests/faults). Then ``gc.collect()``: PyAV objects left as garbage in
# this process would be freed in a forked DataLoader worker, which hangs joining FFmpeg threads it
# does not have (as ``reader_dataset`` in tests/shards/conftest.py).
EXTRACT_WORKERS = 0

# The codebook the pretraining tests share: small enough that a micro model runs an epoch in
# about a second (16 frames, 8x8 cells -> 8 x 8 x 8 = 512 tokens of dim 4 per clip).
CODEBOOK_SIZE, CODEBOOK_FRAMES, CODEBOOK_MV_SIZE = 32, 16, 8


def brace(folder: Path, split: str) -> str:
    """The brace pattern of every ``<split>-NNNNNN.tar`` in ``folder`` (they are numbered from 0)."""
    num_shards = len(list(folder.glob(f"{split}-[0-9]*.tar")))
    assert num_shards > 0, f"no {split} shards in {folder}"
    return str(folder / f"{split}-{{000000..{num_shards - 1:06d}}}.tar")


def _cached(root: Path, build) -> dict:
    """``build(root)`` once per session: its JSON-able result is kept beside what it built."""
    ready = root / "ready.json"
    if not ready.exists():
        shutil.rmtree(root, ignore_errors=True)  # what a failed build left
        root.mkdir(parents=True)
        ready.write_text(json.dumps(build(root)))
    return json.loads(ready.read_text())


def _build_shards(root: Path) -> dict:
    from mvmae.job.job import JobConfig, run_job
    from mvmae.synth import SynthConfig, make_dataset

    cfg = SynthConfig(num_classes=SYNTH_CLASSES, clips_per_class=SYNTH_CLIPS_PER_CLASS,
                      num_frames=SYNTH_FRAMES, size=(128, 160))
    lists = make_dataset(root / "data", cfg)
    shards = root / "shards"
    counts = {}
    for split in ("train", "val"):
        summary = run_job(JobConfig(input=lists[split], out_dir=shards, split=split, shard_size=SHARD_SIZE,
                                    workers=EXTRACT_WORKERS))
        assert summary.num_failed == 0 and not summary.shards_failed, summary
        counts[split] = summary.num_samples
    gc.collect()
    return {"dir": str(root / "data"), "shards": str(shards), "train": brace(shards, "train"),
            "val": brace(shards, "val"), "num_train": counts["train"], "num_val": counts["val"]}


def synth_shards(tmp_path_factory) -> dict:
    """``mvmae.synth`` dataset extracted by ``run_job`` into shards of 4 videos (about 5 s).

    ``{"dir": dataset folder (videos/, train.txt, val.txt), "shards": shard folder, "train":
    brace pattern of the 3 train shards (12 samples), "val": brace pattern of the 1 val shard
    (4 samples), "num_train": 12, "num_val": 4}``.
    """
    data = _cached(tmp_path_factory.getbasetemp() / "synth_shards", _build_shards)
    return {**data, "dir": Path(data["dir"]), "shards": Path(data["shards"])}


def synth_codebook(tmp_path_factory) -> Path:
    """A 32-code codebook of the train shards (16 frames, 8x8 cells, tubelet 2x1, one centre clip
    per video), learnt by ``build_codebook`` (what ``mvmae codebook`` runs)."""
    from mvmae.train.codebook import CodebookConfig, build_codebook
    from mvmae.train.tokenizer import TokenSpec

    shards = synth_shards(tmp_path_factory)

    def build(root: Path) -> dict:
        spec = TokenSpec(num_frames=CODEBOOK_FRAMES, mv_size=CODEBOOK_MV_SIZE)
        book = build_codebook([shards["train"]], spec, CodebookConfig(size=CODEBOOK_SIZE),
                              clips_per_video=1, batch_size=8, workers=0)
        return {"path": str(book.save(root / "codebook.npz"))}

    return Path(_cached(tmp_path_factory.getbasetemp() / "synth_codebook", build)["path"])
