"""Clip sampling and augmentation: one shard sample -> fixed-size clips of MV fields + I-frames.

No torch here (the reader's collation turns :class:`Clip` lists into tensors). Sources:
:class:`ShardClipSource` decodes a raw shard sample lazily, :class:`ArraySource` wraps arrays.
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

import io
import math
import zlib
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import zstandard
from PIL import Image

from mvmae.shards import sample as fmt
from mvmae.shards.sample import SampleError

CLIP_MODES = ("train", "center", "multi")
SHORT_VIDEO_MODES = ("loop", "pad")
EVAL_CROPS = ("center", "full")

Box = tuple[float, float, float, float]  # (y0, x0, y1, x1), normalized to the source frame
FULL_BOX: Box = (0.0, 0.0, 1.0, 1.0)


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
    earlier one), in display order; a sample with fewer repeats its nearest ones.
    iframe_size: output I-frames are H = W = iframe_size px. mv_size: output fields are h = w =
    mv_size cells; the defaults (224 px, 14 cells) put one cell on each 16x16-px patch of a
    ViT-B/16 input. min_valid_ratio: an output cell is valid when at least this fraction of its
    area is covered by source cells with vectors.
    Train augmentation: flip_prob (horizontal flip of I-frames and field, dx negated),
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
    crop_area: tuple[float, float] = (0.35, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    eval_crop: str = "center"

    def __post_init__(self) -> None:
        for name in ("num_frames", "stride", "num_clips", "num_iframes", "iframe_size", "mv_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
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


class ClipSource(Protocol):
    """What clip sampling reads from one sample; loaders decode only the frames asked for."""

    key: str
    label: int
    num_frames: int  # N display frames in the sample
    size: tuple[int, int]  # (H, W) px of the source frames
    grid: int  # MV cell size, source px
    iframe_index: np.ndarray  # int64 (K0,) display indices relative to the sample start

    def motion(self, frame_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frame_index int (T,) in [0, N) -> mv float32 (T, 2, h, w) px/frame, valid bool (T, h, w)."""

    def iframes(self, positions: Sequence[int]) -> list[Image.Image]:
        """Positions in ``iframe_index`` -> k RGB images of H' x W' px (PIL: resized without copies)."""


@dataclass
class ArraySource:
    """A :class:`ClipSource` over arrays already in memory (e.g. a ``ShardSample``'s)."""

    key: str
    label: int
    mv: np.ndarray  # float32 (N, 2, h, w) px per frame
    valid: np.ndarray  # bool (N, h, w)
    images: np.ndarray  # uint8 (K0, H', W', 3)
    iframe_index: np.ndarray  # int64 (K0,)
    size: tuple[int, int]
    grid: int

    @classmethod
    def from_shard_sample(cls, s) -> "ArraySource":
        return cls(s.key, s.label, s.mv, s.valid, s.iframes, s.iframe_index,
                   tuple(s.record["size"]), int(s.record["grid"]))

    @property
    def num_frames(self) -> int:
        return len(self.mv)

    def motion(self, frame_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.mv[frame_index], self.valid[frame_index]

    def iframes(self, positions: Sequence[int]) -> list[Image.Image]:
        return [Image.fromarray(self.images[p]) for p in positions]


class ShardClipSource:
    """A raw sample checked (members, format version, CRC32) and decoded lazily, a
    :class:`ClipSource`: the MV stream is decompressed only up to the last frame a clip uses (the
    frames before its first into a small scratch buffer) and dequantized only for the clip's
    frames; only the chosen I-frames' JPEGs are decoded. Uses ``sample.py``'s constants and
    functions and mirrors ``decode_sample``'s checks (the tests compare the two)."""

    _SKIP_CHUNK = 1 << 16  # bytes of scratch to decompress (and drop) frames before a clip

    def __init__(self, raw: dict, check_crc: bool = True) -> None:
        key = self.key = raw.get("__key__", "?")
        missing = [m for m in fmt.MEMBERS if m not in raw]
        if missing:
            raise SampleError(f"sample {key!r} lacks member(s) {', '.join(missing)}")
        record = self.record = fmt.decode_record(raw)  # FormatVersionError for other versions
        try:
            if check_crc:
                bad = [m for m in fmt.CHECKED_MEMBERS if zlib.crc32(raw[m]) != record["crc32"].get(m)]
                if bad:
                    raise SampleError(f"sample {key!r}: checksum mismatch in {', '.join(bad)} (corrupt data)")
            n, (h, w) = record["num_frames"], record["cells"]
            self.size, self.grid = tuple(record["size"]), int(record["grid"])
            self.iframe_index = np.asarray(record["iframe_index"], np.int64)
            self.label = int(raw[fmt.LABEL])
            ends = np.cumsum(record["iframe_bytes"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise SampleError(f"sample {key!r}: incomplete record ({type(exc).__name__}: {exc})") from exc
        if len(raw[fmt.TYPES]) != n or (len(ends) and ends[-1] != len(raw[fmt.IFRAMES])):
            raise SampleError(f"sample {key!r}: {fmt.TYPES} or {fmt.IFRAMES} disagree with the record")
        self.num_frames, self._cells = n, (h, w)
        self._mv_zst, self._jpegs, self._ends = raw[fmt.MV], raw[fmt.IFRAMES], ends

    def motion(self, frame_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(frame_index.min()), int(frame_index.max()) + 1
        codes = self._codes(lo, hi)  # (hi - lo, 2, h, w)
        return fmt.dequantize_mv(codes[frame_index - lo])  # (T, 2, h, w) px/frame, (T, h, w)

    def _codes(self, lo: int, hi: int) -> np.ndarray:
        """int8 codes (hi - lo, 2, h, w) of frames [lo, hi), decompressing no further than hi."""
        frame_bytes = 2 * self._cells[0] * self._cells[1]
        out = bytearray((hi - lo) * frame_bytes)
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(self._mv_zst)
            skip, scratch = lo * frame_bytes, bytearray(min(lo * frame_bytes, self._SKIP_CHUNK))
            while skip:
                got = reader.readinto(memoryview(scratch)[:min(skip, len(scratch))])
                if not got:
                    break
                skip -= got
            pos = 0
            while pos < len(out) and (got := reader.readinto(memoryview(out)[pos:])):
                pos += got
        except zstandard.ZstdError as exc:
            raise SampleError(f"sample {self.key!r}: corrupt {fmt.MV} ({exc})") from exc
        if skip or pos < len(out):
            raise SampleError(f"sample {self.key!r}: {fmt.MV} ends before frame {hi} of {self.num_frames}")
        return np.frombuffer(out, np.int8).reshape(hi - lo, 2, *self._cells)  # (hi - lo, 2, h, w)

    def iframes(self, positions: Sequence[int]) -> list[Image.Image]:
        images = []
        for p in positions:
            begin = int(self._ends[p - 1]) if p else 0
            try:
                img = Image.open(io.BytesIO(self._jpegs[begin:int(self._ends[p])]))
                img.load()
            except OSError as exc:
                raise SampleError(f"sample {self.key!r}: corrupt I-frame JPEG ({exc})") from exc
            images.append(img if img.mode == "RGB" else img.convert("RGB"))
        return images


@dataclass
class Clip:
    """One clip, ready for collation.

    mv: float32 (T, 2, h, w), (dx, dy) in px of the output I-frame per display frame (0 where
    invalid); valid: bool (T, h, w); iframes: uint8 (K, 3, H, W) RGB, channels first;
    iframe_index: int64 (K,) display index of each I-frame relative to the sample start;
    frame_index: int64 (T,) display index of each clip frame (-1: padding); start: display index
    of the first clip frame; clip_index: which clip of the sample (``multi``); crop_box: the
    normalized (y0, x0, y1, x1) box of the source frame that was resized; flipped: mirrored.
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


def area_weights(src_edges: np.ndarray, lo: float, hi: float, n_out: int) -> np.ndarray:
    """float32 (n_out, n_src): overlap of output cell i of [lo, hi] (split in n_out) with source
    cell j (between ``src_edges[j]`` and ``src_edges[j+1]``), as a fraction of the output cell."""
    out_edges = lo + (hi - lo) * np.arange(n_out + 1) / n_out
    overlap = (np.minimum(out_edges[1:, None], src_edges[None, 1:])
               - np.maximum(out_edges[:-1, None], src_edges[None, :-1]))  # (n_out, n_src)
    return (np.clip(overlap, 0.0, None) / ((hi - lo) / n_out)).astype(np.float32)


def resample_mv(mv: np.ndarray, valid: np.ndarray, size: tuple[int, int], grid: int, box: Box,
                config: ClipConfig) -> tuple[np.ndarray, np.ndarray]:
    """Crop a field to ``box`` and resample it to mv_size cells; vectors become px per frame of
    the output I-frame. mv float32 (T, 2, hs, ws) source px/frame, valid bool (T, hs, ws) ->
    mv float32 (T, 2, m, m), valid bool (T, m, m), m = mv_size."""
    (h, w), m = size, config.mv_size
    hs, ws = valid.shape[1:]
    y0, x0, y1, x1 = box
    wy = area_weights(np.minimum(np.arange(hs + 1) * grid, h) / h, y0, y1, m)  # (m, hs)
    wx = area_weights(np.minimum(np.arange(ws + 1) * grid, w) / w, x0, x1, m)  # (m, ws)
    weight = valid.astype(np.float32)  # (T, hs, ws)
    cover = wy @ weight @ wx.T  # (T, m, m): fraction of each output cell holding vectors
    total = wy @ (mv * weight[:, None]) @ wx.T  # (T, 2, m, m)
    out_valid = cover >= config.min_valid_ratio - 1e-6
    scale = np.array([config.iframe_size / ((x1 - x0) * w), config.iframe_size / ((y1 - y0) * h)],
                     np.float32)  # (2,): source px -> output I-frame px, per axis
    out = total / np.maximum(cover, 1e-12)[:, None] * scale[None, :, None, None]
    out[~np.broadcast_to(out_valid[:, None], out.shape)] = 0.0
    return out.astype(np.float32), out_valid


def resize_iframes(images: Sequence[Image.Image], box: Box, size: int) -> np.ndarray:
    """k RGB images -> the box of each, resized (bilinear) to uint8 (k, 3, size, size)."""
    y0, x0, y1, x1 = box
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        w, h = img.size
        out[i] = np.asarray(img.resize((size, size), Image.BILINEAR, box=(x0 * w, y0 * h, x1 * w, y1 * h)))
    return out.transpose(0, 3, 1, 2)  # (k, 3, size, size)


def flip_clip(mv: np.ndarray, valid: np.ndarray, iframes: np.ndarray):
    """Mirror left-right: the field and I-frames along their last axis, dx negated."""
    mv = mv[..., ::-1].copy()  # (T, 2, h, w)
    mv[:, 0] *= -1.0
    return mv, valid[..., ::-1].copy(), iframes[..., ::-1].copy()


def make_clips(source: ClipSource, config: ClipConfig,
               rng: np.random.Generator | None = None) -> list[Clip]:
    """The clip(s) of one sample (``rng`` is needed in ``train`` mode: start, crop, flip). The
    source is asked once for the frames of all clips and once for each I-frame they use."""
    if config.mode == "train" and rng is None:
        raise ValueError("train clips need a random generator")
    if len(source.iframe_index) == 0 or source.num_frames == 0:
        raise SampleError(f"sample {source.key!r} has no I-frame or no frame: no clip")
    n, t = source.num_frames, config.num_frames
    starts = clip_starts(n, config, rng)
    frame_index = np.stack([clip_frame_index(s, n, config) for s in starts])  # (C, T)
    mv_all, valid_all = _clip_motion(source, frame_index.reshape(-1))  # (C*T, 2, hs, ws), (C*T, hs, ws)
    positions = [nearest_iframes(source.iframe_index, clip_centre(s, n, config), config.num_iframes)
                 for s in starts]
    wanted = sorted({int(p) for pos in positions for p in pos})
    images = dict(zip(wanted, source.iframes(wanted)))
    clips = []
    for c, start in enumerate(starts):
        if config.mode == "train":
            box, flipped = random_crop_box(source.size, config, rng), rng.random() < config.flip_prob
        else:
            box, flipped = eval_crop_box(source.size, config), False
        mv, valid = resample_mv(mv_all[c * t:(c + 1) * t], valid_all[c * t:(c + 1) * t], source.size,
                                source.grid, box, config)
        iframes = resize_iframes([images[int(p)] for p in positions[c]], box, config.iframe_size)
        if flipped:
            mv, valid, iframes = flip_clip(mv, valid, iframes)
        clips.append(Clip(mv=mv, valid=valid, iframes=np.ascontiguousarray(iframes),
                          iframe_index=source.iframe_index[positions[c]].astype(np.int64),
                          frame_index=frame_index[c], label=source.label, key=source.key,
                          start=start, clip_index=c, crop_box=box, flipped=flipped))
    return clips


def _clip_motion(source: ClipSource, frame_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The source field at ``frame_index`` (T,); padding frames (-1) are invalid zeros."""
    real = frame_index >= 0
    mv_real, valid_real = source.motion(frame_index[real])
    if real.all():
        return mv_real, valid_real
    mv = np.zeros((len(frame_index), *mv_real.shape[1:]), np.float32)  # (T, 2, hs, ws)
    valid = np.zeros((len(frame_index), *valid_real.shape[1:]), bool)  # (T, hs, ws)
    mv[real], valid[real] = mv_real, valid_real
    return mv, valid
