"""Learning rate schedule (a pure function of the step) and the AdamW optimizer with param groups.

Each optimizer param group carries ``lr_scale``: ``set_lr(optimizer, lr)`` gives it
``lr * lr_scale``, so fine-tuning can run unfrozen encoder blocks at 0.1x the rate of the new
parts while one schedule drives both. Norm weights, biases, position embeddings and learnt
tokens get no weight decay (decaying them only pulls them towards zero, which hurts ViTs).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

# Parameter names (last dotted component) containing these get no weight decay.
NO_DECAY_NAMES = ("pos_embed", "mask_token", "cls_token")
# A warm-up asked for that is longer than the whole run is cut to this share of the run's steps
# (a first try with ``--epochs 1`` under the 20-epoch default still decays its LR).
SHORT_RUN_WARMUP_RATIO = 0.1


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int,
          min_lr: float = 0.0) -> float:
    """Linear warm-up from base_lr / warmup_steps to base_lr over ``warmup_steps`` steps, then
    cosine decay to ``min_lr`` at ``total_steps``; ``min_lr`` from then on. ``step`` counts
    optimizer steps from 0; step 0 already trains (at base_lr / warmup_steps)."""
    if warmup_steps < 0 or total_steps < 0 or step < 0:
        raise ValueError(f"step {step}, warmup_steps {warmup_steps} and total_steps {total_steps} "
                         f"must be >= 0")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps {warmup_steps} exceeds total_steps {total_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # in [0, 1)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def warmup_steps(warmup_epochs: int, epochs: int, steps_per_epoch: int) -> tuple[int, str | None]:
    """Warm-up optimizer steps of a run of ``epochs`` x ``steps_per_epoch`` steps:
    ``warmup_epochs`` x ``steps_per_epoch``, or, when the warm-up is longer than the run,
    ``SHORT_RUN_WARMUP_RATIO`` of the run's steps (rounded), with a note saying so (else None)."""
    if warmup_epochs < 0 or epochs < 0 or steps_per_epoch < 0:
        raise ValueError(f"warmup_epochs {warmup_epochs}, epochs {epochs} and steps_per_epoch "
                         f"{steps_per_epoch} must be >= 0")
    if warmup_epochs <= epochs:
        return warmup_epochs * steps_per_epoch, None
    total = epochs * steps_per_epoch
    steps = round(SHORT_RUN_WARMUP_RATIO * total)
    head = f"warmup_epochs {warmup_epochs} exceeds the run's {epochs} epoch(s)"
    if steps == 0:  # "warming up over its first 0 steps" read as a bug
        return 0, (f"{head}: no warm-up ({SHORT_RUN_WARMUP_RATIO:.0%} of its {total} steps rounds to 0; "
                   f"--warmup-epochs 0 says so without this note)")
    return steps, f"{head}: warming up over its first {steps} of {total} steps ({SHORT_RUN_WARMUP_RATIO:.0%}) instead"


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and norm weights (1-d) and embeddings/tokens named in ``NO_DECAY_NAMES``."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or any(key in leaf for key in NO_DECAY_NAMES)


def _named_params(source: nn.Module | Iterable[tuple[str, nn.Parameter]]):
    return source.named_parameters() if isinstance(source, nn.Module) else source


def _split_group(spec: Mapping[str, Any], index: int, weight_decay: float,
                 include_frozen: bool) -> list[dict[str, Any]]:
    name = spec.get("name", f"group{index}")
    lr_scale = float(spec.get("lr_scale", 1.0))
    decay, no_decay = [], []
    for pname, param in _named_params(spec["params"]):
        if param.requires_grad or include_frozen:
            (no_decay if is_no_decay(pname, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": f"{name}/decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": f"{name}/no_decay"}]
    return [dict(g, lr_scale=lr_scale) for g in groups if g["params"]]


def build_optimizer(param_groups: nn.Module | Sequence[Mapping[str, Any]], lr: float,
                    weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95),
                    include_frozen: bool = False) -> torch.optim.AdamW:
    """AdamW (default betas: MAE pretraining) over ``param_groups``: a module (one group), or
    ``{'params': module or (name, param) pairs, 'lr_scale': float = 1, 'name': str}``.

    Each is split into a decayed and a no-decay group (see ``is_no_decay``), both with the
    group's ``lr_scale``; initial lr is ``lr * lr_scale``. Frozen parameters are left out
    unless ``include_frozen`` (then unfreezing later needs no new optimizer; AdamW skips
    parameters without gradients). A parameter listed in two groups is an error.
    """
    if isinstance(param_groups, nn.Module):
        param_groups = [{"params": param_groups, "name": "model"}]
    groups: list[dict[str, Any]] = []
    for index, spec in enumerate(param_groups):
        groups.extend(_split_group(spec, index, weight_decay, include_frozen))
    seen: set[int] = set()
    for group in groups:
        ids = {id(p) for p in group["params"]}
        if ids & seen:
            raise ValueError(f"param group {group['name']} shares parameters with an earlier group")
        seen |= ids
    if not groups:
        raise ValueError("no trainable parameters for the optimizer")
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
    set_lr(optimizer, lr)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * group['lr_scale']`` (scale 1 when a group has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
