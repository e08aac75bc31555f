"""The MV-MAE Motion encoder and its masked-token pretraining decoder.

Tokens are tubelets of the motion-vector field (``mvmae.train.tokens``): ``tokens`` is float
``(B, N, in_dim)`` with ``N = T' * h' * w'`` laid out time-major, i.e. token ``n`` sits at
``t = n // (h' * w')``, ``y = (n % (h' * w')) // w'``, ``x = n % w'`` -- the order of
``tokens.reshape(B, T', h', w', in_dim)``.

Index conventions (MAE): ``visible_index`` / ``keep_index`` ``(B, N_vis)`` and ``masked_index``
``(B, N_mask)`` are int64 indices into ``N``, each row sorted ascending, the two disjoint. They
need not cover all ``N`` tokens (tokens without valid motion may be left out of both). The encoder
sees only visible tokens; the decoder predicts only masked ones, row ``j`` of its output being the
prediction for token ``masked_index[:, j]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mvmae.train.vit_block import Block, trunc_normal_

POSITION_KINDS = ("joint", "factorised", "sincos")
EMBED_KINDS = ("linear", "conv")
PREDICT_KINDS = ("ids", "vectors")

# name -> (dim, depth, heads); 'small' is the published MV-MAE Motion encoder (ViT-S).
MOTION_ENCODER_SIZES: dict[str, tuple[int, int, int]] = {
    "micro": (64, 2, 2),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}


@dataclass
class MotionEncoderConfig:
    """Architecture of the Motion encoder (model config, separate from any run config).

    in_dim: values per token (frames x cells x cells x (dx, dy); 2 x 1 x 1 x 2 = 4).
    grid: token grid (T', h', w'). dim / depth / heads / mlp_ratio: the ViT.
    pos: 'joint' learns one (N, dim) table; 'factorised' learns temporal (T', dim) and spatial
    (h' * w', dim) tables and sums them (fewer parameters, generalises across grid positions);
    'sincos' is fixed, not learnt: sines and cosines of t, y and x in three parts of the width
    (as MAE and VideoMAE fix theirs), so neighbours in space and time start out related.
    drop_path: stochastic depth rate of the last block (linearly increasing from 0).
    embed: 'linear' (ViT) maps each token alone; 'conv' is a 3x3x3 convolution over the token
    grid, so each token's embedding starts out knowing its neighbours in space and time (a
    convolutional stem, as in "Early convolutions help transformers see better"); tokens the
    encoder does not see (masked, dropped) enter it as zeros, so nothing of them leaks.
    """

    in_dim: int = 4
    grid: tuple[int, int, int] = (8, 14, 14)
    dim: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    pos: str = "joint"
    drop_path: float = 0.0
    embed: str = "linear"

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)  # YAML gives a list
        if len(self.grid) != 3 or min(self.grid) < 1:
            raise ValueError(f"grid must be 3 positive sizes (T', h', w'), got {self.grid}")
        if self.in_dim < 1 or self.depth < 1 or self.heads < 1:
            raise ValueError(f"in_dim, depth and heads must be >= 1, got "
                             f"{self.in_dim}, {self.depth}, {self.heads}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.pos not in POSITION_KINDS:
            raise ValueError(f"pos must be one of {POSITION_KINDS}, got {self.pos!r}")
        if self.embed not in EMBED_KINDS:
            raise ValueError(f"embed must be one of {EMBED_KINDS}, got {self.embed!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


@dataclass
class MotionDecoderConfig:
    """Architecture of the pretraining decoder (discarded after pretraining).

    num_codes: codebook size K. predict: 'ids' -> logits over the K codes (cross-entropy
    against codebook ids, the published objective); 'vectors' -> regression of the in_dim
    token values (a codebook-free baseline).
    """

    dim: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    num_codes: int = 1024
    predict: str = "ids"

    def __post_init__(self) -> None:
        if self.depth < 1 or self.heads < 1 or self.num_codes < 2:
            raise ValueError(f"depth, heads must be >= 1 and num_codes >= 2, got "
                             f"{self.depth}, {self.heads}, {self.num_codes}")
        if self.dim % self.heads:
            raise ValueError(f"decoder dim {self.dim} is not divisible by heads {self.heads}")
        if self.predict not in PREDICT_KINDS:
            raise ValueError(f"predict must be one of {PREDICT_KINDS}, got {self.predict!r}")


def motion_encoder_config(size: str = "small", **overrides) -> MotionEncoderConfig:
    """A named size ('micro', 'tiny', 'small', 'base') with optional field overrides."""
    if size not in MOTION_ENCODER_SIZES:
        raise ValueError(f"unknown motion encoder size {size!r}; known: {sorted(MOTION_ENCODER_SIZES)}")
    dim, depth, heads = MOTION_ENCODER_SIZES[size]
    return MotionEncoderConfig(**{"dim": dim, "depth": depth, "heads": heads, **overrides})


def _init_weights(module: nn.Module) -> None:
    # ViT/MAE initialisation: small truncated-normal linears, zero biases, unit LayerNorms.
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions (M,) -> (M, dim): sines then cosines at ``dim / 2`` geometric frequencies."""
    freq = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / max(1, dim // 2))
    angle = positions.double()[:, None] * freq[None]  # (M, dim/2)
    return torch.cat([angle.sin(), angle.cos()], dim=1).float()


def sincos_positions(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed positions of a (T', h', w') token grid: (N, dim) in the time-major token order, the
    width split in three even parts for t, y and x (x takes what is left over)."""
    t, h, w = grid
    part = (dim // 3) // 2 * 2
    if part < 2 or dim % 2:
        raise ValueError(f"sincos positions need an even width of at least 6, got {dim}")
    tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([_sincos(tt.flatten(), part), _sincos(yy.flatten(), part),
                      _sincos(xx.flatten(), dim - 2 * part)], dim=1)  # (N, dim)


def _gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), index (B, M) int64 -> (B, M, C): x[b, index[b, m]]."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float, drop_path: float) -> nn.ModuleList:
    rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]  # stochastic depth ramp
    return nn.ModuleList(
        Block(dim, heads, mlp_ratio=mlp_ratio, drop_path=rate) for rate in rates)


class MotionEncoder(nn.Module):
    """ViT over motion tokens: linear embedding, learnt positions, ViT blocks (``vit_block``), final LayerNorm.

    ``blocks`` is an ``nn.ModuleList`` so fine-tuning can unfreeze the top k of them.
    """

    def __init__(self, config: MotionEncoderConfig) -> None:
        super().__init__()
        self.config = config
        t, h, w = config.grid
        if config.embed == "conv":
            self.embed = nn.Conv3d(config.in_dim, config.dim, kernel_size=3, padding=1)
        else:
            self.embed = nn.Linear(config.in_dim, config.dim)
        if config.pos == "joint":
            self.pos_embed = nn.Parameter(torch.zeros(config.num_tokens, config.dim))
        elif config.pos == "sincos":
            self.register_buffer("pos_fixed", sincos_positions(config.grid, config.dim), persistent=False)
        else:
            self.pos_embed_temporal = nn.Parameter(torch.zeros(t, config.dim))
            self.pos_embed_spatial = nn.Parameter(torch.zeros(h * w, config.dim))
        self.blocks = _blocks(config.dim, config.depth, config.heads, config.mlp_ratio,
                              config.drop_path)
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        for p in self._position_tables():
            trunc_normal_(p, std=0.02)
        self.apply(_init_weights)

    def _position_tables(self) -> list[nn.Parameter]:
        if self.config.pos == "joint":
            return [self.pos_embed]
        if self.config.pos == "sincos":
            return []
        return [self.pos_embed_temporal, self.pos_embed_spatial]

    def position_embedding(self) -> torch.Tensor:
        """(N, dim) position of every token, in the time-major token order."""
        if self.config.pos == "joint":
            return self.pos_embed
        if self.config.pos == "sincos":
            return self.pos_fixed
        t_pos = self.pos_embed_temporal.unsqueeze(1)  # (T', 1, C)
        s_pos = self.pos_embed_spatial.unsqueeze(0)  # (1, h'w', C)
        return (t_pos + s_pos).reshape(-1, self.config.dim)  # (T' * h'w', C)

    def forward(self, tokens: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
        """tokens float (B, N, in_dim); keep_index int64 (B, N_vis) or None (all tokens)
        -> (B, N_vis, dim) features of the kept tokens, in keep_index order."""
        b, n, d = tokens.shape
        if n != self.config.num_tokens or d != self.config.in_dim:
            raise ValueError(f"expected tokens (B, {self.config.num_tokens}, {self.config.in_dim}) "
                             f"for grid {self.config.grid}, got {tuple(tokens.shape)}")
        pos = self.position_embedding().unsqueeze(0).expand(b, -1, -1)  # (B, N, C)
        if self.config.embed == "conv":
            x = self._conv_embed(tokens, keep_index) + pos  # (B, N, C)
            if keep_index is not None:
                x = _gather_tokens(x, keep_index)  # (B, N_vis, C)
        else:
            if keep_index is not None:
                # Embedding is per token, so gathering first equals embedding all then gathering,
                # at N_vis / N of the cost (MAE: the encoder never sees masked tokens).
                tokens = _gather_tokens(tokens, keep_index)  # (B, N_vis, in_dim)
                pos = _gather_tokens(pos, keep_index)  # (B, N_vis, C)
            x = self.embed(tokens) + pos  # (B, N_vis, C)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def _conv_embed(self, tokens: torch.Tensor, keep_index: torch.Tensor | None) -> torch.Tensor:
        """tokens (B, N, in_dim) -> (B, N, C) by the 3x3x3 stem over the (T', h', w') grid; tokens
        outside ``keep_index`` are zeroed first (the encoder must not see masked tokens)."""
        b, n, d = tokens.shape
        if keep_index is not None:
            seen = tokens.new_zeros(b, n).scatter_(1, keep_index, 1.0)  # (B, N)
            tokens = tokens * seen[..., None]
        t, h, w = self.config.grid
        grid = tokens.reshape(b, t, h, w, d).permute(0, 4, 1, 2, 3)  # (B, in_dim, T', h', w')
        return self.embed(grid).flatten(2).transpose(1, 2)  # (B, N, C), time-major

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, in_dim) -> (B, T', dim): all tokens encoded, mean over space per time
        index (the per-segment motion feature used by fine-tuning)."""
        t, h, w = self.config.grid
        x = self.forward(tokens)  # (B, N, C)
        return x.reshape(x.shape[0], t, h * w, -1).mean(dim=2)  # (B, T', C)


class MaskedMotionDecoder(nn.Module):
    """Predicts the masked tokens from the encoded visible ones.

    The visible features are projected to the decoder width, a learnt mask token stands in for
    every masked token, decoder positions (joint over N) are added to both, blocks run over the
    N_vis + N_mask sequence, and only the masked rows are returned.
    """

    def __init__(self, config: MotionDecoderConfig, encoder_dim: int, num_tokens: int,
                 in_dim: int = 4) -> None:
        super().__init__()
        self.config = config
        self.num_tokens = num_tokens
        self.proj = nn.Linear(encoder_dim, config.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(num_tokens, config.dim))
        self.blocks = _blocks(config.dim, config.depth, config.heads, config.mlp_ratio, 0.0)
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        out_dim = config.num_codes if config.predict == "ids" else in_dim
        self.head = nn.Linear(config.dim, out_dim)
        trunc_normal_(self.mask_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    def forward(self, x_vis: torch.Tensor, visible_index: torch.Tensor,
                masked_index: torch.Tensor) -> torch.Tensor:
        """x_vis (B, N_vis, encoder_dim), visible_index (B, N_vis), masked_index (B, N_mask)
        -> (B, N_mask, K) logits ('ids') or (B, N_mask, in_dim) vectors ('vectors')."""
        b, n_mask = masked_index.shape
        pos = self.pos_embed.unsqueeze(0).expand(b, -1, -1)  # (B, N, D)
        vis = self.proj(x_vis) + _gather_tokens(pos, visible_index)  # (B, N_vis, D)
        masked = self.mask_token + _gather_tokens(pos, masked_index)  # (B, N_mask, D)
        # Attention is order-free given positions, so masked tokens can simply go last.
        x = torch.cat([vis, masked], dim=1)  # (B, N_vis + N_mask, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, x.shape[1] - n_mask:]))  # (B, N_mask, out)


class MaskedMotionModel(nn.Module):
    """Motion encoder + masked decoder: the MV-MAE pretraining model."""

    def __init__(self, encoder: MotionEncoderConfig, decoder: MotionDecoderConfig) -> None:
        super().__init__()
        self.encoder = MotionEncoder(encoder)
        self.decoder = MaskedMotionDecoder(decoder, encoder.dim, encoder.num_tokens,
                                           encoder.in_dim)

    def forward(self, tokens: torch.Tensor, visible_index: torch.Tensor,
                masked_index: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, in_dim), visible_index (B, N_vis), masked_index (B, N_mask), indices
        into N sorted ascending -> (B, N_mask, K) logits (or (B, N_mask, in_dim) vectors)."""
        x_vis = self.encoder(tokens, visible_index)  # (B, N_vis, C)
        return self.decoder(x_vis, visible_index, masked_index)
