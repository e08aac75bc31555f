"""``mvmae demo``: the whole pipeline on a synthetic dataset, on the CPU, in a few minutes.

synth -> extract run (train, val) -> codebook -> pretrain (MGM masking) -> train (2 phases,
motion path: the synthetic classes differ by motion alone) -> eval, each stage through the same
functions the commands use. Re-running with the same ``out``
resumes: finished stages are skipped, training continues from its last checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mvmae.eval.evaluate import EvalConfig, evaluate
from mvmae.eval.metrics import StreamingMetrics
from mvmae.eval.report import plot_training_curves
from mvmae.extract.config import ExtractConfig
from mvmae.job.job import JobConfig, run_job
from mvmae.synth import SynthConfig, make_dataset
from mvmae.train.codebook import CodebookConfig, build_codebook
from mvmae.train.finetune import FinetuneConfig, Finetuner
from mvmae.train.model import ClassifierConfig
from mvmae.train.pretrain import PretrainConfig, Pretrainer
from mvmae.train.tokenizer import TokenSpec

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Sizes of the demo run (defaults: about 4-6 minutes on 2 CPU cores)."""

    out: Path = Path("mvmae-demo")
    num_classes: int = 4
    clips_per_class: int = 16
    num_frames: int = 32
    workers: int = 2
    pretrain_epochs: int = 4
    train_epochs: int = 20
    phase1_epochs: int = 2
    seed: int = 0


def run_demo(cfg: DemoConfig, stage: Callable[[str], None] = lambda s: None) -> dict:
    """Run every stage into ``cfg.out``; returns the evaluation metrics."""
    out = Path(cfg.out)
    data, shards = out / "data", out / "shards"
    spec = TokenSpec(num_frames=16, mv_size=8, iframe_size=64, camera="median")
    if not (data / "val.txt").exists():
        stage("1/6 synth: a motion-defined H.264 dataset")
        make_dataset(data, SynthConfig(num_classes=cfg.num_classes, clips_per_class=cfg.clips_per_class,
                                       num_frames=cfg.num_frames, seed=cfg.seed))
    stage("2/6 extract run: videos -> shards (train, val)")
    for split in ("train", "val"):
        summary = run_job(JobConfig(input=data / f"{split}.txt", out_dir=shards, split=split,
                                    shard_size=8, workers=cfg.workers, extract=ExtractConfig()))
        log.info(f"{split}: {summary.num_ok} videos, {summary.num_samples} samples, "
                 f"{summary.bytes / 1e6:.1f} MB")
    train_urls, val_urls = [str(p) for p in sorted(shards.glob("train-*.tar"))], \
        [str(p) for p in sorted(shards.glob("val-*.tar"))]
    codebook = out / "codebook.npz"
    if not codebook.exists():
        stage("3/6 codebook: k-means over motion tokens")
        build_codebook(train_urls, spec, CodebookConfig(size=64, seed=cfg.seed), workers=0).save(codebook)
    stage("4/6 pretrain: masked motion pretraining (MGM masking)")
    Pretrainer(PretrainConfig(train=train_urls, codebook=str(codebook), out=str(out / "pretrain"),
                              masking="mgm", model_size="micro", epochs=cfg.pretrain_epochs,
                              warmup_epochs=1, batch_size=8, lr=1e-3, workers=0, seed=cfg.seed,
                              resume=True)).run()
    stage("5/6 train: two-phase fine-tuning (phase 1 encoders frozen, phase 2 top blocks at 0.1x LR)")
    # The synthetic classes differ by motion alone and the context backbone would start from
    # random weights here (nothing is downloaded), so the demo trains the motion path.
    model = ClassifierConfig(inputs="mv", motion_size="micro", motion_pool="motion",
                             num_segments=2, dim=64, temporal_heads=4)
    Finetuner(FinetuneConfig(train=train_urls, val=val_urls, out=str(out / "train"),
                             pretrained=str(out / "pretrain" / "last.pt"), model=model, tokens=spec,
                             epochs=cfg.train_epochs, phase1_epochs=cfg.phase1_epochs, lr=1e-3,
                             label_smoothing=0.0, batch_size=8, workers=0, flip_prob=0.0,
                             crop_area=(0.8, 1.0), seed=cfg.seed, resume=True),
              StreamingMetrics).run()
    stage("6/6 eval: single- and multi-view metrics, confusion matrix")
    metrics = evaluate(EvalConfig(ckpt=str(out / "train" / "best.pt"), data=val_urls,
                                  out=str(out / "eval"), clips=2, crops=1, workers=0))
    plot_training_curves(out / "train" / "metrics.jsonl", out / "eval" / "training_curves.png")
    return metrics
