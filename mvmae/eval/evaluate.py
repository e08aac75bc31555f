"""``mvmae eval``: a trained classifier on shards, single-view and multi-view, with a report.

Single view: the centred clip with the centre crop. Multi view: ``clips`` evenly spaced clips x
``crops`` crops (``center``, then ``full``: the whole frame squeezed), softmax scores averaged per
video. Batches stream through; scores are accumulated per video, so memory stays bounded by the
number of videos times classes. A sample no clip can be cut from (damaged, or without the
I-frames the model needs) is skipped, named in a warning and counted (``num_samples_skipped``,
per view pass), as training does; ``max_skip_ratio`` makes too many an error. A shard that cannot
be read is an error naming its URL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from mvmae.eval.metrics import classification_metrics, confusion_matrix
from mvmae.eval.report import prediction_records, write_report
from mvmae.eval.views import ViewAggregator
from mvmae.shards.reader import build_eval_pipeline, eval_skips, make_loader
from mvmae.train.finetune import load_classifier
from mvmae.train.model import classifier_clip

log = logging.getLogger(__name__)

CROPS = ("center", "full")


@dataclass
class EvalConfig:
    ckpt: str = ""
    data: list[str] = field(default_factory=list)
    out: str = "runs/eval"
    clips: int = 1
    crops: int = 1
    batch_size: int = 16
    workers: int = 2
    device: str = "auto"
    max_skip_ratio: float | None = None  # of the samples read; None: no limit (as training)

    def __post_init__(self) -> None:
        if self.clips < 1 or not 1 <= self.crops <= len(CROPS):
            raise ValueError(f"clips must be >= 1 and crops in 1..{len(CROPS)}")
        if self.max_skip_ratio is not None and not 0.0 <= self.max_skip_ratio < 1.0:
            raise ValueError(f"max_skip_ratio must be in [0, 1), got {self.max_skip_ratio}")


@torch.no_grad()
def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation and write the report into ``cfg.out``; returns metrics.json's content:
    the main numbers (multi-view when there are several views, else single-view) and both sets
    prefixed ``single_view_`` / ``multi_view_``."""
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else "cpu" if cfg.device == "auto" else cfg.device)
    model, classes, train_cfg = load_classifier(cfg.ckpt, device)
    num_classes = len(classes)
    single = ViewAggregator(num_classes)
    multi = ViewAggregator(num_classes)
    skipped = 0
    for crop in CROPS[: cfg.crops]:
        clip = classifier_clip(train_cfg.model, train_cfg.tokens, "multi" if cfg.clips > 1 else "center",
                               num_clips=cfg.clips, eval_crop=crop)
        pipeline = build_eval_pipeline(cfg.data, clip, cfg.batch_size, handler=eval_skips(cfg.max_skip_ratio))
        loader = make_loader(pipeline, cfg.workers)
        for batch in tqdm(loader, desc=f"eval ({crop} crop)", unit="batch", leave=False):
            logits = model(*(batch[k].to(device) for k in ("mv", "valid", "iframes"))).float().cpu()
            multi.update(logits, batch["key"], batch["label"])
            first = (batch["clip_index"] == 0).numpy() if crop == "center" else np.zeros(len(logits), bool)
            if first.any():
                keys = [k for k, f in zip(batch["key"], first) if f]
                single.update(logits[first], keys, batch["label"][first])
        skipped = max(skipped, pipeline.skips.skipped)  # the same samples fail in every pass
    views = cfg.clips * cfg.crops
    results = {"single_view": _metrics(single, num_classes)}
    if views > 1:
        results["multi_view"] = _metrics(multi, num_classes)
    main = results["multi_view" if views > 1 else "single_view"]
    video = (multi if views > 1 else single).result()
    flat = {f"{view}_{k}": v for view, values in results.items() for k, v in values.items()}
    metrics = {**main, **flat, "views": views, "clips": cfg.clips, "crops": cfg.crops,
               "num_samples_skipped": skipped, "checkpoint": str(cfg.ckpt)}
    if skipped:
        log.warning("%d sample(s) skipped: no clip could be cut from them (named in the warnings above)",
                    skipped)
    pred = video.scores.argmax(1)
    cm = confusion_matrix(pred, video.labels, num_classes)
    write_report(cfg.out, metrics, cm, classes, prediction_records(video.scores, video.keys, video.labels))
    return metrics


def _metrics(agg: ViewAggregator, num_classes: int) -> dict:
    result = agg.result()
    if len(result.keys) == 0:
        raise ValueError("no clip could be read from the evaluation shards")
    return classification_metrics(result.scores, result.labels, num_classes)
