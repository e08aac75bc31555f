"""Two-phase fine-tuning of the MV-MAE classifier (``mvmae train``).

Phase 1 (epochs ``0 .. phase1_epochs-1``): both encoders frozen (and in eval mode), so the new
temporal transformer, fusion and head settle. Phase 2 (the rest): the top ``unfreeze_blocks``
blocks of each encoder train too, at ``encoder_lr_scale`` x the learning rate of the new parts
(separate AdamW parameter groups). Validation after every epoch; checkpoints record the phase and
the trainable parameters, and ``--resume`` restores everything, also across the phase boundary
(``resume``: what a resumed run checks and tidies first).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mvmae.shards.clips import ClipConfig
from mvmae.shards.fetch import FSSPEC_SCHEMES, filesystem
from mvmae.shards.inspect import extraction_options
from mvmae.shards.reader import build_eval_pipeline, eval_skips, expand_urls, make_loader
from mvmae.train import checkpoint as ckpt
from mvmae.train.config import config_to_dict, fill_missing
from mvmae.train.labels import scan_labels, stratified_subset, write_subset
from mvmae.train.distributed import all_reduce_mean, init_distributed, wrap_ddp
from mvmae.train.model import ClassifierConfig, MVMAEClassifier, build_classifier, classifier_clip
from mvmae.train.phases import param_groups, pretrained_encoders, set_phase
from mvmae.train.pretrained import PretrainedMotion, adopt_pretrained, load_pretrained_motion
from mvmae.train.run_folder import RunFolder
from mvmae.train.schedule import build_optimizer, lr_at, set_lr, warmup_steps
from mvmae.train.tokenizer import TokenSpec
from mvmae.train.trainer import (
    ShardReading, continue_from, epoch_batches, equal_epoch, load_weights, seed_everything, skip_metrics,
    steps_per_epoch)

log = logging.getLogger(__name__)

# two_phase: the published MV-MAE fine-tuning (encoders frozen, then their top blocks at a lower
# LR); full: every parameter from the start, layer-wise LR decay in the encoders (VideoMAE).
SCHEDULES = ("two_phase", "full")


@dataclass
class FinetuneConfig(ShardReading):
    """One fine-tuning run. train/val: shard URLs; classes: classes.json (default: beside the
    first local train shard); pretrained: Motion encoder pretraining checkpoint (its token spec
    wins over the token fields here); init: weights-only start from a classifier checkpoint.
    schedule: ``two_phase`` or ``full`` (``SCHEDULES``); layer_decay: per encoder layer, ``full``
    only; scratch_lr_scale: LR of encoders that were not pretrained (they train whole) / lr.
    label_fraction, label_seed: a stratified subset of the train samples (``labels``).
    flip_prob, rotate, crop_area: train augmentation (rotate: random quarter turns, for top-down
    footage); a horizontal flip negates dx, swapping left/right and cw/ccw classes, hence the
    default 0. read, loader_timeout_s: how shards are read (``trainer.ShardReading``)."""

    # What a checkpoint that lacks a field ran with (the field's default before it changed).
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"model.motion_embed": "linear"}

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    out: str = "runs/train"
    classes: str = ""
    pretrained: str = ""
    init: str = ""
    resume: bool = False
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    tokens: TokenSpec = field(default_factory=TokenSpec)
    epochs: int = 51
    schedule: str = "two_phase"
    phase1_epochs: int = 6
    unfreeze_blocks: int = 2
    encoder_lr_scale: float = 0.1
    layer_decay: float = 0.75
    scratch_lr_scale: float = 0.1
    label_fraction: float = 1.0
    label_seed: int = 0
    lr: float = 5e-5
    min_lr: float = 1e-6
    warmup_epochs: int = 1
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    clip_grad: float = 1.0
    accum_steps: int = 1
    batch_size: int = 8
    val_batch_size: int = 16
    steps_per_epoch: int = 0
    workers: int = 2
    amp: bool = True
    compile: bool = False
    ema: float = 0.0
    seed: int = 0
    deterministic: bool = False
    keep_last: int = 3
    best_metric: str = "macro_f1"
    flip_prob: float = 0.0
    rotate: bool = False
    crop_area: tuple[float, float] = (0.35, 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.phase1_epochs < 0:  # more than epochs: the whole run is phase 1
            raise ValueError(f"phase1_epochs must be >= 0, got {self.phase1_epochs}")
        if self.warmup_epochs < 0:  # longer than the run: cut to a share of it (schedule.warmup_steps)
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.encoder_lr_scale <= 0 or self.scratch_lr_scale <= 0 or self.lr <= 0:
            raise ValueError("lr, encoder_lr_scale and scratch_lr_scale must be > 0")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema decay must be in [0, 1), got {self.ema}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")

    def phase(self, epoch: int) -> int:
        """0 with the ``full`` schedule (nothing frozen); else 1 (encoders frozen) or 2."""
        if self.schedule == "full":
            return 0
        return 1 if epoch < self.phase1_epochs else 2


def read_classes(cfg: FinetuneConfig) -> list[str]:
    """Class names from ``cfg.classes`` or the classes.json beside the first train shard (in a
    folder, or in object storage where ``extract run`` put it beside the shards)."""
    path = Path(cfg.classes) if cfg.classes else None
    if path is None:
        first = expand_urls(cfg.train)[0]
        if first.split("://", 1)[0] in FSSPEC_SCHEMES:
            return _read_stored_classes(f"{first.rsplit('/', 1)[0]}/classes.json")
        if "://" in first or first.startswith("pipe:"):
            raise ValueError("remote shards: pass --classes (the classes.json of the extraction job)")
        path = Path(first).parent / "classes.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the class list ({exc})") from exc


def _read_stored_classes(url: str) -> list[str]:
    """classes.json in object storage (s3://, gs://)."""
    fs, path = filesystem(url)
    try:
        return json.loads(fs.cat_file(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{url}: cannot read the class list ({exc}); pass --classes") from exc


class Finetuner:
    """A fine-tuning run: model, optimizer, EMA, loaders, checkpoints, logs.

    metrics_factory(num_classes) makes the validation accumulator (``update(scores, labels,
    keys)``, ``gather()``, ``compute() -> dict``): the evaluation stage's
    ``mvmae.eval.metrics.StreamingMetrics``, handed in by the caller so that training does not
    import the stage after it.
    """

    def __init__(self, cfg: FinetuneConfig, metrics_factory: Callable[[int], Any]) -> None:
        self.cfg = cfg
        self.metrics_factory = metrics_factory
        seed_everything(cfg.seed, cfg.deterministic)
        self.dist = init_distributed()
        self.device = self.dist.device
        self.out = Path(cfg.out)
        self.classes = read_classes(cfg)
        # How the train shards were extracted: `mvmae predict` extracts new videos the same way.
        self.extraction = extraction_options(cfg.train, cfg.read) if self.dist.is_main else {}
        cfg.model.num_classes = len(self.classes)
        pretrained = load_pretrained_motion(cfg.pretrained) if cfg.pretrained else None
        if pretrained is not None:
            adopt_pretrained(cfg, pretrained)
        self.spec = cfg.tokens
        self.manager = ckpt.CheckpointManager(self.out, cfg.keep_last, cfg.best_metric, "max")
        self.folder = RunFolder(self.manager, cfg, self.dist, inputs={"classes": self.classes})
        with self.folder.setting_up():  # a failure from here on releases the folder
            self._build(pretrained)
            self.subset = self._label_subset()
            self.equal = equal_epoch(cfg, self.dist, self.subset)
            self.steps_per_epoch = steps_per_epoch(cfg, self._clip("train"), self.dist, **self._pipeline())
            self.warmup_steps, note = warmup_steps(cfg.warmup_epochs, cfg.epochs, self.steps_per_epoch)
            if note and self.dist.is_main:
                log.warning(note)
            state = self.folder.state
            if state is not None:
                self._load(state)
            self.logger = self.folder.start(self.steps_per_epoch)
            self.epoch, self.step = continue_from(state)
        if state is not None:
            log.info(f"resumed from {self.manager.last_path}: epoch {self.epoch} (phase "
                     f"{cfg.phase(self.epoch)}), step {self.step}")

    def _build(self, pretrained: PretrainedMotion | None) -> None:
        """Model (Motion encoder from ``pretrained``, weights from ``init``), optimizer, EMA."""
        cfg = self.cfg
        model = build_classifier(cfg.model, self.spec)
        if pretrained is not None and hasattr(model, "motion_encoder"):
            model.motion_encoder.load_state_dict(pretrained.weights)
            log.info(f"Motion encoder initialised from {cfg.pretrained}")
        if cfg.init:
            model.load_state_dict(ckpt.load_checkpoint(cfg.init)[ckpt.MODEL])
        self.raw_model = model.to(self.device)
        self.pretrained = pretrained_encoders(model, cfg)
        self.optimizer = build_optimizer(param_groups(model, cfg, self.pretrained), cfg.lr, cfg.weight_decay,
                                         betas=(0.9, 0.999), include_frozen=True)
        self.ema = self._make_ema()
        self.model = wrap_ddp(torch.compile(model) if cfg.compile else model, self.dist,
                              find_unused_parameters=True)
        self.amp = cfg.amp and self.device.type == "cuda"

    def _set_phase(self, phase: int) -> list[str]:
        return set_phase(self.raw_model, phase, self.cfg.unfreeze_blocks, self.pretrained)

    def _make_ema(self):
        if not self.cfg.ema:
            return None
        from timm.utils import ModelEmaV3

        return ModelEmaV3(self.raw_model, decay=self.cfg.ema)

    def _label_subset(self) -> frozenset[str] | None:
        """The labelled subset (``labels``) when ``label_fraction`` < 1, recorded in the folder."""
        cfg = self.cfg
        if cfg.label_fraction >= 1:
            return None
        pairs = scan_labels(cfg.train, cfg.read)
        keys = stratified_subset(pairs, cfg.label_fraction, cfg.label_seed)
        if self.dist.is_main:
            write_subset(self.out, keys, cfg.label_fraction, cfg.label_seed, len(pairs))
        log.info(f"label fraction {cfg.label_fraction}: {len(keys)} of {len(pairs)} samples "
                 f"(seed {cfg.label_seed})")
        return frozenset(keys)

    def _pipeline(self) -> dict:
        return {"equal": self.equal, **({} if self.subset is None else {"keys": self.subset})}

    def _clip(self, mode: str) -> ClipConfig:
        """The reader's clips (``model.classifier_clip``), augmented in ``train`` mode."""
        if mode != "train":
            return classifier_clip(self.cfg.model, self.spec, mode)
        return classifier_clip(self.cfg.model, self.spec, mode, flip_prob=self.cfg.flip_prob, rotate=self.cfg.rotate,
                               crop_area=self.cfg.crop_area)

    def _state(self, phase: int, trainable: list[str]) -> dict:
        return {ckpt.MODEL: self.raw_model.state_dict(), ckpt.OPTIMIZER: self.optimizer.state_dict(),
                ckpt.STEP: self.step, ckpt.STEPS_PER_EPOCH: self.steps_per_epoch,
                ckpt.RNG: ckpt.capture_rng_state(), ckpt.PHASE: phase,
                ckpt.TRAINABLE: trainable, ckpt.CONFIG: config_to_dict(self.cfg),
                ckpt.EXTRA: {"kind": "classifier", "classes": self.classes, "extraction": self.extraction,
                             "ema": self.ema.module.state_dict() if self.ema else None}}

    def _load(self, state: dict) -> None:
        """Weights, optimizer, EMA and the phase's trainable parameters of checkpoint ``state``."""
        load_weights(state, self.raw_model, self.optimizer)
        if self.ema is not None and state[ckpt.EXTRA].get("ema"):
            self.ema.module.load_state_dict(state[ckpt.EXTRA]["ema"])
        if self._set_phase(state[ckpt.PHASE]) != state[ckpt.TRAINABLE]:
            raise ValueError(f"{self.manager.last_path}: its trainable parameters do not match phase "
                             f"{state[ckpt.PHASE]} of this configuration (unfreeze_blocks changed?)")

    def close(self) -> None:
        """Release the folder without running (``run()`` does it when it ends)."""
        self.folder.close()

    def run(self) -> dict:
        metrics: dict = {}
        with self.folder.training():
            for epoch in range(self.epoch, self.cfg.epochs):
                phase = self.cfg.phase(epoch)
                self.raw_model.train()
                trainable = self._set_phase(phase)
                train = self.train_epoch(epoch, phase)
                metrics = self.validate(epoch) if self.cfg.val else {}
                self.logger.log(train, step=self.step, epoch=epoch, phase=phase, split="train")
                if metrics:
                    self.logger.log(metrics, step=self.step, epoch=epoch, phase=phase, split="val")
                if self.dist.is_main:
                    self.manager.save(self._state(phase, trainable), epoch,
                                      metrics if self.cfg.best_metric in metrics else None)
        return metrics

    def train_epoch(self, epoch: int, phase: int) -> dict:
        cfg = self.cfg
        total = cfg.epochs * self.steps_per_epoch
        sums, n = torch.zeros(2), 0
        # A last unfinished accumulation of the previous epoch is not in the checkpoint: drop it,
        # so a resumed run and an uninterrupted one take the same steps.
        self.optimizer.zero_grad(set_to_none=True)
        batches, skips = epoch_batches(cfg, self._clip("train"), epoch, self.dist, **self._pipeline())
        bar = tqdm(batches, total=self.steps_per_epoch * cfg.accum_steps, leave=False,
                   desc=f"epoch {epoch} (phase {phase})", disable=not self.dist.is_main, unit="batch")
        for i, batch in enumerate(bar):
            if i % cfg.accum_steps == 0:
                set_lr(self.optimizer, lr_at(self.step, cfg.lr, self.warmup_steps, total, cfg.min_lr))
            mv, valid, iframes, label = (batch[k].to(self.device, non_blocking=True)
                                         for k in ("mv", "valid", "iframes", "label"))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                logits = self.model(mv, valid, iframes)
            loss = F.cross_entropy(logits.float(), label, label_smoothing=cfg.label_smoothing)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {self.step}")
            (loss / cfg.accum_steps).backward()
            if (i + 1) % cfg.accum_steps == 0:
                torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.ema is not None:
                    self.ema.update(self.raw_model, step=self.step)
            sums += torch.tensor([loss.item(), (logits.argmax(1) == label).float().mean().item()])
            n += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if n == 0:
            raise ValueError(f"epoch {epoch}: no batch could be read from {cfg.train}")
        mean = all_reduce_mean(sums / n)
        return {"loss": float(mean[0]), "acc": float(mean[1]), "lr": self.optimizer.param_groups[0]["lr"],
                **skip_metrics(skips)}

    @torch.no_grad()
    def validate(self, epoch: int) -> dict:
        model = self.ema.module if self.ema is not None else self.raw_model
        model.eval()
        pipe = build_eval_pipeline(self.cfg.val, self._clip("center"), self.cfg.val_batch_size, read=self.cfg.read,
                                   handler=eval_skips())
        stream = self.metrics_factory(len(self.classes))
        for batch in make_loader(pipe, self.cfg.workers, timeout_s=self.cfg.loader_timeout_s):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                logits = model(*(batch[k].to(self.device) for k in ("mv", "valid", "iframes")))
            stream.update(logits.float().cpu(), batch["label"], batch["key"])
        stream.gather()
        skipped = skip_metrics(pipe.skips)  # a collective: every rank
        return {**stream.compute(), **skipped} if self.dist.is_main else {}


def load_classifier(path: str | Path, device: str | torch.device = "cpu",
                    use_ema: bool = True) -> tuple[MVMAEClassifier, list[str], FinetuneConfig]:
    """A trained classifier (EMA weights when the run kept them), its class names and config."""
    from mvmae.train.config import load_config

    state = ckpt.load_checkpoint(path, map_location=device)
    extra = state.get(ckpt.EXTRA) or {}
    if extra.get("kind") != "classifier":
        raise ValueError(f"{path}: not a classifier checkpoint of mvmae train")
    saved = fill_missing(state[ckpt.CONFIG], FinetuneConfig.LEGACY_DEFAULTS)
    cfg = load_config(FinetuneConfig, None, {k: v for k, v in saved.items()
                                             if k not in ("pretrained", "init", "resume")})
    model = build_classifier(cfg.model, cfg.tokens)
    model.load_state_dict(extra["ema"] if use_ema and extra.get("ema") else state[ckpt.MODEL])
    return model.to(device).eval(), extra["classes"], cfg
