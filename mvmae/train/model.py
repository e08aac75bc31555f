"""The MV-MAE classifier: Context encoder (I-frames) + Motion encoder (MV tokens) + Temporal
Transformer.

A clip of ``num_segments x segment_frames`` MV frames and one I-frame per segment:

    motion:   segment MV field -> tokens -> MotionEncoder -> [DPTAM] -> mean   (B, S, C_m)
    context:  segment I-frame -> timm backbone (pooled features)               (B, S, C_c)
    fusion:   concat + linear, or AFM (gated appearance/motion interaction)    (B, S, D)
    temporal: [CLS] + S segment tokens -> Transformer -> CLS -> MLP head       (B, num_classes)

(``temporal_tokens='step'``: S x T' tokens instead of S, one per tubelet time step.)

``inputs='mv'`` or ``'iframe'`` keeps one path (ablations). Nothing is downloaded: the context
backbone starts from random weights or from a local file (``context_weights``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from mvmae.shards.clips import ClipConfig
from mvmae.train.motion_encoder import MotionEncoder, motion_encoder_config
from mvmae.train.tokenizer import TokenSpec, tokenize

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# mvmae: the MV-MAE classifier below; cnn3d: the plain 3D CNN baseline (``baseline``).
ARCHS = ("mvmae", "cnn3d")
MOTION_POOLS = ("mean", "motion", "attention")
TEMPORAL_TOKENS = ("segment", "step")


@dataclass
class ClassifierConfig:
    """num_segments x segment_frames MV frames per clip (the Motion encoder sees one segment of
    ``segment_frames``; it must equal the token spec's num_frames). dim: width of the fused
    segment tokens and the Temporal Transformer. arch: ``mvmae`` or ``cnn3d`` (the baseline of
    ``baseline.CNN3DClassifier``, ``cnn_width`` channels in its first stage). motion_pool:
    ``motion`` (default): a mean weighted by each token's camera-compensated motion
    magnitude, so the few moving tokens are not drowned by static background (no parameters; on
    the trajectories set the plain mean fits 36% of the training clips, this 97%); ``mean`` over
    a segment's tokens (published); ``attention``: a learnt query attends over the tokens.
    motion_embed: the Motion encoder's token embedding (``MotionEncoderConfig.embed``): ``conv``
    (default; on the trajectories set 0.95 test top-1 in 50 epochs against 0.71) or ``linear``
    (published); a pretrained encoder brings its own.
    temporal_tokens: what the Temporal Transformer sees of the motion path: ``segment`` (published)
    one token per segment, its motion pooled over space and the segment's time steps; ``step``
    one token per tubelet time step (``num_segments x T'``), pooled over space only, so the order
    of the motion inside a segment reaches the transformer as a sequence (a segment's I-frame
    features are repeated over its steps)."""

    num_classes: int = 155
    arch: str = "mvmae"
    inputs: str = "both"
    context_model: str = "vit_base_patch16_224"
    context_weights: str = ""
    motion_size: str = "small"
    motion_pos: str = "joint"
    motion_embed: str = "conv"
    motion_pool: str = "motion"
    temporal_tokens: str = "segment"
    fusion: str = "concat"
    dptam: bool = False
    num_segments: int = 8
    dim: int = 512
    temporal_layers: int = 2
    temporal_heads: int = 8
    dropout: float = 0.1
    cnn_width: int = 32

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.inputs not in ("mv", "iframe", "both"):
            raise ValueError(f"inputs must be mv, iframe or both, got {self.inputs!r}")
        if self.motion_pool not in MOTION_POOLS:
            raise ValueError(f"motion_pool must be one of {MOTION_POOLS}, got {self.motion_pool!r}")
        if self.temporal_tokens not in TEMPORAL_TOKENS:
            raise ValueError(f"temporal_tokens must be one of {TEMPORAL_TOKENS}, got {self.temporal_tokens!r}")
        if self.fusion not in ("concat", "afm"):
            raise ValueError(f"fusion must be concat or afm, got {self.fusion!r}")
        if self.num_classes < 2 or self.num_segments < 1:
            raise ValueError("num_classes must be >= 2 and num_segments >= 1")
        if self.dim % self.temporal_heads:
            raise ValueError(f"dim {self.dim} must be divisible by temporal_heads {self.temporal_heads}")


def classifier_clip(model: ClassifierConfig, spec: TokenSpec, mode: str, **options) -> ClipConfig:
    """The reader's clips for a classifier of ``model`` over tokens ``spec``: ``num_segments``
    segments of ``spec.num_frames`` frames and one I-frame per segment, none for ``inputs='mv'``
    (no Context encoder: no JPEG is decoded). ``mode``: train, center or multi; ``options``: more
    ``ClipConfig`` fields (augmentation, ``num_clips``, ``eval_crop``)."""
    segments = model.num_segments
    return ClipConfig(num_frames=spec.num_frames * segments, stride=spec.stride, mode=mode,
                      num_iframes=0 if model.inputs == "mv" else segments, mv_size=spec.mv_size,
                      iframe_size=spec.iframe_size, **options)


class AttentionPool(nn.Module):
    """A learnt query attends over a segment's tokens (multi-head): where and which way the few
    moving tokens go is not averaged away by the many static ones."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, C) -> (B, C)."""
        q = self.query.expand(x.shape[0], -1, -1)  # (B, 1, C)
        return self.norm(self.attn(q, x, x, need_weights=False)[0][:, 0])  # (B, C)


class DPTAM(nn.Module):
    """Double-pooling temporal attention: per time step, average- and max-pooled channel
    descriptors (over space) go through temporal convolutions (kernel 3) into a sigmoid gate
    that recalibrates the features over time and channels."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, dim // reduction)
        self.avg = nn.Sequential(nn.Conv1d(dim, hidden, 3, padding=1), nn.GELU(), nn.Conv1d(hidden, dim, 3, padding=1))
        self.max = nn.Sequential(nn.Conv1d(dim, hidden, 3, padding=1), nn.GELU(), nn.Conv1d(hidden, dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, N, C) -> (B, T, N, C)."""
        avg = x.mean(2).transpose(1, 2)  # (B, C, T)
        mx = x.amax(2).transpose(1, 2)  # (B, C, T)
        gate = torch.sigmoid(self.avg(avg) + self.max(mx)).transpose(1, 2)  # (B, T, C)
        return x * gate[:, :, None, :]


class AdaptiveFusion(nn.Module):
    """AFM: project both feature streams, then a learnt gate mixes appearance, motion and their
    interaction (element-wise product) instead of plain addition."""

    def __init__(self, appearance_dim: int, motion_dim: int, dim: int) -> None:
        super().__init__()
        self.appearance = nn.Linear(appearance_dim, dim)
        self.motion = nn.Linear(motion_dim, dim)
        self.gate = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 2 * dim))
        self.out = nn.LayerNorm(dim)

    def forward(self, appearance: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        a, m = self.appearance(appearance), self.motion(motion)  # (B, S, D) each
        inter = a * m
        g_am, g_inter = torch.sigmoid(self.gate(torch.cat([a, m, inter], -1))).chunk(2, -1)
        return self.out(g_am * a + (1 - g_am) * m + g_inter * inter)  # (B, S, D)


def build_context_encoder(name: str, weights: str = "") -> nn.Module:
    """A timm backbone returning pooled features (num_classes=0); optional local weights."""
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=0)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(state, strict=False)
        log.info(f"context weights {weights}: {len(missing)} missing, {len(unexpected)} unexpected keys")
    return model


def top_blocks(module: nn.Module, k: int) -> list[nn.Module]:
    """The last ``k`` blocks of a backbone (timm ViTs: ``blocks``; ConvNeXt and friends:
    ``stages``; ResNets: ``layer4``, ``layer3``), plus its final norm when it has one."""
    for attr in ("blocks", "stages", "layers"):
        seq = getattr(module, attr, None)
        if isinstance(seq, (nn.ModuleList, nn.Sequential)) and len(seq):
            found = list(seq)[-k:] if k else []
            break
    else:
        found = [getattr(module, f"layer{i}") for i in (4, 3, 2, 1) if hasattr(module, f"layer{i}")][:k]
    norm = getattr(module, "norm", None)
    return found + ([norm] if k and isinstance(norm, nn.Module) else [])


class MVMAEClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig, spec: TokenSpec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        d = cfg.dim
        motion_dim = appearance_dim = 0
        if cfg.inputs in ("mv", "both"):
            enc = motion_encoder_config(cfg.motion_size, in_dim=spec.token_dim,
                                        grid=tuple(spec.grid.shape), pos=cfg.motion_pos,
                                        embed=cfg.motion_embed)
            self.motion_encoder = MotionEncoder(enc)
            self.dptam = DPTAM(enc.dim) if cfg.dptam else None
            self.motion_attention = AttentionPool(enc.dim, enc.heads) if cfg.motion_pool == "attention" else None
            motion_dim = enc.dim
        if cfg.inputs in ("iframe", "both"):
            self.context_encoder = build_context_encoder(cfg.context_model, cfg.context_weights)
            appearance_dim = self.context_encoder.num_features
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if cfg.fusion == "afm" and cfg.inputs == "both":
            self.fusion = AdaptiveFusion(appearance_dim, motion_dim, d)
        else:
            self.fusion = nn.Sequential(nn.Linear(appearance_dim + motion_dim, d), nn.LayerNorm(d))
        # Tokens per segment in the Temporal Transformer: 1, or the motion grid's T' time steps.
        self.steps = spec.grid.T if cfg.temporal_tokens == "step" else 1
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, cfg.num_segments * self.steps + 1, d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d, cfg.temporal_heads, 4 * d, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.temporal = nn.TransformerEncoder(layer, cfg.temporal_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(d, cfg.num_classes))

    def encoders(self) -> list[nn.Module]:
        return [m for m in (getattr(self, "motion_encoder", None), getattr(self, "context_encoder", None))
                if m is not None]

    def motion_features(self, mv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """mv (B, S*F, 2, h, w), valid (B, S*F, h, w) -> (B, S * steps, C_m): per segment one
        feature (``temporal_tokens='segment'``) or one per time step T' (``'step'``)."""
        B, S = mv.shape[0], self.cfg.num_segments
        seg_mv = mv.reshape(B * S, -1, *mv.shape[2:])  # (B*S, F, 2, h, w)
        seg_valid = valid.reshape(B * S, -1, *valid.shape[2:])  # (B*S, F, h, w)
        tokens, motion = tokenize(seg_mv, seg_valid, self.spec)  # (B*S, N, D), (B*S, T', h', w', 2)
        x = self.motion_encoder(tokens)  # (B*S, N, C)
        g = self.spec.grid
        x = x.reshape(B * S, g.T, g.h * g.w, -1)  # (B*S, T', h'w', C)
        if self.dptam is not None:
            x = self.dptam(x)
        # Pool over space, and over the segment's time steps unless each step is a token.
        steps = self.steps
        x = x.reshape(B * S, steps, g.T // steps * g.h * g.w, -1)  # (B*S, steps, M, C)
        if self.motion_attention is not None:
            pooled = self.motion_attention(x.flatten(0, 1))  # (B*S*steps, C)
        elif self.cfg.motion_pool == "motion":
            weight = motion.norm(dim=-1).reshape(B * S, steps, -1, 1) + 1e-3  # (B*S, steps, M, 1)
            pooled = (x * weight).sum(dim=2) / weight.sum(dim=2)  # (B*S, steps, C)
        else:
            pooled = x.mean(dim=2)  # (B*S, steps, C)
        return pooled.reshape(B, S * steps, -1)  # (B, S * steps, C)

    def context_features(self, iframes: torch.Tensor) -> torch.Tensor:
        """iframes uint8 (B, K, 3, H, W), K = 1 or num_segments -> (B, S * steps, C_c)."""
        B, K = iframes.shape[:2]
        x = (iframes.reshape(B * K, *iframes.shape[2:]).float() / 255 - self.mean) / self.std
        feats = self.context_encoder(x).reshape(B, K, -1)  # (B, K, C)
        if K != self.cfg.num_segments:
            feats = feats.mean(1, keepdim=True).expand(-1, self.cfg.num_segments, -1)
        return feats.repeat_interleave(self.steps, dim=1) if self.steps > 1 else feats  # (B, S * steps, C)

    def forward(self, mv: torch.Tensor, valid: torch.Tensor, iframes: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.cfg.inputs in ("iframe", "both"):
            parts.append(self.context_features(iframes))
        if self.cfg.inputs in ("mv", "both"):
            parts.append(self.motion_features(mv, valid))
        x = self.fusion(*parts) if isinstance(self.fusion, AdaptiveFusion) else self.fusion(torch.cat(parts, -1))
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos  # (B, S * steps + 1, D)
        return self.head(self.temporal(x)[:, 0])  # (B, num_classes)


def build_classifier(cfg: ClassifierConfig, spec: TokenSpec) -> nn.Module:
    """The classifier of ``cfg.arch`` over tokens (and clips) ``spec``."""
    if cfg.arch == "cnn3d":
        from mvmae.train.baseline import CNN3DClassifier

        return CNN3DClassifier(cfg, spec)
    return MVMAEClassifier(cfg, spec)
