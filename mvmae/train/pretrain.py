"""Masked motion pretraining of the Motion encoder (``mvmae pretrain``).

MAE-style: the encoder sees the visible motion tokens chosen by a masking strategy; a light
decoder predicts the codebook id of every masked token (cross-entropy; or regresses the
normalised token vector with ``predict='vectors'``). Streams clips from shards; AdamW with warmup
then cosine; bf16 autocast on CUDA; gradient accumulation; DDP under torchrun; atomic checkpoints
with everything ``--resume`` needs (``resume``: what a resumed run checks and tidies first).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from mvmae.shards.clips import ClipConfig
from mvmae.train import checkpoint as ckpt
from mvmae.train.codebook import Codebook
from mvmae.train.config import config_to_dict
from mvmae.train.distributed import all_reduce_mean, all_reduce_sum, init_distributed, wrap_ddp
from mvmae.train.masking import build_masking
from mvmae.train.motion_encoder import MaskedMotionModel, MotionDecoderConfig, motion_encoder_config
from mvmae.train.pretext import PretextOptions, PretextStats, pretext_loss
from mvmae.train.run_folder import RunFolder
from mvmae.train.schedule import build_optimizer, lr_at, set_lr, warmup_steps
from mvmae.train.tokenizer import TokenSpec
from mvmae.train.trainer import (
    ShardReading, continue_from, epoch_batches, equal_epoch, load_weights, seed_everything, skip_metrics,
    steps_per_epoch)

log = logging.getLogger(__name__)

MASKINGS = ("random", "tube", "mgm", "mofo", "videoms")


@dataclass
class PretrainConfig(ShardReading):
    """One pretraining run. train: shard URLs/brace patterns; codebook: from ``mvmae codebook``
    (its token spec defines the tokens); masking: random | tube | mgm | mofo | videoms, with
    ``masking_options`` passed to the strategy; model_size: micro | tiny | small | base; pos and
    embed: the Motion encoder's positions and token embedding (``MotionEncoderConfig``).
    epochs and warmup_epochs count passes over the shards (or ``steps_per_epoch`` batches); a
    warm-up longer than the run is cut to a tenth of it (``schedule.warmup_steps``).
    read, loader_timeout_s: how shards are read (``trainer.ShardReading``). amp: bf16 autocast
    on CUDA; compile: ``torch.compile`` the model (checkpoints hold the uncompiled weights)."""

    # What a checkpoint that lacks a field ran with (the field's default before it changed).
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"embed": "linear"}

    train: list[str] = field(default_factory=list)
    codebook: str = ""
    out: str = "runs/pretrain"
    masking: str = "mgm"
    mask_ratio: float = 0.9
    masking_options: dict = field(default_factory=dict)
    model_size: str = "small"
    pos: str = "joint"
    embed: str = "conv"
    decoder_dim: int = 192
    decoder_depth: int = 4
    decoder_heads: int = 3
    predict: str = "ids"
    static_weight: float = 0.0
    norm_targets: bool = False
    epochs: int = 400
    warmup_epochs: int = 20
    steps_per_epoch: int = 0
    batch_size: int = 32
    accum_steps: int = 1
    lr: float = 3e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    clip_grad: float = 1.0
    workers: int = 2
    shuffle_buffer: int = 64
    seed: int = 0
    amp: bool = True
    compile: bool = False
    keep_last: int = 3
    log_every: int = 10
    resume: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {self.masking!r}")
        if self.predict not in ("ids", "vectors"):
            raise ValueError(f"predict must be 'ids' or 'vectors', got {self.predict!r}")
        for name in ("epochs", "batch_size", "accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_epochs < 0:  # longer than the run: cut to a share of it (schedule.warmup_steps)
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.static_weight < 0:
            raise ValueError(f"static_weight must be >= 0, got {self.static_weight}")


def build_model(cfg: PretrainConfig, spec: TokenSpec, num_codes: int) -> MaskedMotionModel:
    encoder = motion_encoder_config(cfg.model_size, in_dim=spec.token_dim,
                                    grid=tuple(spec.grid.shape), pos=cfg.pos,
                                    embed=cfg.embed)
    decoder = MotionDecoderConfig(dim=cfg.decoder_dim, depth=cfg.decoder_depth,
                                  heads=cfg.decoder_heads, num_codes=num_codes, predict=cfg.predict)
    return MaskedMotionModel(encoder, decoder)


def pretext_options(cfg: PretrainConfig) -> PretextOptions:
    return PretextOptions(predict=cfg.predict, static_weight=cfg.static_weight,
                          norm_targets=cfg.norm_targets)


class Pretrainer:
    """State of a pretraining run: model, optimizer, loaders, checkpoints, logs. Building it
    reads and checks the folder and, on the main rank, locks it (``run_folder``); ``run()``
    releases it at the end, ``close()`` when the trainer is not run."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.dist = init_distributed()
        self.out = Path(cfg.out)
        self.book = Codebook.load(cfg.codebook)
        if not self.book.token_spec:
            raise ValueError(f"{cfg.codebook}: codebook has no token spec (rebuild it with mvmae codebook)")
        self.spec = TokenSpec(**self.book.token_spec)
        seed_everything(cfg.seed + self.dist.rank)
        self.device = self.dist.device
        self.manager = ckpt.CheckpointManager(self.out, keep_last_n=cfg.keep_last, best_metric="loss",
                                              mode="min")
        self.inputs = self._inputs()
        self.folder = RunFolder(self.manager, cfg, self.dist, inputs=self.inputs)
        with self.folder.setting_up():  # a failure from here on releases the folder
            # Checkpoints hold raw_model's weights: torch.compile's wrapper would prefix them.
            self.raw_model = build_model(cfg, self.spec, self.book.size).to(self.device)
            self.model = wrap_ddp(torch.compile(self.raw_model) if cfg.compile else self.raw_model, self.dist)
            self.optimizer = build_optimizer(self.raw_model, cfg.lr, cfg.weight_decay)
            self.masking = build_masking(cfg.masking, mask_ratio=cfg.mask_ratio, **self._masking_options())
            self.amp = cfg.amp and self.device.type == "cuda"
            self.equal = equal_epoch(cfg, self.dist)
            self.steps_per_epoch = steps_per_epoch(cfg, self._clip(), self.dist, **self._pipeline())
            self.warmup_steps, note = warmup_steps(cfg.warmup_epochs, cfg.epochs, self.steps_per_epoch)
            if note and self.dist.is_main:
                log.warning(note)
            state = self.folder.state
            if state is not None:
                load_weights(state, self.raw_model, self.optimizer)
            self.logger = self.folder.start(self.steps_per_epoch)
            self.epoch, self.step = continue_from(state)
        if state is not None:
            log.info(f"resumed from {self.manager.last_path}: epoch {self.epoch}, step {self.step}")

    def _inputs(self) -> dict:
        """What the run trains with besides its config, as its checkpoints record it (``EXTRA``):
        a resume must find the same codebook content (the file may have moved)."""
        return {"token_spec": self.spec.to_dict(), "codebook_size": self.book.size,
                "codebook_sha256": self.book.digest()}

    def _masking_options(self) -> dict:
        options = dict(self.cfg.masking_options)
        if self.cfg.masking == "mgm":
            options.setdefault("frames_per_token", self.spec.tubelet_frames)
            options.setdefault("px_per_token", self.spec.px_per_token)
        return options

    def _clip(self) -> ClipConfig:
        return self.spec.clip_config("train", num_iframes=0)

    def _pipeline(self) -> dict:
        return {"shuffle_buffer": self.cfg.shuffle_buffer, "equal": self.equal}

    def close(self) -> None:
        """Release the folder without running (``run()`` does it when it ends)."""
        self.folder.close()

    def run(self) -> dict:
        """Train from the current epoch to ``cfg.epochs``; returns the last epoch's metrics."""
        metrics: dict = {}
        with self.folder.training():
            for epoch in range(self.epoch, self.cfg.epochs):
                metrics = self.train_epoch(epoch)
                if self.dist.is_main:
                    self.manager.save(self._state(), epoch, metrics)
        return metrics

    def _state(self) -> dict:
        return {ckpt.MODEL: self.raw_model.state_dict(),
                ckpt.OPTIMIZER: self.optimizer.state_dict(), ckpt.STEP: self.step,
                ckpt.STEPS_PER_EPOCH: self.steps_per_epoch,
                ckpt.RNG: ckpt.capture_rng_state(), ckpt.CONFIG: config_to_dict(self.cfg),
                ckpt.EXTRA: {"kind": "pretrain", **self.inputs}}

    def train_epoch(self, epoch: int) -> dict:
        cfg, total_steps = self.cfg, self.cfg.epochs * self.steps_per_epoch
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1009 + self.dist.rank)
        self.model.train()
        stats, num_batches, num_tokens, t0 = PretextStats(self.book.size), 0, 0, time.monotonic()
        loss_sum, options = torch.zeros(1, dtype=torch.float64), pretext_options(cfg)
        # Gradients of a last incomplete accumulation must not leak into this epoch (nor be lost
        # only when resuming from a checkpoint, which does not hold them).
        self.optimizer.zero_grad(set_to_none=True)
        batches, skips = epoch_batches(cfg, self._clip(), epoch, self.dist, **self._pipeline())
        for i, batch in enumerate(batches):
            if i % cfg.accum_steps == 0:
                set_lr(self.optimizer, lr_at(self.step, cfg.lr, self.warmup_steps, total_steps, cfg.min_lr))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                loss, batch_stats = pretext_loss(self.model, batch, self.spec, self.book, self.masking,
                                                 options, generator, self.device)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}, step {self.step}")
            (loss / cfg.accum_steps).backward()
            if (i + 1) % cfg.accum_steps == 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                # Recorded at the step it completes, every log_every-th of the epoch: each step
                # once (a resumed run's TensorBoard hides the steps after its checkpoint's).
                if (i // cfg.accum_steps) % cfg.log_every == 0:
                    self.logger.log({"loss": loss.item(), "lr": self.optimizer.param_groups[0]["lr"]},
                                    step=self.step, epoch=epoch)
            loss_sum += loss.item()
            stats += batch_stats
            num_batches += 1
            num_tokens += batch["mv"].shape[0] * self.spec.grid.num_tokens
        if num_batches == 0:
            raise ValueError(f"epoch {epoch}: no batch could be read from {cfg.train}")
        stats.values = all_reduce_sum(stats.values)
        metrics = {"loss": float(all_reduce_mean(loss_sum / num_batches)[0]),
                   **stats.metrics(cfg.predict),
                   "tokens_per_s": num_tokens / max(time.monotonic() - t0, 1e-9)}
        self.logger.log({**metrics, **skip_metrics(skips)}, step=self.step, epoch=epoch, split="epoch")
        return metrics
