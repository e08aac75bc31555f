"""Clip sources: what clip sampling (``clips.py``) reads from one sample, and how I-frames are
decoded and cropped.

:class:`ShardClipSource` checks a raw shard sample and decodes it lazily (only the MV frames and
I-frames a clip uses, through ``sample.SampleCodec``); :class:`ArraySource` wraps arrays already
in memory. :class:`IFrameOps` decodes and crops I-frames: :class:`PilIFrames` here, and the
reader's faster torch version (``torch_iframes.TorchIFrames``). No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from mvmae.shards import sample as fmt
from mvmae.shards.sample import SampleError

PixelBox = tuple[int, int, int, int]  # (y0, x0, y1, x1), whole pixels of an I-frame, end exclusive
JpegDecoder = Callable[[bytes], np.ndarray]  # a JPEG file -> uint8 (H, W, 3) RGB


class ClipSource(Protocol):
    """What clip sampling reads from one sample; loaders decode only the frames asked for."""

    key: str
    label: int
    num_frames: int  # N display frames in the sample
    size: tuple[int, int]  # (H, W) px of the source frames
    grid: int  # MV cell size, source px
    iframe_index: np.ndarray  # int64 (K0,) display indices relative to the sample start
    iframe_shape: tuple[int, int]  # (H', W') px of its I-frames
    mv_step: float  # px per frame per unit of motion()'s mv: 1.0 for float fields

    def motion(self, frame_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frame_index int (T,) in [0, N) -> mv (T, 2, h, w) in units of mv_step px/frame (float32,
        or int8 quantization codes), valid bool (T, h, w); mv where not valid is ignored."""

    def iframes(self, positions: Sequence[int], decode: JpegDecoder) -> list[np.ndarray]:
        """Positions in ``iframe_index`` -> k uint8 (H', W', 3) RGB images, all of one size
        (``decode`` turns a stored JPEG into one; sources holding arrays ignore it)."""


class IFrameOps(Protocol):
    """How a clip's I-frames are decoded and cropped: :class:`PilIFrames` here, the reader's
    torch version (``torch_iframes.TorchIFrames``, about 2x faster) for training and evaluation."""

    def decode(self, jpeg: bytes) -> np.ndarray:
        """A JPEG file -> uint8 (H, W, 3) RGB; OSError or ValueError when it is corrupt."""

    def crop_resize(self, images: Sequence[np.ndarray], box: PixelBox, size: int) -> np.ndarray:
        """k uint8 (H, W, 3) images -> the box of each resized (antialiased bilinear) to uint8
        (k, 3, size, size) (any strides)."""


class PilIFrames:
    """:class:`IFrameOps` with PIL: ``Image.resize`` (bilinear, box)."""

    def decode(self, jpeg: bytes) -> np.ndarray:
        return fmt.decode_jpeg(jpeg)

    def crop_resize(self, images: Sequence[np.ndarray], box: PixelBox, size: int) -> np.ndarray:
        y0, x0, y1, x1 = box
        out = np.empty((len(images), size, size, 3), np.uint8)  # (k, size, size, 3)
        for i, image in enumerate(images):
            out[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=(x0, y0, x1, y1)))
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))  # (k, 3, size, size)


PIL_IFRAMES = PilIFrames()


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
    mv_step: float = 1.0

    @property
    def num_frames(self) -> int:
        return len(self.mv)

    @property
    def iframe_shape(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])

    def motion(self, frame_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.mv[frame_index], self.valid[frame_index]

    def iframes(self, positions: Sequence[int], decode: JpegDecoder | None = None) -> list[np.ndarray]:
        return [self.images[p] for p in positions]


class ShardClipSource:
    """A raw sample checked (members, format version, the record against the members, CRC32)
    and decoded lazily, a
    :class:`ClipSource`: only the MV frames a clip uses are decompressed (version 2: the chunks
    holding them; version 1: the stream up to the last of them) and dequantized, only the chosen
    I-frames' JPEGs decoded, and with ``check_crc`` each checked before use (``sample.SampleCodec``;
    version 1 shards: every member up front). Its SampleErrors, found up front or later (lazy
    checks), carry a note naming the shard (``__url__``). The tests compare it with
    ``decode_sample``."""

    def __init__(self, raw: dict, check_crc: bool = True) -> None:
        self.url = raw.get("__url__", "?")
        try:
            codec = self._codec = fmt.SampleCodec(raw, check_crc)  # the record checked against the members
        except SampleError as exc:
            exc.add_note(f"shard {self.url}")
            raise
        self.key, self.record, self.num_frames, self.label = codec.key, codec.record, codec.num_frames, codec.label
        self.repeat = int(raw.get(fmt.REPEAT, 0))  # a sample read again in an epoch: its pass (clips.sample_clips)
        self.size, self.grid, self.iframe_index, self.iframe_shape = (codec.size, codec.grid, codec.iframe_index,
                                                                      codec.iframe_shape)

    mv_step = fmt.MV_STEP  # motion() gives the int8 codes: resampling dequantizes what it uses

    def motion(self, frame_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(frame_index.min()), int(frame_index.max()) + 1
        try:
            codes = self._codec.mv_codes(lo, hi)  # (hi - lo, 2, h, w)
        except SampleError as exc:
            exc.add_note(f"shard {self.url}")
            raise
        if len(frame_index) != hi - lo or frame_index[0] != lo or (np.diff(frame_index) != 1).any():
            codes = codes[frame_index - lo]  # looped or strided clips: (T, 2, h, w)
        return codes, codes[:, 0] != fmt.MV_INVALID  # int8 (T, 2, h, w), bool (T, h, w)

    def iframes(self, positions: Sequence[int], decode: JpegDecoder = fmt.decode_jpeg) -> list[np.ndarray]:
        try:
            return [self._codec.iframe(p, decode) for p in positions]  # CRC32 and size checked
        except SampleError as exc:
            exc.add_note(f"shard {self.url}")
            raise
