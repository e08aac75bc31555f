"""What a ``mvmae pretrain`` checkpoint brings to fine-tuning: the Motion encoder's weights, its
architecture (size, position and token embedding, from the checkpoint's config) and the token spec
(from its codebook). Fine-tuning builds its Motion encoder from these, never from its own
defaults, so ``mvmae train --pretrained pt/last.pt`` after ``mvmae pretrain --model-size tiny``
gets a tiny encoder; ``conflicts`` names what a run's explicit settings say otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch

from mvmae.train import checkpoint as ckpt
from mvmae.train.config import fill_missing
from mvmae.train.pretrain import PretrainConfig
from mvmae.train.tokenizer import TokenSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedMotion:
    """A pretraining checkpoint's Motion encoder. weights: its state dict (keys without the
    ``encoder.`` prefix); motion_size, motion_pos, motion_embed: ``ClassifierConfig`` values of
    its architecture; spec: the token spec it was trained on."""

    path: str
    weights: dict[str, torch.Tensor]
    motion_size: str
    motion_pos: str
    motion_embed: str
    spec: TokenSpec

    def settings(self) -> dict[str, Any]:
        """The fine-tuning config fields it fixes, dotted: ``{"model.motion_size": "tiny",
        "model.motion_pos": "joint", "tokens.num_frames": 16, ...}``."""
        values = {"model.motion_size": self.motion_size, "model.motion_pos": self.motion_pos,
                  "model.motion_embed": self.motion_embed}
        values.update({f"tokens.{f.name}": getattr(self.spec, f.name) for f in fields(TokenSpec)})
        return values

    def conflicts(self, given: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """(dotted key, given value, checkpoint value) for each of ``given`` (dotted keys of
        explicitly set fine-tuning fields) that the checkpoint fixes to another value."""
        mine = self.settings()
        return [(key, value, mine[key]) for key, value in given.items()
                if key in mine and value is not None and value != mine[key]]


def load_pretrained_motion(path: str) -> PretrainedMotion:
    """The Motion encoder of ``mvmae pretrain`` checkpoint ``path``; ValueError naming the file
    when it is not one."""
    state = ckpt.load_checkpoint(path)
    extra = state.get(ckpt.EXTRA) or {}
    if extra.get("kind") != "pretrain":
        raise ValueError(f"{path}: not a pretraining checkpoint of mvmae pretrain")
    # A field the checkpoint's config lacks: PretrainConfig's default when it was written.
    config = fill_missing(state.get(ckpt.CONFIG) or {}, PretrainConfig.LEGACY_DEFAULTS)
    weights = {k[len("encoder."):]: v for k, v in state[ckpt.MODEL].items() if k.startswith("encoder.")}
    return PretrainedMotion(path=str(path), weights=weights, motion_size=config.get("model_size", "small"),
                            motion_pos=config.get("pos", "joint"), motion_embed=config["embed"],
                            spec=TokenSpec(**extra["token_spec"]))


def adopt_pretrained(cfg: Any, pretrained: PretrainedMotion) -> None:
    """Set the Motion encoder architecture and token spec of ``cfg`` (a
    ``finetune.FinetuneConfig``) to the pretraining checkpoint's, whatever ``cfg`` said (a
    default, a YAML value). The command line refuses conflicting flags before this
    (``conflicts``); the values replaced here are logged."""
    for key, mine, theirs in pretrained.conflicts({"model.motion_size": cfg.model.motion_size,
                                                   "model.motion_pos": cfg.model.motion_pos,
                                                   "model.motion_embed": cfg.model.motion_embed}):
        log.info(f"{key}: {theirs} (the architecture of {pretrained.path}), not {mine}")
    cfg.model.motion_size, cfg.model.motion_pos = pretrained.motion_size, pretrained.motion_pos
    cfg.model.motion_embed = pretrained.motion_embed
    cfg.tokens = pretrained.spec
