"""What the learning benchmarks share: the trajectories set in shards, its codebook, runs of
``mvmae pretrain`` / ``mvmae train`` (in-process, cached), test-set scores and paired statistics.

Every run goes through the same ``Pretrainer`` / ``Finetuner`` the commands use, into its own
folder under the work dir, and leaves a ``result.json`` there: a second invocation reuses it, so a
benchmark killed half-way resumes where it stopped. Scores are on the **test** split (the gates
and defaults were chosen on val), from the run's last checkpoint: no early stopping on test.

Sizes are for 2 CPU cores: 12 classes x 80 clips (48 train / 16 val / 16 test per class) of 64
frames at 128x160, a pool of unlabelled clips, clips of 4 segments x 16 MV frames on 8x8 cells in
tubelets of 4 frames x 1 cell (4 x 8 x 8 = 256 tokens a segment), a micro Motion encoder.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvmae.eval.evaluate import EvalConfig, evaluate
from mvmae.eval.metrics import StreamingMetrics
from mvmae.job.job import JobConfig, run_job
from mvmae.synth import SynthConfig, make_dataset
from mvmae.train.codebook import CodebookConfig, build_codebook
from mvmae.train.config import load_config
from mvmae.train.finetune import FinetuneConfig, Finetuner
from mvmae.train.pretrain import PretrainConfig, Pretrainer
from mvmae.train.tokenizer import TokenSpec

log = logging.getLogger("benchmarks.learning")

# scale_px 0.5: vectors are in px of the 64-px output frame, where the set's actors move 0.3-1 px
# per frame; at the default 4 the tokens' standard deviation is 0.04 (RESULTS.md, issue 14).
SPEC = TokenSpec(num_frames=16, mv_size=8, iframe_size=64, tubelet_frames=4, tubelet_cells=1, scale_px=0.5)
SEGMENTS = 4
# What the benchmark fine-tunes besides the command's defaults: the size of the model (a CPU
# budget); one LR of 3e-4 for every part of a model from scratch, in batches of 16 (1e-3 for the
# new parts made the mean-pooled transformer predict one class; the default 5e-5 is sized for
# pretrained encoders and long runs); crops that keep the actor in view; quarter turns (the set's
# paths have random orientations); and the data loading of an in-process run. RESULTS.md, issue 14.
FINETUNE = {"model.inputs": "mv", "model.motion_size": "micro", "model.num_segments": SEGMENTS,
            "tokens.num_frames": SPEC.num_frames, "tokens.mv_size": SPEC.mv_size,
            "tokens.iframe_size": SPEC.iframe_size, "tokens.tubelet_frames": SPEC.tubelet_frames,
            "tokens.scale_px": SPEC.scale_px, "lr": 3e-4, "batch_size": 16, "scratch_lr_scale": 1.0,
            "crop_area": (0.8, 1.0), "rotate": True, "workers": 0}
PRETRAIN = {"model_size": "micro", "decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 2,
            "batch_size": 16, "workers": 0, "keep_last": 1000}


@dataclass
class Data:
    """Shard URLs of the set: train / val / test / pool (lists of local paths) and the codebook."""

    train: list[str]
    val: list[str]
    test: list[str]
    pool: list[str]
    codebook: str
    classes: str
    name: str = "traj"

    def run_dir(self, work: Path, run: str) -> Path:
        """Where run ``run`` on this set lives: runs of different sets never share a cache."""
        return work / "runs" / self.name / run


def _shards(folder: Path, split: str) -> list[str]:
    return [str(p) for p in sorted(folder.glob(f"{split}-[0-9]*.tar"))]


def build_data(work: Path, clips_per_class: int = 80, pool: int = 1440, seed: int = 0,
               codebook_size: int = 128) -> Data:
    """The trajectories set (``mvmae synth --preset trajectories``) in shards, and a codebook of
    the train + pool clips; each step skipped when its output is there."""
    root = work / f"traj-c{clips_per_class}-p{pool}-s{seed}"
    lists = {s: root / "data" / f"{s}.txt" for s in ("train", "val", "test", "unlabelled")}
    if not all(p.exists() for p in lists.values()):
        cfg = SynthConfig(preset="trajectories", clips_per_class=clips_per_class, val_ratio=0.2,
                          test_ratio=0.2, num_unlabelled=pool, seed=seed)
        make_dataset(root / "data", cfg, num_workers=2)
    shards, pool_dir = root / "shards", root / "pool"
    for split in ("train", "val", "test"):
        run_job(JobConfig(input=lists[split], out_dir=shards, split=split, shard_size=16, workers=2))
    run_job(JobConfig(input=lists["unlabelled"], out_dir=pool_dir, split="pool", shard_size=32, workers=2))
    codebook = root / f"codebook-{codebook_size}-scale{SPEC.scale_px:g}.npz"
    if not codebook.exists():
        urls = _shards(shards, "train") + _shards(pool_dir, "pool")
        build_codebook(urls, SPEC, CodebookConfig(size=codebook_size, seed=seed), workers=0).save(codebook)
    return Data(_shards(shards, "train"), _shards(shards, "val"), _shards(shards, "test"),
                _shards(pool_dir, "pool"), str(codebook), str(shards / "classes.json"), root.name)


def _cached(out: Path, run) -> dict:
    """``run()``'s result, kept in ``out/result.json`` (a later call returns it unrun)."""
    path = out / "result.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    result = {**run(), "seconds": round(time.perf_counter() - t0, 1)}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def pretrain(work: Path, name: str, data: Data, masking: str, epochs: int, seed: int,
             urls: list[str] | None = None, **options) -> Path:
    """A pretraining run of ``epochs`` over the pool + train clips (or ``urls``); returns its
    folder (``last.pt``, ``epoch_NNNN.pt``, ``metrics.jsonl`` with the pretext diagnostics)."""
    out = data.run_dir(work, name)
    values = {**PRETRAIN, "train": urls or (data.pool + data.train), "codebook": data.codebook,
              "out": str(out), "masking": masking, "epochs": epochs, "warmup_epochs": min(2, epochs),
              "seed": seed, "lr": 1e-3, "resume": True, **options}
    _cached(out, lambda: Pretrainer(load_config(PretrainConfig, None, values)).run())
    return out


def epoch_records(folder: Path, split: str = "epoch") -> list[dict]:
    """The per-epoch records of a run's ``metrics.jsonl``."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == split]


def finetune(work: Path, name: str, data: Data, seed: int, label_fraction: float = 1.0,
             label_seed: int = 0, pretrained: str = "", epochs: int = 50, validate: bool = True,
             **options) -> dict:
    """A fine-tuning run (the command's defaults but for ``FINETUNE`` and ``options``), then its
    last checkpoint scored on the test split: ``{test_top1, test_macro_f1, val_*, train_acc}``.
    ``validate=False``: no validation after each epoch (no ``val_*``; a validation pass draws from
    the global RNG, so runs to be paired must agree on it), several times faster at 10% labels."""
    out = data.run_dir(work, name)

    def run() -> dict:
        values = {**FINETUNE, "train": data.train, "val": data.val if validate else [],
                  "classes": data.classes, "out": str(out), "seed": seed, "label_fraction": label_fraction,
                  "label_seed": label_seed, "pretrained": pretrained, "epochs": epochs, **options}
        val = Finetuner(load_config(FinetuneConfig, None, values), StreamingMetrics).run()
        test = evaluate(EvalConfig(ckpt=str(out / "last.pt"), data=data.test, out=str(out / "test"),
                                   workers=0))
        train = epoch_records(out, "train")[-1]
        scores = {"val_top1": val["top1"], "val_macro_f1": val["macro_f1"]} if validate else {}
        return {"test_top1": test["top1"], "test_macro_f1": test["macro_f1"], **scores, "train_acc": train["acc"]}

    return _cached(out, run)


def bootstrap_ci(values: list[float], seed: int = 0, rounds: int = 10_000) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of the bootstrap means) of ``values``."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (rounds, len(x)))].mean(axis=1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def one_thread() -> None:
    """One intra-op thread: two cores shared with other jobs spin with more (pretrain_masking.py)."""
    torch.set_num_threads(1)


def arguments(doc: str, seeds: list[int]) -> argparse.ArgumentParser:
    """The options every learning benchmark has: --seeds, --pool, --work-dir."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--pool", type=int, default=1440, help="unlabelled clips")
    parser.add_argument("--clips-per-class", type=int, default=80,
                        help="labelled clips per class, split 60/20/20 %% train/val/test")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/mvmae-bench-learning"),
                        help="data and runs (cached: a second run resumes)")
    return parser


def start(args: argparse.Namespace, title: str) -> Data:
    """Quiet logs, one thread, the header line; the data, built or reused."""
    from common import cpu_model, git_state, loadavg

    logging.basicConfig(level=logging.WARNING)
    one_thread()
    print(f"# {title} -- {git_state()}, {cpu_model()}, load {loadavg()}")
    return build_data(args.work_dir, clips_per_class=args.clips_per_class, pool=args.pool)
