"""What trains when in fine-tuning (``finetune.Finetuner``): the encoders frozen per phase, the
optimizer's parameter groups and their learning-rate scales (layer-wise decay under the ``full``
schedule), and which encoders start from trained weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from mvmae.train.model import MVMAEClassifier, top_blocks

if TYPE_CHECKING:
    from mvmae.train.finetune import FinetuneConfig


def set_phase(model: MVMAEClassifier, phase: int, k: int, encoders: list[nn.Module] | None = None) -> list[str]:
    """Freeze the pretrained ``encoders`` (default: all of the model's) in phase 1, all but their
    top ``k`` blocks in phase 2; frozen parts stay in eval mode. Phase 0 (the ``full`` schedule)
    freezes nothing. An encoder that was not pretrained is not in ``encoders``: it is a new part
    and trains whole from the start (frozen random weights would only hold it back). Returns the
    names of the trainable parameters."""
    model.requires_grad_(True)
    for enc in model.encoders() if encoders is None else encoders:
        if phase == 0:
            continue
        enc.requires_grad_(False)
        enc.eval()
        if phase == 2:
            for block in top_blocks(enc, k):
                block.requires_grad_(True)
                block.train(model.training)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def param_groups(model: MVMAEClassifier, cfg: FinetuneConfig, encoders: list[nn.Module]) -> list[dict]:
    """The optimizer's groups over the pretrained ``encoders`` and the new parts (the rest).

    Encoders of the model that are not in ``encoders`` (not pretrained) train whole in their own
    group at lr x scratch_lr_scale, whatever the schedule. ``two_phase``: new parts at lr x 1; the encoders' top blocks at lr x encoder_lr_scale
    (frozen in phase 1 but in the optimizer from the start, so phase 2 needs no new optimizer).
    ``full``: everything trains; the encoders get layer-wise LR decay (``layer_lr_scales``)."""
    encoder_ids = {id(p) for enc in encoders for p in enc.parameters()}
    scratch_ids = {id(p) for enc in model.encoders() if not any(enc is e for e in encoders) for p in enc.parameters()}
    named = list(model.named_parameters())
    groups = [{"name": "new", "lr_scale": 1.0,
               "params": [(n, p) for n, p in named if id(p) not in encoder_ids | scratch_ids]}]
    if scratch_ids:  # encoders that were not pretrained train whole, at their own scale
        groups.append({"name": "encoders_scratch", "lr_scale": cfg.scratch_lr_scale,
                       "params": [(n, p) for n, p in named if id(p) in scratch_ids]})
    if cfg.schedule == "full":
        for e, enc in enumerate(encoders):
            for depth, (scale, params) in enumerate(layer_lr_scales(enc, cfg.layer_decay)):
                groups.append({"name": f"encoder{e}_layer{depth}", "lr_scale": scale, "params": params})
        return groups
    top = {id(p) for enc in encoders for b in top_blocks(enc, cfg.unfreeze_blocks) for p in b.parameters()}
    groups.append({"name": "encoders_top", "lr_scale": cfg.encoder_lr_scale,
                   "params": [(n, p) for n, p in named if id(p) in top]})
    return groups


def layer_lr_scales(encoder: nn.Module, decay: float) -> list[tuple[float, list]]:
    """Layer-wise LR decay (BEiT, VideoMAE): block i of L gets decay ** (L - i), the final norm
    1, and everything before the blocks (embedding, positions) decay ** (L + 1). Returns
    (lr_scale, [(name, param)]) per layer, embedding first."""
    blocks = list(top_blocks(encoder, 10 ** 6))
    norm = getattr(encoder, "norm", None)
    blocks = [b for b in blocks if b is not norm]
    depth = len(blocks)
    owner = {id(p): i + 1 for i, b in enumerate(blocks) for p in b.parameters()}
    if isinstance(norm, nn.Module):
        owner.update({id(p): depth + 1 for p in norm.parameters()})
    layers: list[list] = [[] for _ in range(depth + 2)]
    for name, p in encoder.named_parameters():
        layers[owner.get(id(p), 0)].append((name, p))
    scales = [decay ** (depth + 1 - i) for i in range(depth + 1)] + [1.0]
    return [(scale, params) for scale, params in zip(scales, layers) if params]


def pretrained_encoders(model: MVMAEClassifier, cfg: FinetuneConfig) -> list[nn.Module]:
    """The encoders that start from trained weights (``pretrained``, ``context_weights`` or a
    classifier ``init``); the others are new parts."""
    found = []
    if hasattr(model, "motion_encoder") and (cfg.pretrained or cfg.init):
        found.append(model.motion_encoder)
    if hasattr(model, "context_encoder") and (cfg.model.context_weights or cfg.init):
        found.append(model.context_encoder)
    return found
