"""The masked-motion pretext: its loss and the diagnostics that say whether it is learned.

Targets are the masked tokens. Tokens with no valid cell (I-frames, intra blocks) carry no
motion to predict and are left out of the loss. With ``predict='ids'`` each target is a codebook
id and the loss a cross-entropy; since most tokens are static (code 0, often 90% of the targets),
static targets are weighted by ``static_weight`` (0 leaves them out), or the model could win by
answering "static" everywhere. With ``predict='vectors'`` the loss is the mean squared error of the
token vector (``norm_targets``: each target standardised over its own values first, as VideoMAE
normalises each target patch).

Diagnostics, summed over an epoch (``PretextStats``) and reported by ``PretextStats.metrics``:

- ``acc_moving``: accuracy on valid masked targets whose true code is not static;
  ``acc_moving_baseline``: the same for always answering the most frequent moving code;
- ``info_gain``: entropy of the valid masked targets' code distribution minus the model's
  cross-entropy on them, in nats (> 0: the model knows more than the targets' prior);
  ``info_gain_moving``: the same over the moving targets alone (with ``static_weight`` 0 the
  model never answers "static", so ``info_gain`` over all targets is no fair judge);
- ``visible_moving_mean``: moving tokens (a code other than static) the encoder sees per clip;
  ``no_visible_motion_ratio``: share of the clips with moving tokens that show it none.

A pretext is *learned* when ``acc_moving`` is well above its baseline and ``info_gain`` is
clearly positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mvmae.train.codebook import Codebook
from mvmae.train.tokenizer import TokenSpec, tokenize
from mvmae.train.tokens import token_valid

# Layout of the summed statistics (then one count per code).
_FIELDS = ("clips", "clips_moving", "clips_blind", "visible_moving", "targets", "ce_sum",
           "correct", "moving_targets", "moving_correct", "moving_ce_sum", "sq_err_sum", "moving_sq_err_sum")


@dataclass(frozen=True)
class PretextOptions:
    """predict: 'ids' | 'vectors'; static_weight: loss weight of static targets (0: left out);
    norm_targets: standardise each vector target over its values ('vectors' only)."""

    predict: str = "ids"
    static_weight: float = 0.0
    norm_targets: bool = False


def _index(name: str) -> int:
    return _FIELDS.index(name)


class PretextStats:
    """Sums of one or more batches: float64 (len(_FIELDS) + K,), summable across ranks."""

    def __init__(self, num_codes: int, values: torch.Tensor | None = None) -> None:
        self.num_codes = num_codes
        self.values = values if values is not None else torch.zeros(len(_FIELDS) + num_codes,
                                                                    dtype=torch.float64)

    def add(self, name: str, value: torch.Tensor | float) -> None:
        self.values[_index(name)] += float(value)

    def __iadd__(self, other: PretextStats) -> PretextStats:
        self.values += other.values
        return self

    @property
    def code_counts(self) -> torch.Tensor:
        return self.values[len(_FIELDS):]

    def get(self, name: str) -> float:
        return float(self.values[_index(name)])

    def metrics(self, predict: str) -> dict[str, float]:
        """The diagnostics (module docstring) of what was summed; NaN where nothing was counted."""
        def ratio(a: float, b: float) -> float:
            return a / b if b else float("nan")

        out = {"visible_moving_mean": ratio(self.get("visible_moving"), self.get("clips")),
               "no_visible_motion_ratio": ratio(self.get("clips_blind"), self.get("clips_moving"))}
        targets, moving = self.get("targets"), self.get("moving_targets")
        if predict == "vectors":
            out["masked_mse"] = ratio(self.get("sq_err_sum"), targets)
            out["mse_moving"] = ratio(self.get("moving_sq_err_sum"), moving)
            return out
        counts = self.code_counts
        entropy, moving_entropy = _entropy(counts), _entropy(counts[1:])
        out.update({
            "masked_acc": ratio(self.get("correct"), targets),
            "acc_moving": ratio(self.get("moving_correct"), moving),
            "acc_moving_baseline": ratio(float(counts[1:].max()) if len(counts) > 1 else 0.0, moving),
            "target_entropy": entropy,
            "info_gain": entropy - ratio(self.get("ce_sum"), targets),
            "info_gain_moving": moving_entropy - ratio(self.get("moving_ce_sum"), moving),
            "static_target_ratio": ratio(float(counts[0]), targets),
        })
        return out


def _entropy(counts: torch.Tensor) -> float:
    """Entropy in nats of the distribution of ``counts``."""
    p = counts[counts > 0] / max(counts.sum().item(), 1.0)
    return float(-(p * p.log()).sum())


def _visibility(stats: PretextStats, moving: torch.Tensor, visible_index: torch.Tensor) -> None:
    """Count what the encoder sees of the motion: moving (B, N) bool, visible_index (B, N_vis)."""
    seen = moving.gather(1, visible_index).sum(dim=1)  # (B,)
    has_motion = moving.any(dim=1)
    stats.add("clips", len(moving))
    stats.add("clips_moving", has_motion.sum())
    stats.add("clips_blind", (has_motion & (seen == 0)).sum())
    stats.add("visible_moving", seen.sum())


def _weights(target_ids: torch.Tensor, target_valid: torch.Tensor, static_weight: float) -> torch.Tensor:
    """Loss weight of each target: 0 without a valid cell, ``static_weight`` for code 0, else 1."""
    w = torch.where(target_ids == 0, static_weight, 1.0).to(torch.float32)
    return w * target_valid.to(torch.float32)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp(min=1e-6)


def _ids_loss(out: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor,
              stats: PretextStats) -> torch.Tensor:
    """out (M, K) logits, ids / weights / valid (M,) -> loss; counts the diagnostics."""
    ce = F.cross_entropy(out.float(), ids, reduction="none")  # (M,)
    with torch.no_grad():
        right = (out.argmax(1) == ids) & valid
        moving = (ids != 0) & valid
        stats.add("targets", valid.sum())
        stats.add("ce_sum", (ce.detach() * valid).sum())
        stats.add("correct", right.sum())
        stats.add("moving_targets", moving.sum())
        stats.add("moving_correct", (right & moving).sum())
        stats.add("moving_ce_sum", (ce.detach() * moving).sum())
        stats.code_counts.add_(torch.bincount(ids[valid].cpu(), minlength=stats.num_codes).double())
    return _weighted_mean(ce, weights)


def _vectors_loss(out: torch.Tensor, targets: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                  valid: torch.Tensor, norm_targets: bool, stats: PretextStats) -> torch.Tensor:
    """out / targets (M, D), ids / weights / valid (M,) -> loss; counts the diagnostics."""
    if norm_targets:
        mean, var = targets.mean(-1, keepdim=True), targets.var(-1, keepdim=True, unbiased=True)
        targets = (targets - mean) / (var + 1e-6).sqrt()
    err = ((out.float() - targets) ** 2).mean(-1)  # (M,)
    with torch.no_grad():
        moving = (ids != 0) & valid
        stats.add("targets", valid.sum())
        stats.add("moving_targets", moving.sum())
        stats.add("sq_err_sum", (err.detach() * valid).sum())
        stats.add("moving_sq_err_sum", (err.detach() * moving).sum())
    return _weighted_mean(err, weights)


def pretext_loss(model, batch: dict, spec: TokenSpec, book: Codebook, masking, options: PretextOptions,
                 generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, PretextStats]:
    """Loss of one batch and its diagnostics (``PretextStats``)."""
    mv, valid = batch["mv"].to(device, non_blocking=True), batch["valid"].to(device, non_blocking=True)
    tokens, motion = tokenize(mv, valid, spec)  # (B, N, D), (B, T', h', w', 2)
    B, N, D = tokens.shape
    with torch.no_grad():
        ids = book.assign(tokens.reshape(-1, D)).view(B, N)  # (B, N)
        tvalid = token_valid(valid, spec.tubelet_frames, spec.tubelet_cells).reshape(B, N)  # (B, N)
    visible, masked = masking(motion.cpu(), generator).indices()  # (B, N_vis), (B, N_mask)
    visible, masked = visible.to(device), masked.to(device)
    stats = PretextStats(book.size)
    _visibility(stats, (ids != 0) & tvalid, visible)
    out = model(tokens, visible, masked)  # (B, N_mask, K) or (B, N_mask, D)
    target_ids, target_valid = ids.gather(1, masked).reshape(-1), tvalid.gather(1, masked).reshape(-1)
    weights = _weights(target_ids, target_valid, options.static_weight)  # (B * N_mask,)
    if options.predict == "vectors":
        targets = torch.gather(tokens, 1, masked[..., None].expand(-1, -1, D)).reshape(-1, D)
        loss = _vectors_loss(out.reshape(-1, D), targets, target_ids, weights, target_valid,
                             options.norm_targets, stats)
    else:
        loss = _ids_loss(out.reshape(-1, out.shape[-1]), target_ids, weights, target_valid, stats)
    return loss, stats
