"""Token masking strategies for masked motion modelling, one small callable class each.

Interface shared by every strategy::

    result = strategy(token_motion, generator)   # -> MaskResult(masked, dropped)

``token_motion``: float (B, T', h', w', 2), the mean camera-compensated motion per token in px per
frame (``mvmae.train.tokens.token_motion`` after ``mvmae.train.motion.compensate_camera``);
``generator``: the ``torch.Generator`` all randomness is drawn from, so a seed fixes the masks.
``masked`` (to be predicted) and ``dropped`` (neither seen nor predicted; only VideoMS drops) are
bool (B, N) in the token order of ``mvmae.train.tokens``: n = (ti * h' + yi) * w' + xi.

Every sample of a batch gets exactly the same number of masked and of dropped tokens, so MAE
gathers have fixed sizes; ``strategy.counts((T', h', w'))`` says how many in advance. Counts round
half up. Strategies that mask tubes or per time slice (``tube``, ``mgm``, ``mofo``) mask
``round(mask_ratio * h'w')`` tokens at every temporal index, i.e. ``T' * round(mask_ratio * h'w')``
in all (within T'/2 tokens of ``round(mask_ratio * N)``); ``random`` and ``videoms`` mask
``round(mask_ratio * num_kept_tokens)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import math
from dataclasses import dataclass

import torch
from torch import Tensor

MOFO_MODES = ("share", "inside")


@dataclass(frozen=True)
class MaskResult:
    """masked: bool (B, N), tokens to predict; dropped: bool (B, N), tokens neither seen nor predicted."""

    masked: Tensor
    dropped: Tensor

    @property
    def visible(self) -> Tensor:
        """bool (B, N): tokens the encoder sees."""
        return ~self.masked & ~self.dropped

    @property
    def num_masked(self) -> int:
        return int(self.masked[0].sum()) if len(self.masked) else 0

    @property
    def num_dropped(self) -> int:
        return int(self.dropped[0].sum()) if len(self.dropped) else 0

    def indices(self) -> tuple[Tensor, Tensor]:
        """(visible_index (B, N_vis), masked_index (B, N_mask)): int64 token indices, each row ascending.

        The MAE gather indices; dropped tokens are in neither. Relies on every row having the same
        counts, which every strategy here guarantees.
        """
        B = self.masked.shape[0]
        visible = self.visible.nonzero()[:, 1].reshape(B, -1)  # (B, N_vis), nonzero is row-major
        masked = self.masked.nonzero()[:, 1].reshape(B, -1)  # (B, N_mask)
        return visible, masked


def _count(ratio: float, n: int) -> int:
    """round(ratio * n), half up (Python's round() would round half to even)."""
    return int(math.floor(ratio * n + 0.5))


def _grid_of(token_motion: Tensor) -> tuple[int, int, int, int]:
    if token_motion.dim() != 5 or token_motion.shape[-1] != 2:
        raise ValueError(f"token_motion must be (B, T', h', w', 2), got {tuple(token_motion.shape)}")
    if not token_motion.is_floating_point():
        raise TypeError(f"token_motion must be floating point, got {token_motion.dtype}")
    B, T, h, w, _ = token_motion.shape
    return B, T, h, w


def _uniform(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    """Uniform [0, 1) float32 drawn on the generator's device, moved to ``like``'s device."""
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device)


def _gumbel_keys(log_weight: Tensor, generator: torch.Generator) -> Tensor:
    """Keys whose k largest are a weighted sample of k without replacement (Gumbel top-k)."""
    u = _uniform(tuple(log_weight.shape), generator, log_weight).clamp(min=torch.finfo(torch.float32).tiny)
    return log_weight - torch.log(-torch.log(u))


def _top_k(keys: Tensor, k: int) -> Tensor:
    """bool mask of the k largest ``keys`` (B, M) per row."""
    index = keys.topk(k, dim=-1).indices  # (B, k)
    return torch.zeros_like(keys, dtype=torch.bool).scatter_(-1, index, True)


def _highest_k(score: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """bool mask of the k highest ``score`` (B, M) per row, ties broken at random."""
    perm = _uniform(tuple(score.shape), generator, score).argsort(dim=-1)  # (B, M) random order
    order = score.gather(-1, perm).sort(dim=-1, descending=True, stable=True).indices
    index = perm.gather(-1, order[:, :k])  # (B, k)
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, index, True)


def _select_ranked(keys: Tensor, allowed: Tensor, counts: Tensor) -> Tensor:
    """Per row b, the ``counts[b]`` allowed entries with the largest ``keys`` (B, M): bool (B, M)."""
    keys = keys.masked_fill(~allowed, -math.inf)
    order = keys.argsort(dim=-1, descending=True, stable=True)  # (B, M)
    positions = torch.arange(keys.shape[-1], device=keys.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)  # (B, M) rank of each entry
    return (rank < counts[:, None]) & allowed


def keep_moving_visible(result: MaskResult, moving: Tensor, ratio: float,
                        generator: torch.Generator) -> MaskResult:
    """``result`` with at least ceil(ratio * moving tokens) of each row's ``moving`` (B, N) tokens
    visible: masked moving tokens (at random) swap with as many visible static ones, so every
    row keeps its counts; a row without enough visible static tokens swaps what it can."""
    visible = result.visible
    need = torch.ceil(ratio * moving.sum(dim=1).double()).long()  # (B,)
    short = (need - (visible & moving).sum(dim=1)).clamp(min=0)  # (B,)
    unmask_from, mask_from = result.masked & moving, visible & ~moving  # (B, N) each
    swaps = short.minimum(unmask_from.sum(dim=1)).minimum(mask_from.sum(dim=1))  # (B,)
    keys = _uniform(tuple(moving.shape), generator, moving.float())  # (B, N)
    unmask = _select_ranked(keys, unmask_from, swaps)
    newly = _select_ranked(keys, mask_from, swaps)
    return MaskResult((result.masked & ~unmask) | newly, result.dropped)


@dataclass(frozen=True)
class MaskingStrategy(ABC):
    """Base of the strategies: ``mask_ratio`` is the fraction of kept tokens to mask.

    ``visible_moving_ratio``: at least this share of each clip's *moving* tokens (compensated
    motion of at least ``moving_px`` px/frame) stays visible. Input and target are both motion
    here, so a masking that hides every moving token leaves the encoder nothing to infer the
    motion from (pixel MAEs keep the appearance; an MV-only pretext has no such fallback). The
    strategy's own mask is kept where it can be: the fewest masked moving tokens (at random) are
    swapped with as many visible static ones, so the counts do not change. 0 disables it.
    """

    mask_ratio: float = 0.9
    visible_moving_ratio: float = 0.0
    moving_px: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {self.mask_ratio}")
        if not 0.0 <= self.visible_moving_ratio <= 1.0:
            raise ValueError(f"visible_moving_ratio must be in [0, 1], got {self.visible_moving_ratio}")
        if self.moving_px < 0:
            raise ValueError(f"moving_px must be >= 0, got {self.moving_px}")

    def __call__(self, token_motion: Tensor, generator: torch.Generator) -> MaskResult:
        """token_motion (B, T', h', w', 2) px per frame -> the masked and dropped tokens."""
        result = self.mask(token_motion, generator)
        if self.visible_moving_ratio <= 0:
            return result
        moving = token_motion.norm(dim=-1).flatten(1) >= self.moving_px  # (B, N)
        return keep_moving_visible(result, moving, self.visible_moving_ratio, generator)

    def counts(self, grid: tuple[int, int, int]) -> tuple[int, int]:
        """(num_masked, num_dropped) per sample for a (T', h', w') token grid."""
        T, h, w = grid
        return _count(self.mask_ratio, T * h * w), 0

    @abstractmethod
    def mask(self, token_motion: Tensor, generator: torch.Generator) -> MaskResult:
        """The strategy's own mask, before ``visible_moving_ratio`` is enforced."""


@dataclass(frozen=True)
class _TubeCounts(MaskingStrategy):
    def counts(self, grid: tuple[int, int, int]) -> tuple[int, int]:
        T, h, w = grid
        return T * _count(self.mask_ratio, h * w), 0


@dataclass(frozen=True)
class RandomMasking(MaskingStrategy):
    """MAE: a uniform random subset of the tokens."""

    def mask(self, token_motion: Tensor, generator: torch.Generator) -> MaskResult:
        B, T, h, w = _grid_of(token_motion)
        num_masked, _ = self.counts((T, h, w))
        masked = _top_k(_uniform((B, T * h * w), generator, token_motion), num_masked)  # (B, N)
        return MaskResult(masked, torch.zeros_like(masked))


@dataclass(frozen=True)
class TubeMasking(_TubeCounts):
    """VideoMAE: one random spatial mask, repeated at every temporal index."""

    def mask(self, token_motion: Tensor, generator: torch.Generator) -> MaskResult:
        B, T, h, w = _grid_of(token_motion)
        spatial = _top_k(_uniform((B, h * w), generator, token_motion), _count(self.mask_ratio, h * w))
        masked = spatial[:, None, :].expand(B, T, h * w).reshape(B, T * h * w)  # (B, N)
        return MaskResult(masked, torch.zeros_like(masked))


def _warp_back(mask: Tensor, shift: Tensor) -> Tensor:
    """Carry ``mask`` (B, h, w) one temporal index along ``shift`` (B, h, w, 2), cells (dx, dy).

    Cell q takes the mask of q - round(shift[q]) (where its content came from, as MVs are stored
    at the destination); content entering from outside the grid is unmasked.
    """
    B, h, w = mask.shape
    ys = torch.arange(h, device=mask.device).view(1, h, 1)  # (1, h, 1)
    xs = torch.arange(w, device=mask.device).view(1, 1, w)  # (1, 1, w)
    src_x = xs - shift[..., 0].round().long()  # (B, h, w)
    src_y = ys - shift[..., 1].round().long()  # (B, h, w)
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    source = (src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)).reshape(B, h * w)  # (B, h'w')
    warped = mask.reshape(B, h * w).gather(1, source).reshape(B, h, w)  # (B, h, w)
    return warped & inside


@dataclass(frozen=True)
class MotionGuidedMasking(_TubeCounts):
    """MGM: masks start on moving tokens and are carried through time along the motion.

    At the first temporal index, ``round(mask_ratio * h'w')`` tokens are sampled without
    replacement with probability proportional to ``(|motion| + eps) ** alpha``. At each next index
    the mask is the previous one moved by that index's token motion, in cells
    ``motion_px_per_frame * frames_per_token / px_per_token``; then it is trimmed (dropping the
    lowest-motion carried tokens) or topped up (adding the highest-motion uncarried tokens, random
    among equals, so random where nothing moves) to the exact count.

    frames_per_token: frames per tubelet (t); px_per_token: image px per token cell side.
    eps: px/frame added to magnitudes so static tokens can still be picked; alpha: 0 is uniform.
    """

    frames_per_token: int = 2
    px_per_token: float = 16.0
    alpha: float = 1.0
    eps: float = 0.1
    visible_moving_ratio: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frames_per_token < 1 or self.px_per_token <= 0:
            raise ValueError(
                f"frames_per_token must be >= 1 and px_per_token > 0, got "
                f"{self.frames_per_token}, {self.px_per_token}"
            )
        if self.alpha < 0 or self.eps <= 0:
            raise ValueError(f"alpha must be >= 0 and eps > 0, got {self.alpha}, {self.eps}")

    def mask(self, token_motion: Tensor, generator: torch.Generator) -> MaskResult:
        B, T, h, w = _grid_of(token_motion)
        S = h * w
        k = _count(self.mask_ratio, S)
        magnitude = token_motion.norm(dim=-1)  # (B, T', h', w')
        shift = token_motion * (self.frames_per_token / self.px_per_token)  # (B, T', h', w', 2) cells
        # Above every magnitude, so carried tokens always rank before uncarried ones (no host sync).
        carried_bonus = magnitude.amax() + 1.0
        log_weight = self.alpha * torch.log(magnitude[:, 0].reshape(B, S) + self.eps)  # (B, S)
        current = _top_k(_gumbel_keys(log_weight, generator), k).reshape(B, h, w)  # (B, h', w')
        masks = [current]
        for ti in range(1, T):
            carried = _warp_back(current, shift[:, ti])  # (B, h', w')
            score = carried.to(magnitude.dtype) * carried_bonus + magnitude[:, ti]  # (B, h', w')
            current = _highest_k(score.reshape(B, S), k, generator).reshape(B, h, w)  # (B, h', w')
            masks.append(current)
        masked = torch.stack(masks, dim=1).reshape(B, T * S)  # (B, N)
        return MaskResult(masked, torch.zeros_like(masked))


def motion_area(token_motion: Tensor, std_factor: float = 1.0, min_motion_px: float = 0.5) -> Tensor:
    """Per sample, the bounding box of the tokens whose motion stands out: bool (B, h', w').

    A cell stands out when its temporal mean motion magnitude exceeds both
    ``mean + std_factor * std`` (over the sample's cells) and ``min_motion_px`` px/frame; the
    floor keeps compensation residue and static clips from producing a box. The box spans from
    the first to the last standing-out row and column; it is empty when no cell stands out.
    Note that one object covering most of the grid does not stand out from the mean + std
    rule: lower ``std_factor`` (0 compares with the mean) for such footage.
    """
    mean_magnitude = token_motion.norm(dim=-1).mean(dim=1)  # (B, h', w')
    flat = mean_magnitude.flatten(1)  # (B, h'w')
    threshold = flat.mean(dim=1) + std_factor * flat.std(dim=1, unbiased=False)  # (B,)
    moving = mean_magnitude > threshold.clamp(min=min_motion_px)[:, None, None]  # (B, h', w')

    def span(any_moving: Tensor) -> Tensor:  # (B, L) -> between the first and last True
        seen = any_moving.int()
        after_first = seen.cummax(dim=1).values.bool()
        before_last = seen.flip(1).cummax(dim=1).values.flip(1).bool()
        return after_first & before_last

    rows = span(moving.any(dim=2))  # (B, h')
    cols = span(moving.any(dim=1))  # (B, w')
    return rows[:, :, None] & cols[:, None, :]  # (B, h', w')


@dataclass(frozen=True)
class MotionFocusedMasking(_TubeCounts):
    """MOFO: tube masking focused on the motion area (``motion_area``'s box, per sample).

    K = round(mask_ratio * h'w') tubes are masked (random within each region).
    ``mode='share'`` (the paper's wording): round(inside_ratio * K) of them inside the box, the rest
    outside.
    ``mode='inside'`` (the default: what the published code does): round(inside_ratio * box area) tubes inside
    the box are masked, and the rest of the K outside it.
    Clamping, when the box cannot honour the split: a box with too few tubes is masked whole
    (the rest go outside), and when outside has too few tubes it is masked whole and the rest go
    inside; ``inside`` never masks more than K tubes in the box. An empty box (nothing moves, e.g.
    a static clip) gives plain tube masking.
    """

    inside_ratio: float = 0.75
    mode: str = "inside"
    visible_moving_ratio: float = 0.25
    std_factor: float = 1.0
    min_motion_px: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.inside_ratio <= 1.0:
            raise ValueError(f"inside_ratio must be in [0, 1], got {self.inside_ratio}")
        if self.mode not in MOFO_MODES:
            raise ValueError(f"mode must be one of {MOFO_MODES}, got {self.mode!r}")
        if self.min_motion_px < 0:
            raise ValueError(f"min_motion_px must be >= 0, got {self.min_motion_px}")

    def split(self, box_area: Tensor, num_cells: int) -> tuple[Tensor, Tensor]:
        """Masked tubes (inside, outside) per sample for box areas ``box_area`` (B,), long each."""
        k = _count(self.mask_ratio, num_cells)
        if self.mode == "share":
            inside = torch.full_like(box_area, _count(self.inside_ratio, k)).minimum(box_area)
        else:
            inside = torch.floor(self.inside_ratio * box_area.double() + 0.5).long().clamp(max=k)
        outside = k - inside
        overflow = (outside - (num_cells - box_area)).clamp(min=0)  # outside region too small
        return inside + overflow, outside - overflow

    def mask(self, token_motion: Tensor, generator: torch.Generator) -> MaskResult:
        B, T, h, w = _grid_of(token_motion)
        box = motion_area(token_motion, self.std_factor, self.min_motion_px).reshape(B, h * w)  # (B, S)
        num_inside, num_outside = self.split(box.sum(dim=1), h * w)
        keys = _uniform((B, h * w), generator, token_motion)  # (B, S)
        spatial = _select_ranked(keys, box, num_inside) | _select_ranked(keys, ~box, num_outside)
        masked = spatial[:, None, :].expand(B, T, h * w).reshape(B, T * h * w)  # (B, N)
        return MaskResult(masked, torch.zeros_like(masked))


@dataclass(frozen=True)
class VideoMSMasking(MaskingStrategy):
    """VideoMS: dynamic frame selection, then motion-centric token selection.

    The round(drop_ratio * T') temporal indices with the least total motion magnitude are dropped
    whole (ties at random); of the kept tokens, round(mask_ratio * kept) are masked, sampled
    without replacement with probability proportional to ``(|motion| + eps) ** alpha`` px/frame,
    so high-motion tokens are masked first (alpha = 0: uniform).
    """

    drop_ratio: float = 0.25
    alpha: float = 1.0
    eps: float = 0.1
    visible_moving_ratio: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.drop_ratio < 1.0:
            raise ValueError(f"drop_ratio must be in [0, 1), got {self.drop_ratio}")
        if self.alpha < 0 or self.eps <= 0:
            raise ValueError(f"alpha must be >= 0 and eps > 0, got {self.alpha}, {self.eps}")

    def counts(self, grid: tuple[int, int, int]) -> tuple[int, int]:
        T, h, w = grid
        num_dropped_slices = _count(self.drop_ratio, T)
        if num_dropped_slices >= T:
            raise ValueError(f"drop_ratio {self.drop_ratio} drops all {T} temporal indices")
        kept = (T - num_dropped_slices) * h * w
        return _count(self.mask_ratio, kept), num_dropped_slices * h * w

    def mask(self, token_motion: Tensor, generator: torch.Generator) -> MaskResult:
        B, T, h, w = _grid_of(token_motion)
        S = h * w
        num_masked, num_dropped = self.counts((T, h, w))
        magnitude = token_motion.norm(dim=-1).reshape(B, T, S)  # (B, T', S)
        low_motion = _highest_k(-magnitude.sum(dim=2), num_dropped // S, generator)  # (B, T')
        dropped = low_motion[:, :, None].expand(B, T, S).reshape(B, T * S)  # (B, N)
        log_weight = self.alpha * torch.log(magnitude.reshape(B, T * S) + self.eps)  # (B, N)
        keys = _gumbel_keys(log_weight, generator).masked_fill(dropped, -math.inf)
        return MaskResult(_top_k(keys, num_masked), dropped)


MASKINGS: dict[str, type[MaskingStrategy]] = {
    "random": RandomMasking,
    "tube": TubeMasking,
    "mgm": MotionGuidedMasking,
    "mofo": MotionFocusedMasking,
    "videoms": VideoMSMasking,
}


def build_masking(name: str, **options) -> MaskingStrategy:
    """The masking strategy called ``name`` (a key of ``MASKINGS``), built with ``options``."""
    if name not in MASKINGS:
        raise ValueError(f"unknown masking {name!r}; choose from {sorted(MASKINGS)}")
    try:
        return MASKINGS[name](**options)
    except TypeError as exc:  # an option the strategy does not take
        raise ValueError(f"bad options for {name!r} masking: {exc}") from exc
