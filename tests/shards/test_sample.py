"""``mvmae.shards.sample``: format version 2 (chunked MV stream, per-piece CRC32) on real shards,
random access to frame ranges, checks that cost what is read, and version 1 shards still read."""

from __future__ import annotations

import json
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import zstandard

from mvmae.shards.clips import ClipConfig, ShardClipSource
from mvmae.shards.inspect import Problem, inspect_shards, verify_shards
from mvmae.shards.reader import SkipCounter, build_eval_pipeline, build_train_pipeline, iter_samples, read_shards
from mvmae.shards.sample import (FORMAT_VERSION, IFRAMES, MV, MV_CHUNK_FRAMES, RECORD, FormatVersionError,
                                 SampleCodec, SampleError, decode_record, decode_sample, update_record)
from mvmae.shards.writer import ShardFile

V2_FIELDS = ("mv_chunk_frames", "mv_chunk_bytes", "mv_chunk_crc32", "iframe_crc32")


def raw_samples(tar: Path) -> list[dict]:
    """A shard's samples as written, read with the reader's tar stage."""
    return list(read_shards([{"url": str(tar)}]))


def as_format_v1(raw: dict) -> dict:
    """A version 2 sample rewritten as version 1 wrote it: the MV stream one zstd frame (level 9),
    no per-chunk or per-JPEG fields in the record."""
    codec = SampleCodec(raw)
    mv = zstandard.ZstdCompressor(level=9).compress(codec.mv_codes(0, codec.num_frames).tobytes())
    record = {k: v for k, v in json.loads(raw[RECORD]).items() if k not in V2_FIELDS}
    record["format_version"] = 1
    record["crc32"][MV] = zlib.crc32(mv)
    members = {k: v for k, v in raw.items() if not k.startswith("__")}
    return {"__key__": raw["__key__"], **members, MV: mv, RECORD: json.dumps(record, sort_keys=True).encode()}


@pytest.fixture(scope="module")
def v1_shards(reader_dataset, tmp_path_factory) -> str:
    """The reader dataset rewritten in format version 1: its brace pattern."""
    out = tmp_path_factory.mktemp("v1_shards")
    for tar in reader_dataset["tars"]:
        with ShardFile(out / tar.name) as shard:
            for raw in raw_samples(tar):
                shard.write(as_format_v1(raw))
            shard.commit()
    return str(out / "train-{000000..000003}.tar")


def test_v2_record_describes_chunks_and_jpegs(reader_dataset) -> None:
    raws = [raw for tar in reader_dataset["tars"] for raw in raw_samples(tar)]
    assert len(raws) == len(reader_dataset["videos"])
    for raw in raws:
        record = json.loads(raw[RECORD])
        n, (h, w) = record["num_frames"], record["cells"]
        assert record["format_version"] == FORMAT_VERSION == 2
        assert record["mv_chunk_frames"] == MV_CHUNK_FRAMES
        sizes = record["mv_chunk_bytes"]
        assert len(sizes) == -(-n // MV_CHUNK_FRAMES) and sum(sizes) == len(raw[MV])
        ends = np.cumsum(sizes)
        for c, (begin, end) in enumerate(zip(ends - sizes, ends)):
            chunk = raw[MV][begin:end]
            assert zlib.crc32(chunk) == record["mv_chunk_crc32"][c]
            frames = min(MV_CHUNK_FRAMES, n - c * MV_CHUNK_FRAMES)  # an independent zstd frame each
            assert len(zstandard.ZstdDecompressor().decompress(chunk)) == frames * 2 * h * w
        ends = np.cumsum(record["iframe_bytes"])
        jpegs = [raw[IFRAMES][b - s:b] for s, b in zip(record["iframe_bytes"], ends)]
        assert [zlib.crc32(j) for j in jpegs] == record["iframe_crc32"]
        assert record["crc32"][MV] == zlib.crc32(raw[MV])  # the whole-member CRC32 of version 1 stays


@pytest.mark.parametrize("key,lo,hi", [("c0_coffee", 0, 1), ("c0_coffee", 7, 9), ("c0_coffee", 8, 16),
                                       ("c0_coffee", 3, 40), ("c0_coffee", 39, 40), ("short", 0, 10),
                                       ("short", 8, 10)])
def test_frame_ranges_equal_full_decode(reader_dataset, key: str, lo: int, hi: int) -> None:
    """Any frame range, inside a chunk, across chunk boundaries or in the partial last chunk."""
    raw = next(r for tar in reader_dataset["tars"] for r in raw_samples(tar) if r["__key__"] == key)
    full = SampleCodec(raw, check_all=True).mv_codes(0, reader_dataset["num_frames"][key])
    np.testing.assert_array_equal(SampleCodec(raw).mv_codes(lo, hi), full[lo:hi])


def test_v1_shards_read_identically(reader_dataset, v1_shards) -> None:
    """Version 1 samples (one zstd frame, no per-piece CRC32) decode to the same arrays."""
    v2 = {s.key: s for s in iter_samples(reader_dataset["urls"])}
    v1 = {s.key: s for s in iter_samples(v1_shards)}
    assert set(v1) == set(v2)
    for key, old in v1.items():
        new = v2[key]
        assert old.record["format_version"] == 1 and "mv_chunk_bytes" not in old.record
        for name in ("mv", "valid", "frame_types", "iframes", "iframe_index"):
            np.testing.assert_array_equal(getattr(old, name), getattr(new, name), err_msg=f"{key} {name}")
        assert old.label == new.label
    assert inspect_shards(v1_shards)["total"]["format_versions"] == [1]


@pytest.mark.parametrize("build", ["eval", "train"])
def test_v1_shards_give_the_same_clips(reader_dataset, v1_shards, build: str) -> None:
    def batches(urls):
        if build == "eval":
            return list(build_eval_pipeline(urls, ClipConfig(mode="center", num_iframes=2), 4))
        return list(build_train_pipeline(urls, ClipConfig(), 2, seed=3, epoch=1))

    old, new = batches(v1_shards), batches(reader_dataset["urls"])
    assert len(old) == len(new) > 0
    for a, b in zip(old, new):
        assert a["key"] == b["key"]
        for name in ("mv", "valid", "iframes", "crop_box", "flipped", "frame_index"):
            assert a[name].equal(b[name]), name


def damage(tar: Path, member: str, offsets: list[int]) -> None:
    """Invert 4 bytes at each offset of a member's data, in place."""
    with tarfile.open(tar) as t:
        start = t.getmember(member).offset_data
    with open(tar, "r+b") as fh:
        for offset in offsets:
            fh.seek(start + offset)
            old = fh.read(4)
            fh.seek(start + offset)
            fh.write(bytes(b ^ 0xFF for b in old))


def test_reader_checks_what_it_reads_verify_checks_all(reader_dataset, tmp_path) -> None:
    """c0_astronaut (40 frames, I-frames 0/12/24/36) with its last MV chunk (frames 32-39) and its
    first JPEG damaged: a centred clip (frames 12-27, I-frame 24) reads them not and is fine; a
    read of either damaged piece is refused, naming it; verify finds both."""
    tar = Path(shutil.copy(reader_dataset["tars"][0], tmp_path / "train-000000.tar"))
    shutil.copy(reader_dataset["tars"][0].with_suffix(".json"), tmp_path / "train-000000.json")
    raw = next(r for r in raw_samples(tar) if r["__key__"] == "c0_astronaut")
    record = json.loads(raw[RECORD])
    assert record["num_frames"] == 40 and record["iframe_index"] == [0, 12, 24, 36]
    last = sum(record["mv_chunk_bytes"][:-1])
    damage(tar, "c0_astronaut.mv.zst", [last + record["mv_chunk_bytes"][-1] // 2])
    damage(tar, "c0_astronaut.iframes.jpgs", [record["iframe_bytes"][0] // 2])

    raw = next(r for r in raw_samples(tar) if r["__key__"] == "c0_astronaut")
    batch = next(iter(build_eval_pipeline(str(tar), ClipConfig(mode="center"), 3)))
    assert "c0_astronaut" in batch["key"]
    source = ShardClipSource(raw)
    with pytest.raises(SampleError, match=r"checksum mismatch in mv\.zst chunk 4"):
        source.motion(np.arange(30, 40))
    with pytest.raises(SampleError, match=r"checksum mismatch in iframes\.jpgs I-frame 0"):
        source.iframes([0])
    with pytest.raises(SampleError, match=r"checksum mismatch in mv\.zst, iframes\.jpgs"):
        decode_sample(raw)
    assert verify_shards(str(tar)) == [
        Problem(str(tar), "c0_astronaut", "checksum mismatch in mv.zst, iframes.jpgs (corrupt data)")]


@pytest.mark.parametrize("field,value", [("mv_chunk_bytes", [1, 2]), ("mv_chunk_crc32", [0]),
                                         ("iframe_crc32", []), ("mv_chunk_frames", 0)])
def test_record_that_does_not_fit_the_members_is_refused(reader_dataset, field: str, value) -> None:
    raw = raw_samples(reader_dataset["tars"][0])[0]
    with pytest.raises(SampleError, match="disagree with the record"):
        SampleCodec(update_record(raw, **{field: value}))
    with pytest.raises(SampleError, match="incomplete record"):
        SampleCodec(update_record(raw, mv_chunk_bytes=None))


@pytest.mark.parametrize("record,refused", [
    (b"[2]", False), (b'{"key": "x"}', False), (b'{"format_version": "2"}', False),
    (b'{"format_version": true}', False), (b'{"format_version": 2.0}', False), (b'{"format_version": 99}', True),
], ids=["array", "no_version", "text", "bool", "float", "99"])
def test_only_an_unsupported_version_refuses_the_shard(reader_dataset, tmp_path, record: bytes, refused: bool) -> None:
    """A record that is not an object or has no integer format_version is a bad sample (records
    have no CRC32: damage must be skippable); only an integer version mvmae cannot read refuses
    the shard, whatever the handler."""
    raws = raw_samples(reader_dataset["tars"][0])
    with pytest.raises(SampleError) as info:
        decode_record({**raws[0], RECORD: record})
    assert isinstance(info.value, FormatVersionError) == refused
    with ShardFile(tmp_path / "train-000000.tar") as shard:
        for i, raw in enumerate(raws):
            shard.write({**raw, RECORD: record} if i == 0 else raw)
        shard.commit()
    pipeline = build_eval_pipeline(str(shard.path), ClipConfig(mode="center"), 1, handler=SkipCounter())
    if refused:
        with pytest.raises(FormatVersionError, match="version 99"):
            list(pipeline)
    else:
        assert [b["key"][0] for b in pipeline] == [r["__key__"] for r in raws[1:]]
        assert pipeline.skips.skipped == 1


def without(raw: dict, field: str) -> dict:
    """A raw sample whose record lacks ``field``."""
    record = json.loads(raw[RECORD])
    del record[field]
    return {**raw, RECORD: json.dumps(record).encode()}


def record_cases(raw: dict) -> dict[str, tuple[dict, str]]:
    """Raw samples whose record does not describe their members: {case: (sample, reason)}."""
    record = json.loads(raw[RECORD])
    index, (h, w) = record["iframe_index"], record["iframe_size"]
    return {
        "no_iframe_index": (without(raw, "iframe_index"), "incomplete record"),
        "no_size": (without(raw, "size"), "incomplete record"),
        "grid_text": (update_record(raw, grid="eight"), "incomplete record"),
        "grid_0": (update_record(raw, grid=0), "not positive"),
        "extra_index": (update_record(raw, iframe_index=index + [index[-1] + 1]),
                        f"{len(index) + 1} I-frame indices for {len(index)} JPEGs"),
        "iframe_size": (update_record(raw, iframe_size=[h + 2, w]),
                        rf"I-frame 0 is \({h}, {w}\) px, the record says \({h + 2}, {w}\)"),
        "iframe_size_0": (update_record(raw, iframe_size=[0, 0]), f"iframe_size \\[0, 0\\] for {len(index)} JPEGs"),
        "cls_text": ({**raw, "cls": b"two"}, "unreadable cls"),
    }


CASES = ("no_iframe_index", "no_size", "grid_text", "grid_0", "extra_index", "iframe_size", "iframe_size_0",
         "cls_text")


@pytest.mark.parametrize("case", CASES)
def test_record_that_does_not_describe_the_sample_is_a_sample_error(reader_dataset, case: str) -> None:
    """decode_sample (verify, export, iter_samples) and the training reader's source refuse the
    same records with the same SampleError: fields missing or of the wrong type, I-frame indices
    not one per JPEG, decoded I-frames not of the record's iframe_size, a cls that is no number."""
    raw, reason = record_cases(raw_samples(reader_dataset["tars"][0])[0])[case]
    with pytest.raises(SampleError, match=reason):
        decode_sample(raw, check=False)
    with pytest.raises(SampleError, match=reason):
        source = ShardClipSource(raw, check_crc=False)
        source.iframes(range(len(source.iframe_index)))


def test_iter_samples_hands_a_bad_record_to_the_handler(reader_dataset, tmp_path) -> None:
    raws = raw_samples(reader_dataset["tars"][0])
    with ShardFile(tmp_path / "train-000000.tar") as shard:
        for i, raw in enumerate(raws):
            shard.write(without(raw, "iframe_index") if i == 1 else raw)
        shard.commit()
    skips = SkipCounter()
    keys = [s.key for s in iter_samples(str(shard.path), handler=skips)]
    assert keys == [raws[0]["__key__"], raws[2]["__key__"]] and skips.skipped == 1
    with pytest.raises(SampleError, match=f"{raws[1]['__key__']}.*incomplete record"):
        list(iter_samples(str(shard.path)))
