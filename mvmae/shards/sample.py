"""One shard sample: how a video (or a segment of one) is encoded into webdataset tar members.

This module is the code half of ``FORMAT.md``: member names, encodings and the format version
live here and nowhere else. It imports neither torch nor webdataset.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass, field

import numpy as np
import zstandard
from PIL import Image

from mvmae.extract.video import VideoFields

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)

# Member extensions of a sample in the tar (``<key>.<ext>``).
MV = "mv.zst"  # int8 (T, 2, h, w), C order, zstd; MV_INVALID marks cells without a vector
TYPES = "types.txt"  # ASCII I/P/B, one byte per frame
IFRAMES = "iframes.jpgs"  # the I-frames' JPEG files concatenated (byte lengths in the record)
LABEL = "cls"  # class index, decimal text (webdataset's convention)
RECORD = "json"  # everything else, see FORMAT.md
MEMBERS = (MV, TYPES, IFRAMES, LABEL, RECORD)
CHECKED_MEMBERS = (MV, TYPES, IFRAMES, LABEL)  # CRC32 of each is in the record

MV_STEP = 0.25  # px per frame per quantization step
MV_MAX_CODE = 127  # |code| <= 127: values beyond +-31.75 px/frame are clipped (and counted)
MV_INVALID = -128
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
    valid = codes[:, 0] != MV_INVALID
    mv = codes.astype(np.float32) * MV_STEP
    mv[~np.broadcast_to(valid[:, None], mv.shape)] = 0.0
    return mv, valid


def gop_stats(frame_types: np.ndarray) -> dict:
    """Counts of I/P/B and GOP lengths (frames from an I-frame to the next) of a sample."""
    types = bytes(frame_types).decode("ascii")
    starts = [i for i, t in enumerate(types) if t == "I"]
    lengths = [b - a for a, b in zip(starts, starts[1:] + [len(types)])]
    return {"num_i": types.count("I"), "num_p": types.count("P"), "num_b": types.count("B"),
            "gop_lengths": lengths}


def encode_sample(key: str, fields: VideoFields, label: int, class_name: str, source: str,
                  extra: dict | None = None) -> dict[str, bytes | str]:
    """Encode one video/segment as webdataset members: {'__key__': key, ext: bytes, ...}."""
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
    codes, clipped = quantize_mv(fields.mv, fields.valid)
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
        "iframe_index": [int(i) for i in fields.iframe_index],
        "iframe_bytes": [len(j) for j in jpegs],
        "iframe_size": list(fields.iframes.shape[1:3]) if len(jpegs) else [0, 0],
        "gop": gop_stats(fields.frame_types),
        "extraction": fields.meta,
        **(extra or {}),
    }
    members = {
        MV: zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(codes.tobytes()),
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


def decode_record(sample: dict) -> dict:
    """The JSON record of a raw sample, after checking the format version."""
    if RECORD not in sample:
        raise SampleError(f"sample {sample.get('__key__')!r} has no {RECORD} member")
    try:
        record = json.loads(sample[RECORD])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SampleError(f"sample {sample.get('__key__')!r}: unreadable record ({exc})") from exc
    version = record.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise FormatVersionError(
            f"sample {sample.get('__key__')!r} is in shard format version {version}; this mvmae "
            f"reads version(s) {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}"
        )
    return record


def decode_sample(sample: dict, with_iframes: bool = True, check: bool = True) -> ShardSample:
    """Decode raw members (bytes, as read from the tar) into a :class:`ShardSample`.

    ``check`` compares each member's CRC32 with the record's (about 1 GB/s: cheap next to zstd).
    """
    key = sample.get("__key__", "?")
    missing = [m for m in MEMBERS if m not in sample]
    if missing:
        raise SampleError(f"sample {key!r} lacks member(s) {', '.join(missing)}")
    record = decode_record(sample)
    if check:
        bad = [m for m in CHECKED_MEMBERS if zlib.crc32(sample[m]) != record["crc32"].get(m)]
        if bad:
            raise SampleError(f"sample {key!r}: checksum mismatch in {', '.join(bad)} (corrupt data)")
    t, (h, w) = record["num_frames"], record["cells"]
    try:
        raw = zstandard.ZstdDecompressor().decompress(sample[MV], max_output_size=t * 2 * h * w)
        codes = np.frombuffer(raw, np.int8).reshape(t, 2, h, w)
    except (zstandard.ZstdError, ValueError) as exc:
        raise SampleError(f"sample {key!r}: corrupt {MV} ({exc})") from exc
    types = np.frombuffer(sample[TYPES], np.uint8)
    if len(types) != t:
        raise SampleError(f"sample {key!r}: {TYPES} has {len(types)} frames, record says {t}")
    mv, valid = dequantize_mv(codes)
    iframes = _decode_iframes(key, sample[IFRAMES], record) if with_iframes else None
    return ShardSample(key=key, mv=mv, valid=valid, frame_types=types.copy(), iframes=iframes,
                       iframe_index=np.asarray(record["iframe_index"], np.int64),
                       label=int(sample[LABEL]), record=record)


def _decode_iframes(key: str, blob: bytes, record: dict) -> np.ndarray:
    sizes = record["iframe_bytes"]
    if sum(sizes) != len(blob):
        raise SampleError(f"sample {key!r}: {IFRAMES} has {len(blob)} bytes, record says {sum(sizes)}")
    images, pos = [], 0
    try:
        for n in sizes:
            images.append(np.asarray(Image.open(io.BytesIO(blob[pos:pos + n])).convert("RGB")))
            pos += n
    except OSError as exc:
        raise SampleError(f"sample {key!r}: corrupt I-frame JPEG ({exc})") from exc
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(images)
