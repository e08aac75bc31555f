"""One shard sample: how a video (or a segment of one) is encoded into webdataset tar members.

This module is the code half of ``FORMAT.md``: member names, encodings and the format version
live here and nowhere else. It imports neither torch nor webdataset. It writes format version 2
and reads versions 1 and 2 (:data:`SUPPORTED_FORMAT_VERSIONS`).
"""

from __future__ import annotations

import io
import json
import threading
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import zstandard
from PIL import Image

from mvmae.extract.video import VideoFields

FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)

# Member extensions of a sample in the tar (``<key>.<ext>``).
MV = "mv.zst"  # int8 (T, 2, h, w), C order, zstd (v2: one frame per chunk); MV_INVALID: no vector
TYPES = "types.txt"  # ASCII I/P/B, one byte per frame
IFRAMES = "iframes.jpgs"  # the I-frames' JPEG files concatenated (byte lengths in the record)
LABEL = "cls"  # class index, decimal text (webdataset's convention)
RECORD = "json"  # everything else, see FORMAT.md
MEMBERS = (MV, TYPES, IFRAMES, LABEL, RECORD)
CHECKED_MEMBERS = (MV, TYPES, IFRAMES, LABEL)  # CRC32 of each is in the record
SMALL_MEMBERS = (TYPES, LABEL)  # v2 readers check these whole, and MV chunks / JPEGs one by one
# Not a member: set by the training reader on a sample it reads again within an epoch (equal
# epochs, ``shares.read_share``): the pass (1, 2, ...), so that the clip drawn from it is a new one.
REPEAT = "__repeat__"

MV_STEP = 0.25  # px per frame per quantization step
MV_MAX_CODE = 127  # |code| <= 127: values beyond +-31.75 px/frame are clipped (and counted)
MV_INVALID = -128
MV_CHUNK_FRAMES = 8  # v2: frames per independent zstd frame of the MV stream (FORMAT.md: why)
ZSTD_LEVEL = 9
JPEG_QUALITY = 90


class SampleError(ValueError):
    """A sample that cannot be decoded (missing member, corrupt data, unknown version)."""


class FormatVersionError(SampleError):
    """The shard was written in a format version this mvmae cannot read."""


@dataclass
class ShardSample:
    """A decoded sample. mv float32 (T, 2, h, w) px per frame (0 where invalid), valid bool
    (T, h, w), frame_types uint8 (T,), iframes uint8 (K, H, W, 3), iframe_index int64 (K,)
    display indices relative to the sample's first frame (negative: before it)."""

    key: str
    mv: np.ndarray
    valid: np.ndarray
    frame_types: np.ndarray
    iframes: np.ndarray
    iframe_index: np.ndarray
    label: int
    record: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.frame_types)


def quantize_mv(mv: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, int]:
    """float32 (T, 2, h, w) px/frame + valid (T, h, w) -> int8 codes and the number clipped."""
    codes = np.rint(mv / MV_STEP)
    clipped = int(np.count_nonzero((np.abs(codes) > MV_MAX_CODE) & valid[:, None]))
    codes = np.clip(codes, -MV_MAX_CODE, MV_MAX_CODE).astype(np.int8)
    codes[~np.broadcast_to(valid[:, None], codes.shape)] = MV_INVALID
    return codes, clipped


def dequantize_mv(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes (T, 2, h, w) -> mv float32 px/frame (0 where invalid), valid bool (T, h, w)."""
    valid = codes[:, 0] != MV_INVALID  # (T, h, w)
    mv = codes.astype(np.float32)  # (T, 2, h, w)
    mv *= np.where(valid, np.float32(MV_STEP), np.float32(0.0))[:, None]  # invalid cells -> 0
    return mv, valid


def gop_stats(frame_types: np.ndarray) -> dict:
    """Counts of I/P/B and GOP lengths (frames from an I-frame to the next) of a sample."""
    types = bytes(frame_types).decode("ascii")
    starts = [i for i, t in enumerate(types) if t == "I"]
    lengths = [b - a for a, b in zip(starts, starts[1:] + [len(types)])]
    return {"num_i": types.count("I"), "num_p": types.count("P"), "num_b": types.count("B"),
            "gop_lengths": lengths}


def encode_mv_chunks(codes: np.ndarray) -> list[bytes]:
    """int8 codes (T, 2, h, w) -> one independent zstd frame per MV_CHUNK_FRAMES frames."""
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return [compressor.compress(codes[i:i + MV_CHUNK_FRAMES].tobytes())
            for i in range(0, len(codes), MV_CHUNK_FRAMES)]


def encode_sample(key: str, fields: VideoFields, label: int, class_name: str, source: str,
                  extra: dict | None = None) -> dict[str, bytes | str]:
    """Encode one video/segment as webdataset members: {'__key__': key, ext: bytes, ...}."""
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
    codes, clipped = quantize_mv(fields.mv, fields.valid)
    chunks = encode_mv_chunks(codes)
    jpegs = [_jpeg(img) for img in fields.iframes]
    t, _, h, w = fields.mv.shape
    record = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "source": source,
        "label": int(label),
        "class_name": class_name,
        "num_frames": t,
        "fps": fields.fps,
        "size": list(fields.size),
        "grid": fields.grid,
        "cells": [h, w],
        "quantization": {"dtype": "int8", "step_px_per_frame": MV_STEP, "max_code": MV_MAX_CODE,
                         "invalid_code": MV_INVALID, "num_clipped": clipped},
        "mv_chunk_frames": MV_CHUNK_FRAMES,
        "mv_chunk_bytes": [len(c) for c in chunks],
        "mv_chunk_crc32": [zlib.crc32(c) for c in chunks],
        "iframe_index": [int(i) for i in fields.iframe_index],
        "iframe_bytes": [len(j) for j in jpegs],
        "iframe_crc32": [zlib.crc32(j) for j in jpegs],
        "iframe_size": list(fields.iframes.shape[1:3]) if len(jpegs) else [0, 0],
        "gop": gop_stats(fields.frame_types),
        "extraction": fields.meta,
        **(extra or {}),
    }
    members = {
        MV: b"".join(chunks),
        TYPES: bytes(fields.frame_types),
        IFRAMES: b"".join(jpegs),
        LABEL: str(int(label)).encode(),
    }
    record["crc32"] = {name: zlib.crc32(data) for name, data in members.items()}
    return {"__key__": key, **members, RECORD: json.dumps(record, sort_keys=True).encode()}


def update_record(sample: dict, key: str | None = None, **fields) -> dict:
    """A copy of an encoded sample with a new key and/or record fields (members unchanged)."""
    record = json.loads(sample[RECORD])
    record.update(fields)
    if key is not None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        record["key"] = key
    return {**sample, "__key__": record["key"], RECORD: json.dumps(record, sort_keys=True).encode()}


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


_ZSTD = threading.local()  # one decompression context per thread: creating one costs ~12 us


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_ZSTD, "dctx"):
        _ZSTD.dctx = zstandard.ZstdDecompressor()
    return _ZSTD.dctx


def parse_record(sample: dict) -> dict:
    """The JSON record of a raw sample, as an object (no check of its fields); SampleError,
    naming the member, when it is missing or not a JSON object."""
    key = sample.get("__key__")
    if RECORD not in sample:
        raise SampleError(f"sample {key!r}: no {RECORD} member")
    try:
        record = json.loads(sample[RECORD])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SampleError(f"sample {key!r}: unreadable record, member {RECORD} ({exc})") from exc
    if not isinstance(record, dict):
        raise SampleError(f"sample {key!r}: the record (member {RECORD}) is not a JSON object")
    return record


def decode_record(sample: dict) -> dict:
    """The JSON record of a raw sample, after checking the format version.

    Raises :class:`FormatVersionError` for an integer ``format_version`` this mvmae cannot read
    (the whole shard is refused) and :class:`SampleError` for anything else wrong (not an object,
    no integer version): records carry no CRC32, so damage must stay a skippable bad sample.
    """
    record, key = parse_record(sample), sample.get("__key__")
    version = record.get("format_version")
    if type(version) is not int:  # bool is an int subclass: true is no version
        raise SampleError(f"sample {key!r}: the record has no integer format_version (found {version!r})")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise FormatVersionError(
            f"sample {key!r} is in shard format version {version}; this mvmae "
            f"reads version(s) {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}"
        )
    return record


def decode_jpeg(data: bytes) -> np.ndarray:
    """A JPEG file -> uint8 (H, W, 3) RGB (PIL); OSError on corrupt data."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


class SampleCodec:
    """Random access to the members of one raw sample, checking what it reads.

    The record is checked up front against the members (its fields, their types, the member
    lengths, one I-frame index per JPEG) and gives ``size`` (H, W) px, ``grid`` px, ``cells``
    (h, w), ``num_frames``, ``iframe_index`` int64 (K,), ``iframe_shape`` (H', W') px and
    ``label`` (the ``cls`` member). ``mv_codes(lo, hi)`` decompresses the MV stream of frames
    [lo, hi): in version 2 only the chunks these frames fall in (each checked against its CRC32
    in the record), in version 1 (one zstd frame) from the start to frame ``hi``. ``jpeg(p)`` is
    the p-th I-frame's JPEG, checked against its own CRC32 in version 2, and ``iframe(p)`` that
    JPEG decoded and checked against ``iframe_shape``. ``check_crc``: version 1 compares the
    CRC32 of every member up front (its record has no finer ones); version 2 compares the small
    members up front and each MV chunk or JPEG when read (``check_all`` compares every member up
    front too, as ``decode_sample`` and ``mvmae shards verify`` do).
    """

    _SKIP_CHUNK = 1 << 16  # v1: bytes of scratch to decompress (and drop) frames before a range

    def __init__(self, raw: dict, check_crc: bool = True, check_all: bool = False) -> None:
        key = self.key = raw.get("__key__", "?")
        missing = [m for m in MEMBERS if m not in raw]
        if missing:
            raise SampleError(f"sample {key!r} lacks member(s) {', '.join(missing)}")
        record = self.record = decode_record(raw)  # FormatVersionError for other versions
        self.version, self.check_crc = record["format_version"], check_crc
        try:
            crc = dict(record["crc32"])
            self._read_record(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise SampleError(f"sample {key!r}: incomplete record ({type(exc).__name__}: {exc})") from exc
        self._check_geometry()
        if check_crc:
            checked = CHECKED_MEMBERS if check_all or self.version == 1 else SMALL_MEMBERS
            bad = [m for m in checked if zlib.crc32(raw[m]) != crc.get(m)]
            if bad:
                raise SampleError(f"sample {key!r}: checksum mismatch in {', '.join(bad)} (corrupt data)")
        self.frame_bytes = 2 * self.cells[0] * self.cells[1]
        self.mv_blob, self.jpeg_blob = raw[MV], raw[IFRAMES]
        self._check_layout(raw)
        try:
            self.label = int(raw[LABEL])
        except ValueError as exc:
            raise SampleError(f"sample {key!r}: unreadable {LABEL} member ({exc})") from exc

    def _read_record(self, record: dict) -> None:
        """The record's fields this codec and the readers use; KeyError, TypeError or ValueError
        when one is missing or of the wrong type."""
        (h, w), (height, width), (ih, iw) = record["cells"], record["size"], record["iframe_size"]
        self.num_frames, self.cells, self.grid = int(record["num_frames"]), (int(h), int(w)), int(record["grid"])
        self.size, self.iframe_shape = (int(height), int(width)), (int(ih), int(iw))
        self.iframe_index = np.asarray(record["iframe_index"], np.int64)  # (K,)
        self.iframe_ends = np.cumsum(record["iframe_bytes"], dtype=np.int64)  # (K,)
        if self.iframe_index.ndim != 1 or self.iframe_ends.ndim != 1:
            raise TypeError("iframe_index and iframe_bytes must be lists")
        if self.version >= 2:
            self.chunk_frames = int(record["mv_chunk_frames"])
            self.chunk_ends = np.cumsum(record["mv_chunk_bytes"], dtype=np.int64)  # (num chunks,)
            self.chunk_crc, self.iframe_crc = list(record["mv_chunk_crc32"]), list(record["iframe_crc32"])

    def _check_geometry(self) -> None:
        """Sizes positive; one I-frame index, and a size, for the JPEGs."""
        k = len(self.iframe_ends)
        if min(*self.size, self.grid, *self.cells) < 1:
            raise SampleError(f"sample {self.key!r}: the record's size {list(self.size)}, grid {self.grid} or "
                              f"cells {list(self.cells)} are not positive")
        if len(self.iframe_index) != k:
            raise SampleError(f"sample {self.key!r}: {len(self.iframe_index)} I-frame indices for {k} JPEGs")
        if k and min(self.iframe_shape) < 1:
            raise SampleError(f"sample {self.key!r}: iframe_size {list(self.iframe_shape)} for {k} JPEGs")

    def _check_layout(self, raw: dict) -> None:
        """Member lengths against the record (cheap: no decoding)."""
        ends, n = self.iframe_ends, self.num_frames
        wrong = len(raw[TYPES]) != n or (len(ends) and ends[-1] != len(self.jpeg_blob))
        if self.version >= 2:
            num_chunks = -(-n // self.chunk_frames) if self.chunk_frames > 0 else -1
            wrong = (wrong or len(self.chunk_ends) != num_chunks or len(self.chunk_crc) != num_chunks
                     or len(self.iframe_crc) != len(ends)
                     or (self.chunk_ends[-1] if num_chunks > 0 else 0) != len(self.mv_blob))
        if wrong:
            raise SampleError(f"sample {self.key!r}: members {MV}, {TYPES} or {IFRAMES} disagree "
                              f"with the record (lengths)")

    def mv_codes(self, lo: int, hi: int) -> np.ndarray:
        """int8 codes (hi - lo, 2, h, w) of frames [lo, hi), 0 <= lo < hi <= num_frames."""
        if self.version == 1:
            return self._v1_codes(lo, hi)
        f = self.chunk_frames
        parts = []
        for c in range(lo // f, (hi - 1) // f + 1):
            codes = self._chunk(c)  # (frames of chunk c, 2, h, w)
            parts.append(codes[max(lo - c * f, 0):hi - c * f])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)  # (hi - lo, 2, h, w)

    def _chunk(self, c: int) -> np.ndarray:
        """int8 codes (frames, 2, h, w) of MV chunk ``c``, its CRC32 checked first."""
        begin, end = (int(self.chunk_ends[c - 1]) if c else 0), int(self.chunk_ends[c])
        data = memoryview(self.mv_blob)[begin:end]
        if self.check_crc and zlib.crc32(data) != self.chunk_crc[c]:
            raise SampleError(f"sample {self.key!r}: checksum mismatch in {MV} chunk {c} (corrupt data)")
        frames = min(self.chunk_frames, self.num_frames - c * self.chunk_frames)
        try:
            raw = _decompressor().decompress(data, max_output_size=frames * self.frame_bytes)
        except zstandard.ZstdError as exc:
            raise SampleError(f"sample {self.key!r}: corrupt {MV} chunk {c} ({exc})") from exc
        if len(raw) != frames * self.frame_bytes:
            raise SampleError(f"sample {self.key!r}: {MV} chunk {c} holds {len(raw)} bytes, "
                              f"expected {frames * self.frame_bytes}")
        return np.frombuffer(raw, np.int8).reshape(frames, 2, *self.cells)  # (frames, 2, h, w)

    def _v1_codes(self, lo: int, hi: int) -> np.ndarray:
        """Version 1: one zstd frame, decompressed no further than frame ``hi`` (the frames before
        ``lo`` into a small scratch buffer)."""
        out = bytearray((hi - lo) * self.frame_bytes)
        try:
            reader = _decompressor().stream_reader(self.mv_blob)
            skip, scratch = lo * self.frame_bytes, bytearray(min(lo * self.frame_bytes, self._SKIP_CHUNK))
            while skip:
                got = reader.readinto(memoryview(scratch)[:min(skip, len(scratch))])
                if not got:
                    break
                skip -= got
            pos = 0
            while pos < len(out) and (got := reader.readinto(memoryview(out)[pos:])):
                pos += got
        except zstandard.ZstdError as exc:
            raise SampleError(f"sample {self.key!r}: corrupt {MV} ({exc})") from exc
        if skip or pos < len(out):
            raise SampleError(f"sample {self.key!r}: {MV} ends before frame {hi} of {self.num_frames}")
        return np.frombuffer(out, np.int8).reshape(hi - lo, 2, *self.cells)  # (hi - lo, 2, h, w)

    def jpeg(self, p: int) -> bytes:
        """The JPEG file of I-frame ``p`` (position in ``iframe_index``)."""
        begin, end = (int(self.iframe_ends[p - 1]) if p else 0), int(self.iframe_ends[p])
        data = self.jpeg_blob[begin:end]
        if self.version >= 2 and self.check_crc and zlib.crc32(data) != self.iframe_crc[p]:
            raise SampleError(f"sample {self.key!r}: checksum mismatch in {IFRAMES} I-frame {p} (corrupt data)")
        return data

    def iframe(self, p: int, decode: Callable[[bytes], np.ndarray] = decode_jpeg) -> np.ndarray:
        """I-frame ``p`` decoded by ``decode`` (a JPEG file -> uint8 (H', W', 3) RGB; OSError or
        ValueError when corrupt), of the record's ``iframe_size``; SampleError otherwise."""
        data = self.jpeg(p)
        try:
            image = decode(data)
        except (OSError, ValueError) as exc:
            raise SampleError(f"sample {self.key!r}: corrupt I-frame JPEG ({exc})") from exc
        if image.shape[:2] != self.iframe_shape:
            raise SampleError(f"sample {self.key!r}: I-frame {p} is {image.shape[:2]} px, the record "
                              f"says {self.iframe_shape}")
        return image


def decode_sample(sample: dict, with_iframes: bool = True, check: bool = True) -> ShardSample:
    """Decode raw members (bytes, as read from the tar) into a :class:`ShardSample`.

    ``check`` compares the CRC32 of each member with the record's, and in version 2 also each
    MV chunk's and JPEG's (about 1 GB/s: cheap next to zstd). Whatever ``check``, the record
    must describe the members (``SampleCodec``) and every decoded I-frame be of its size.
    """
    codec = SampleCodec(sample, check_crc=check, check_all=True)
    n = codec.num_frames
    codes = codec.mv_codes(0, n) if n else np.zeros((0, 2, *codec.cells), np.int8)
    mv, valid = dequantize_mv(codes)
    iframes = _decode_iframes(codec) if with_iframes else None
    return ShardSample(key=codec.key, mv=mv, valid=valid, frame_types=np.frombuffer(sample[TYPES], np.uint8).copy(),
                       iframes=iframes, iframe_index=codec.iframe_index, label=codec.label, record=codec.record)


def _decode_iframes(codec: SampleCodec) -> np.ndarray:
    images = [codec.iframe(p) for p in range(len(codec.iframe_ends))]
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(images)
