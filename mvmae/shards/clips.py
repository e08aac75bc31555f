"""Clip sampling and augmentation: one shard sample -> fixed-size clips of MV fields + I-frames.

No torch here (the reader's collation turns :class:`Clip` lists into tensors). Sources
(``sources.py``): :class:`ShardClipSource` decodes a raw shard sample lazily,
:class:`ArraySource` wraps arrays; :class:`IFrameOps` decodes and crops the I-frames.
The rules (which frames, looping or padding, which I-frames, crops, flips and the units of the
vectors afterwards) are documented in ``FORMAT.md``, section "Reader".

Geometry. A sample's MV field covers its source frames (``size`` = (H, W) px) with ``grid``-px
cells, the last row/column possibly partial; its I-frames are the same frames resized (aspect
kept). A crop is a box ``(y0, x0, y1, x1)`` in *normalized* source coordinates (0..1 of H and W),
so the I-frames and the MV field are cropped by the same box whatever their resolutions. The
box is resized to ``iframe_size`` x ``iframe_size`` px for the I-frames and ``mv_size`` x
``mv_size`` cells for the field. MV cells are resampled by area: an output cell's vector is the
mean of the valid source vectors under it, weighted by overlap, and it is valid when at least
``min_valid_ratio`` of its area holds vectors. Vectors are then rescaled from source px per frame
to px per frame of the output I-frame (``iframe_size`` px across the box), per axis.
"""

from __future__ import annotations

import itertools
import math
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from mvmae.shards.fields import (FULL_BOX, Box, area_weights, flip_field, resample_mv,  # noqa: F401
                                 rotate_field, snap_box)  # area_weights: for callers
from mvmae.shards.sample import SampleError
from mvmae.shards.sources import (PIL_IFRAMES, ArraySource, ClipSource, IFrameOps, PixelBox,  # noqa: F401
                                  ShardClipSource)  # ArraySource, ShardClipSource: clip sources, for callers
from mvmae.shards.stream import Handler, reraise_exception


CLIP_MODES = ("train", "center", "multi")
SHORT_VIDEO_MODES = ("loop", "pad")
EVAL_CROPS = ("center", "full")



@dataclass
class ClipConfig:
    """How clips are cut from a sample and augmented.

    num_frames: T frames per clip; stride: display frames between consecutive clip frames (each
    clip frame keeps its own per-frame field: vectors stay px per display frame, not summed).
    mode: ``train`` (one clip per sample, start drawn uniformly from every start that fits, random
    crop + flip), ``center`` (one centred clip), ``multi`` (``num_clips`` evenly spaced clips, first
    to last start that fits). short_video: a sample shorter than the clip span ``(T-1)*stride+1``
    is ``loop``-ed (frame indices wrap around, every clip frame real) or ``pad``-ded (frames past
    the end have mv 0, valid False and frame index -1); its clips all start at frame 0.
    num_iframes: K I-frames per clip, the nearest to the clip centre by display index (ties: the
    earlier one), in display order; a sample with fewer repeats its nearest ones. 0: no I-frame
    is decoded (motion-only training: pretraining, the codebook, ``--inputs mv``); the random
    draws and so the fields are the same as with K > 0.
    iframe_size: output I-frames are H = W = iframe_size px. mv_size: output fields are h = w =
    mv_size cells; the defaults (224 px, 14 cells) put one cell on each 16x16-px patch of a
    ViT-B/16 input. min_valid_ratio: an output cell is valid when at least this fraction of its
    area is covered by source cells with vectors.
    Train augmentation: flip_prob (horizontal flip of I-frames and field, dx negated), rotate
    (a random number of quarter turns of I-frames and field, positions and vectors turned together:
    for top-down footage, where no direction is "up"),
    crop_area (fraction of the source frame's area) and crop_aspect (width/height of the box in
    source px) of a random resized crop, drawn as torchvision's ``RandomResizedCrop``.
    eval_crop: ``center`` (the largest centred square, aspect kept) or ``full`` (the whole frame
    squeezed to a square) for the ``center`` and ``multi`` modes.
    """

    num_frames: int = 16
    stride: int = 1
    mode: str = "train"
    num_clips: int = 1
    short_video: str = "loop"
    num_iframes: int = 1
    iframe_size: int = 224
    mv_size: int = 14
    min_valid_ratio: float = 0.5
    flip_prob: float = 0.5
    rotate: bool = False
    crop_area: tuple[float, float] = (0.35, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    eval_crop: str = "center"

    def __post_init__(self) -> None:
        for name in ("num_frames", "stride", "num_clips", "iframe_size", "mv_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_iframes < 0:
            raise ValueError(f"num_iframes must be >= 0, got {self.num_iframes}")
        if self.mode not in CLIP_MODES:
            raise ValueError(f"mode must be one of {CLIP_MODES}, got {self.mode!r}")
        if self.mode != "multi" and self.num_clips != 1:
            raise ValueError(f"num_clips={self.num_clips} needs mode='multi' (mode is {self.mode!r})")
        if self.short_video not in SHORT_VIDEO_MODES:
            raise ValueError(f"short_video must be one of {SHORT_VIDEO_MODES}, got {self.short_video!r}")
        if self.eval_crop not in EVAL_CROPS:
            raise ValueError(f"eval_crop must be one of {EVAL_CROPS}, got {self.eval_crop!r}")
        if not 0.0 < self.min_valid_ratio <= 1.0:
            raise ValueError(f"min_valid_ratio must be in (0, 1], got {self.min_valid_ratio}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        self.crop_area, self.crop_aspect = tuple(self.crop_area), tuple(self.crop_aspect)
        if not 0.0 < self.crop_area[0] <= self.crop_area[1] <= 1.0:
            raise ValueError(f"crop_area must be (lo, hi) with 0 < lo <= hi <= 1, got {self.crop_area}")
        if not 0.0 < self.crop_aspect[0] <= self.crop_aspect[1]:
            raise ValueError(f"crop_aspect must be (lo, hi) with 0 < lo <= hi, got {self.crop_aspect}")

    @property
    def span(self) -> int:
        """Display frames from a clip's first frame to its last, inclusive."""
        return (self.num_frames - 1) * self.stride + 1


@dataclass
class Clip:
    """One clip, ready for collation.

    mv: float32 (T, 2, h, w), (dx, dy) in px of the output I-frame per display frame (0 where
    invalid); valid: bool (T, h, w); iframes: uint8 (K, 3, H, W) RGB, channels first;
    iframe_index: int64 (K,) display index of each I-frame relative to the sample start;
    frame_index: int64 (T,) display index of each clip frame (-1: padding); start: display index
    of the first clip frame; clip_index: which clip of the sample (``multi``); crop_box: the
    normalized (y0, x0, y1, x1) box of the source frame that was resized; flipped: mirrored;
    quarter_turns: counterclockwise quarter turns on screen, after the flip.
    """

    mv: np.ndarray
    valid: np.ndarray
    iframes: np.ndarray
    iframe_index: np.ndarray
    frame_index: np.ndarray
    label: int
    key: str
    start: int
    clip_index: int = 0
    crop_box: Box = FULL_BOX
    flipped: bool = False
    quarter_turns: int = 0


def clip_starts(num_frames: int, config: ClipConfig, rng: np.random.Generator | None) -> list[int]:
    """First display frame of each clip of a sample of ``num_frames`` frames."""
    last = num_frames - config.span  # the latest start that fits; < 0: the video is short
    if last < 0:
        return [0] * config.num_clips
    if config.mode == "train":
        return [int(rng.integers(0, last + 1))]
    if config.mode == "center":
        return [last // 2]
    return [int(s) for s in np.rint(np.linspace(0, last, config.num_clips))]


def clip_frame_index(start: int, num_frames: int, config: ClipConfig) -> np.ndarray:
    """int64 (T,) display indices of a clip's frames; short videos wrap (loop) or get -1 (pad)."""
    index = start + config.stride * np.arange(config.num_frames, dtype=np.int64)  # (T,)
    if config.short_video == "loop":
        return index % num_frames
    return np.where(index < num_frames, index, -1)


def nearest_iframes(iframe_index: np.ndarray, centre: float, k: int) -> np.ndarray:
    """Positions (k,) of the k I-frames nearest to ``centre`` (ties: earlier), in display order."""
    if len(iframe_index) == 0:
        raise ValueError("the sample has no I-frame")
    by_distance = np.lexsort((iframe_index, np.abs(iframe_index - centre)))  # distance, then index
    chosen = np.resize(by_distance, k)  # fewer than k: repeat the nearest ones
    return chosen[np.argsort(iframe_index[chosen], kind="stable")]


def clip_centre(start: int, num_frames: int, config: ClipConfig) -> float:
    """Display index of a clip's centre (the whole sample's centre when it is shorter)."""
    if num_frames < config.span:
        return (num_frames - 1) / 2
    return start + (config.span - 1) / 2


def eval_crop_box(size: tuple[int, int], config: ClipConfig) -> Box:
    """The centred square (``center``) or the whole frame (``full``), normalized."""
    if config.eval_crop == "full":
        return FULL_BOX
    h, w = size
    side = min(h, w)
    y0, x0 = (h - side) / 2 / h, (w - side) / 2 / w
    return (y0, x0, y0 + side / h, x0 + side / w)


def random_crop_box(size: tuple[int, int], config: ClipConfig, rng: np.random.Generator) -> Box:
    """A random box of ``crop_area`` x the frame area and ``crop_aspect`` shape (torchvision's
    RandomResizedCrop: 10 tries, then the centred box of the nearest allowed aspect)."""
    h, w = size
    log_aspect = np.log(config.crop_aspect)
    for _ in range(10):
        area = h * w * rng.uniform(*config.crop_area)
        aspect = math.exp(rng.uniform(*log_aspect))
        bw, bh = math.sqrt(area * aspect), math.sqrt(area / aspect)  # px
        if bw <= w and bh <= h:
            y0, x0 = rng.uniform(0, h - bh), rng.uniform(0, w - bw)
            return (y0 / h, x0 / w, (y0 + bh) / h, (x0 + bw) / w)
    aspect = min(max(w / h, config.crop_aspect[0]), config.crop_aspect[1])
    bw, bh = (w, w / aspect) if w / h < aspect else (h * aspect, h)
    y0, x0 = (h - bh) / 2, (w - bw) / 2
    return (y0 / h, x0 / w, (y0 + bh) / h, (x0 + bw) / w)


@dataclass
class ClipPlan:
    """Everything random about a sample's clips, drawn before anything is decoded: for clip c,
    ``starts[c]``, ``frame_index[c]`` int64 (T,) (-1: padding), ``positions[c]`` (K,) in
    ``iframe_index``, ``boxes[c]`` normalized and ``pixel_boxes[c]`` in I-frame px (the same box,
    snapped to whole I-frame pixels; source pixels for a sample without I-frames), ``flips[c]``,
    ``turns[c]`` (quarter turns)."""

    starts: list[int]
    frame_index: np.ndarray
    positions: list[np.ndarray]
    boxes: list[Box]
    pixel_boxes: list[PixelBox]
    flips: list[bool]
    turns: list[int]


def plan_clips(source: ClipSource, config: ClipConfig, rng: np.random.Generator | None = None) -> ClipPlan:
    """Draw a sample's clips (``rng`` is needed in ``train`` mode: start, crop, flip)."""
    if config.mode == "train" and rng is None:
        raise ValueError("train clips need a random generator")
    if (config.num_iframes and len(source.iframe_index) == 0) or source.num_frames == 0:
        raise SampleError(f"sample {source.key!r} has no I-frame or no frame: no clip")
    n = source.num_frames
    starts = clip_starts(n, config, rng)
    # a sample without I-frames (motion-only clips) has no I-frame pixels: snap to source pixels
    snap_to = source.iframe_shape if len(source.iframe_index) else source.size
    boxes, pixel_boxes, flips, turns = [], [], [], []
    for _ in starts:
        if config.mode == "train":
            box, flipped = random_crop_box(source.size, config, rng), bool(rng.random() < config.flip_prob)
            turns.append(int(rng.integers(4)) if config.rotate else 0)  # no draw when off: same clips
        else:
            box, flipped = eval_crop_box(source.size, config), False
            turns.append(0)
        box, box_px = snap_box(box, snap_to)
        boxes.append(box)
        pixel_boxes.append(box_px)
        flips.append(flipped)
    return ClipPlan(starts=starts, frame_index=np.stack([clip_frame_index(s, n, config) for s in starts]),
                    positions=[nearest_iframes(source.iframe_index, clip_centre(s, n, config), config.num_iframes)
                               if config.num_iframes else np.zeros(0, np.int64) for s in starts],
                    boxes=boxes, pixel_boxes=pixel_boxes, flips=flips, turns=turns)


def clip_fields(source: ClipSource, plan: ClipPlan, config: ClipConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each clip's field, cropped, resampled and flipped: [(mv float32 (T, 2, m, m) output px
    per frame, valid bool (T, m, m))]; the source is asked once for the frames of all clips."""
    t = config.num_frames
    mv_all, valid_all = _clip_motion(source, plan.frame_index.reshape(-1))  # (C*T, 2, hs, ws), (C*T, hs, ws)
    fields = []
    for c, (box, flipped) in enumerate(zip(plan.boxes, plan.flips)):
        mv, valid = resample_mv(mv_all[c * t:(c + 1) * t], valid_all[c * t:(c + 1) * t], source.size,
                                source.grid, box, config, source.mv_step)
        fields.append(rotate_field(*(flip_field(mv, valid) if flipped else (mv, valid)), plan.turns[c]))
    return fields


def decode_iframes(source: ClipSource, plan: ClipPlan, ops: IFrameOps = PIL_IFRAMES) -> dict[int, np.ndarray]:
    """The I-frames a plan uses, each decoded once (by ``ops``): {position: uint8 (H', W', 3)}."""
    wanted = sorted({int(p) for pos in plan.positions for p in pos})
    return dict(zip(wanted, source.iframes(wanted, ops.decode)))


def crop_iframes(plan: ClipPlan, images: dict[int, np.ndarray], config: ClipConfig,
                 ops: IFrameOps = PIL_IFRAMES) -> list[np.ndarray]:
    """Each clip's I-frames, cropped, resized (by ``ops``) and flipped: [uint8 (K, 3, S, S)],
    S = iframe_size."""
    out = []
    for pos, box_px, flipped, turns in zip(plan.positions, plan.pixel_boxes, plan.flips, plan.turns):
        if not len(pos):  # num_iframes 0: motion only
            out.append(np.zeros((0, 3, config.iframe_size, config.iframe_size), np.uint8))
            continue
        iframes = ops.crop_resize([images[int(p)] for p in pos], box_px, config.iframe_size)
        iframes = iframes[..., ::-1] if flipped else iframes
        out.append(np.ascontiguousarray(np.rot90(iframes, turns, axes=(-2, -1))) if turns or flipped else iframes)
    return out


def assemble_clips(source: ClipSource, plan: ClipPlan, fields: list, iframes: list[np.ndarray]) -> list[Clip]:
    """The :class:`Clip` objects of a plan, its fields (``clip_fields``) and I-frames (``crop_iframes``)."""
    return [Clip(mv=mv, valid=valid, iframes=images, iframe_index=source.iframe_index[pos].astype(np.int64),
                 frame_index=plan.frame_index[c], label=source.label, key=source.key, start=start,
                 clip_index=c, crop_box=box, flipped=flipped, quarter_turns=turns)
            for c, (start, pos, box, flipped, turns, (mv, valid), images)
            in enumerate(zip(plan.starts, plan.positions, plan.boxes, plan.flips, plan.turns, fields, iframes))]


def make_clips(source: ClipSource, config: ClipConfig, rng: np.random.Generator | None = None,
               ops: IFrameOps = PIL_IFRAMES) -> list[Clip]:
    """The clip(s) of one sample: drawn (``plan_clips``), then fields and I-frames (through ``ops``):
    the one-sample case of :func:`sample_clips`. Crop boxes are snapped to whole I-frame pixels.
    Raises SampleError when the sample gives no clip."""
    (sample,) = _cut_clips([_SampleInFlight(source, rng)], config, ops)
    if sample.error is not None:
        raise sample.error
    return sample.clips()


def sample_clips(src: Iterable[ClipSource], config: ClipConfig, seed: int = 0, epoch: int = 0,
                 handler: Handler = reraise_exception, ops: IFrameOps = PIL_IFRAMES,
                 group_size: int = 16) -> Iterator[Clip]:
    """Clip sources -> clips (I-frames through ``ops``). Random draws (train) come from a
    generator seeded by (seed, epoch, key): the same clips whatever the worker that reads the
    sample. Sources are taken ``group_size`` at a time and each step is done for the whole group
    before the next (draws, fields, JPEG decoding, crops): the same clips in the same order as one
    by one, for about 22% less CPU (each step's code and tables stay in the caches). A sample
    failing a step (SampleError) goes to ``handler`` in its place among the group's samples (a
    handler that stops ends the clips there, as one by one)."""
    src = iter(src)
    while group := list(itertools.islice(src, group_size)):
        samples = [_SampleInFlight(source, np.random.default_rng(_draw_seed(seed, epoch, source))) for source in group]
        for sample in _cut_clips(samples, config, ops):
            if sample.error is None:
                yield from sample.clips()
            elif not handler(sample.error):
                return


def _draw_seed(seed: int, epoch: int, source: ClipSource) -> list[int]:
    """The seed of a sample's random draws: (seed, epoch, key), and the pass of a sample read again
    in the epoch (``ShardClipSource.repeat``, equal epochs: a new clip each time)."""
    repeat = getattr(source, "repeat", 0)
    return [seed, epoch, zlib.crc32(source.key.encode()), *([repeat] if repeat else [])]


@dataclass
class _SampleInFlight:
    """One sample on its way to clips: what the steps made of it so far, or the error that
    stopped it. Each step is a method ``step(config, ops)``."""

    source: ClipSource
    rng: np.random.Generator | None
    plan: ClipPlan | None = None
    fields: list[tuple[np.ndarray, np.ndarray]] | None = None  # per clip: mv (T, 2, m, m), valid (T, m, m)
    images: dict[int, np.ndarray] | None = None  # decoded I-frames by position, until cropped
    iframes: list[np.ndarray] | None = None  # per clip: uint8 (K, 3, S, S)
    error: SampleError | None = None

    def draw(self, config: ClipConfig, ops: IFrameOps) -> None:
        self.plan = plan_clips(self.source, config, self.rng)

    def cut_fields(self, config: ClipConfig, ops: IFrameOps) -> None:
        self.fields = clip_fields(self.source, self.plan, config)

    def decode(self, config: ClipConfig, ops: IFrameOps) -> None:
        self.images = decode_iframes(self.source, self.plan, ops)

    def crop(self, config: ClipConfig, ops: IFrameOps) -> None:
        self.iframes, self.images = crop_iframes(self.plan, self.images, config, ops), None

    def clips(self) -> list[Clip]:
        return assemble_clips(self.source, self.plan, self.fields, self.iframes)


_STEPS = (_SampleInFlight.draw, _SampleInFlight.cut_fields, _SampleInFlight.decode, _SampleInFlight.crop)


def _cut_clips(samples: list[_SampleInFlight], config: ClipConfig, ops: IFrameOps) -> list[_SampleInFlight]:
    """Each step for every sample before the next step; a SampleError stops its sample only."""
    for step in _STEPS:
        for sample in samples:
            if sample.error is None:
                try:
                    step(sample, config, ops)
                except SampleError as exc:
                    sample.error = exc
    return samples


def _clip_motion(source: ClipSource, frame_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The source field at ``frame_index`` (T,); padding frames (-1) are invalid zeros."""
    real = frame_index >= 0
    mv_real, valid_real = source.motion(frame_index[real])
    if real.all():
        return mv_real, valid_real
    mv = np.zeros((len(frame_index), *mv_real.shape[1:]), mv_real.dtype)  # (T, 2, hs, ws)
    valid = np.zeros((len(frame_index), *valid_real.shape[1:]), bool)  # (T, hs, ws)
    mv[real], valid[real] = mv_real, valid_real
    return mv, valid
