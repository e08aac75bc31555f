"""``mvmae.shards.reader``: real shards (``reader_dataset``) through the train and eval pipelines,
over local paths, brace patterns and ``pipe:``; a corrupt sample skipped and counted, format
versions refused. HTTP faults and every kind of damage: tests/faults.
"""

from __future__ import annotations

import collections
import gc
import json
import shutil
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from webdataset.handlers import ignore_and_continue

from mvmae.extract.video import extract_video
from mvmae.shards.inspect import verify_shards
from mvmae.job.job import JobConfig, run_job
from mvmae.shards.clips import PIL_IFRAMES, ShardClipSource
from mvmae.shards.reader import (TORCH_IFRAMES, ClipConfig, ReadConfig, SkipCounter, TooManySkipsError,
                                 build_eval_pipeline, build_train_pipeline, decode_sources, expand_urls,
                                 iter_samples, make_loader, read_shards, resolve_rank, sample_clips)
from mvmae.shards.sample import (MV_STEP, FormatVersionError, SampleCodec, SampleError, decode_sample,
                                 dequantize_mv, update_record)
from mvmae.shards.writer import ShardFile
from mvmae.synth import encode_h264

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
except ImportError:  # ... or as the `tests` package
    from tests import media

CENTER = ClipConfig(mode="center")
WORKER_TIMEOUT_S = 60  # a DataLoader worker stuck for this long fails the test instead of hanging it


def keys_of(pipeline) -> list[str]:
    return [key for batch in pipeline for key in batch["key"]]


def raw_samples(tar: Path) -> list[dict]:
    """A shard's samples as written ({'__key__', ext: bytes}), read with tarfile alone."""
    samples: dict[str, dict] = {}
    with tarfile.open(tar) as t:
        for info in t:
            key, ext = info.name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[ext] = t.extractfile(info).read()
    return list(samples.values())


def shard_keys(tar: Path) -> list[str]:
    return [s["__key__"] for s in raw_samples(tar)]


def copy_shards(dataset: dict, dest: Path) -> list[Path]:
    dest.mkdir(exist_ok=True)
    return [Path(shutil.copy(t, dest / t.name)) for t in dataset["tars"]]


# --------------------------------------------------------------------------- decoding


def test_round_trip_matches_extraction(reader_dataset) -> None:
    """Each sample read back equals extract_video of its source within half a quantization step."""
    samples = {s.key: s for s in iter_samples(reader_dataset["urls"])}
    assert set(samples) == set(reader_dataset["videos"])
    for key, video in reader_dataset["videos"].items():
        fields, s = extract_video(video), samples[key]
        np.testing.assert_array_equal(s.valid, fields.valid, err_msg=key)
        assert s.mv.shape == fields.mv.shape and s.mv.dtype == np.float32
        valid = np.broadcast_to(s.valid[:, None], s.mv.shape)
        assert np.abs(s.mv - fields.mv)[valid].max() <= 0.125 + 1e-6, key
        assert (s.mv[~valid] == 0).all()
        assert s.iframes.shape == fields.iframes.shape, key
        np.testing.assert_array_equal(s.iframe_index, fields.iframe_index)
        assert np.abs(s.iframes.astype(int) - fields.iframes).mean() < 3.0  # JPEG q90
        assert s.label == reader_dataset["labels"][key]
    gc.collect()  # no PyAV garbage left for forked DataLoader workers (see conftest.reader_dataset)


def test_lazy_source_equals_decode_sample(reader_dataset) -> None:
    """The reader's lazy decoding gives exactly sample.decode_sample's arrays."""
    raws = list(read_shards({"url": str(t)} for t in reader_dataset["tars"]))
    assert len(raws) == len(reader_dataset["videos"])
    for raw in raws:
        full, lazy = decode_sample(raw), ShardClipSource(raw)
        codes, valid = lazy.motion(np.arange(lazy.num_frames))  # int8 codes, step lazy.mv_step
        assert codes.dtype == np.int8 and lazy.mv_step == MV_STEP
        np.testing.assert_array_equal(dequantize_mv(codes)[0], full.mv)
        np.testing.assert_array_equal(valid, full.valid)
        images = np.stack(lazy.iframes(range(len(full.iframe_index))))
        np.testing.assert_array_equal(images, full.iframes)
        assert (lazy.key, lazy.label, lazy.size) == (full.key, full.label, tuple(full.record["size"]))


@pytest.mark.parametrize("box", [(0, 0, 144, 192), (10, 20, 130, 150), (60, 80, 84, 112), (0, 30, 144, 174)])
def test_torch_iframes_match_pil(reader_dataset, box) -> None:
    """The reader's I-frame ops against PIL's: the same pixels decoded; crops resized within a
    fraction of a level on average (rounding at a few edge pixels; the third box is a 6x zoom)."""
    raw = raw_samples(reader_dataset["tars"][0])[0]
    jpeg = SampleCodec(raw).jpeg(1)
    image = PIL_IFRAMES.decode(jpeg)
    assert image.shape == (144, 192, 3)
    np.testing.assert_array_equal(TORCH_IFRAMES.decode(jpeg), image)
    ours, pil = TORCH_IFRAMES.crop_resize([image], box, 224), PIL_IFRAMES.crop_resize([image], box, 224)
    assert ours.shape == pil.shape == (1, 3, 224, 224) and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - pil)
    assert diff.mean() < 0.1 and np.percentile(diff, 99.9) <= 8, (diff.mean(), diff.max())


@pytest.mark.parametrize("ops", [TORCH_IFRAMES, PIL_IFRAMES], ids=["torch", "pil"])
def test_undecodable_jpeg_is_a_sample_error(reader_dataset, ops) -> None:
    """With CRC checks off, a JPEG that cannot be decoded still fails as a SampleError naming the
    sample (which the skip-and-count handler can skip), whichever I-frame ops decode it."""
    raw = raw_samples(reader_dataset["tars"][0])[0]
    record = json.loads(raw["json"])
    first = record["iframe_bytes"][0]
    raw = {**raw, "iframes.jpgs": b"\0" * 16 + raw["iframes.jpgs"][16:]}  # SOI and header gone
    source = ShardClipSource(raw, check_crc=False)
    with pytest.raises(SampleError, match=rf"{raw['__key__']}.*corrupt I-frame JPEG"):
        source.iframes([0], ops.decode)
    assert source.iframes([1], ops.decode)[0].shape[:2] == tuple(record["iframe_size"])
    assert first > 16


def test_source_errors_name_the_shard(corrupt_dataset) -> None:
    """A ShardClipSource's SampleErrors, found up front (a missing member) or when a clip reads a
    damaged piece, carry a note naming the shard."""
    url = corrupt_dataset["urls"][0]
    raws = {r["__key__"]: r for r in read_shards([{"url": url}])}
    with pytest.raises(SampleError, match="lacks member") as info:
        ShardClipSource({k: v for k, v in raws["c0_astronaut"].items() if k != "cls"})
    assert info.value.__notes__ == [f"shard {url}"]
    with pytest.raises(SampleError, match="checksum mismatch in mv.zst chunk") as info:
        ShardClipSource(raws["c0_coffee"]).motion(np.arange(16))
    assert info.value.__notes__ == [f"shard {url}"]


@pytest.mark.parametrize("mode", ["train", "multi"])
def test_grouped_clips_equal_one_by_one(corrupt_dataset, mode: str) -> None:
    """sample_clips works on groups of sources step by step: the same clips, in the same order,
    as one source at a time, and a corrupt sample in a group is skipped alone."""
    clip = ClipConfig() if mode == "train" else ClipConfig(mode="multi", num_clips=3)

    def run(group_size: int) -> tuple[list, dict]:
        skips = SkipCounter()
        sources = decode_sources(read_shards({"url": u} for u in corrupt_dataset["urls"]), handler=skips)
        return list(sample_clips(sources, clip, seed=1, epoch=2, handler=skips, group_size=group_size)), skips.summary()

    (one, one_skips), (grouped, grouped_skips) = run(1), run(16)
    assert one_skips == grouped_skips and one_skips["skipped"] == 1
    assert [c.key for c in one] == [c.key for c in grouped] and "c0_coffee" not in {c.key for c in one}
    for a, b in zip(one, grouped):
        assert (a.start, a.clip_index, a.crop_box, a.flipped) == (b.start, b.clip_index, b.crop_box, b.flipped)
        for name in ("mv", "valid", "iframes", "frame_index", "iframe_index"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("group_size", [2, 16])
def test_grouped_clips_equal_one_by_one_with_a_stopping_handler(corrupt_dataset, group_size: int) -> None:
    """A handler that stops at a bad sample (webdataset's ``*_and_stop``) ends the clips there
    whatever the grouping: the clips of the samples before it arrive, as one by one."""
    def run(size: int) -> tuple[list[str], list[Exception]]:
        errors = []

        def stop(exc: Exception) -> bool:
            errors.append(exc)
            return False

        sources = decode_sources(read_shards({"url": u} for u in corrupt_dataset["urls"]))
        return [c.key for c in sample_clips(sources, CENTER, handler=stop, group_size=size)], errors

    order = shard_keys(Path(corrupt_dataset["urls"][0]))
    assert order.index("c0_coffee") > 0
    (one, one_errors), (grouped, grouped_errors) = run(1), run(group_size)
    assert one == grouped == order[:order.index("c0_coffee")]
    assert len(one_errors) == len(grouped_errors) == 1 and "c0_coffee" in str(grouped_errors[0])


# --------------------------------------------------------------------------- clips


def clips_by_key(urls, clip: ClipConfig, batch_size: int = 4) -> dict[str, list[dict]]:
    """Every clip of an eval pipeline as {key: [per-clip dict of arrays]}."""
    out = collections.defaultdict(list)
    for batch in build_eval_pipeline(urls, clip, batch_size):
        for i, key in enumerate(batch["key"]):
            out[key].append({k: v[i].numpy() for k, v in batch.items() if k != "key"})
    return out


def test_center_clips_frames_and_nearest_iframes(reader_dataset) -> None:
    clips = clips_by_key(reader_dataset["urls"], ClipConfig(mode="center", num_frames=8, stride=2,
                                                            num_iframes=2))
    assert set(clips) == set(reader_dataset["videos"])
    (c,) = clips["c0_astronaut"]  # 40 frames, span 15: start 12, centre 19; I-frames 0/12/24/36
    assert c["start"] == 12
    np.testing.assert_array_equal(c["frame_index"], 12 + 2 * np.arange(8))
    np.testing.assert_array_equal(c["iframe_index"], [12, 24])
    assert c["label"] == 0 and clips["c2_coffee"][0]["label"] == 2


@pytest.mark.parametrize("short_video", ["loop", "pad"])
def test_short_video_looped_or_padded(reader_dataset, short_video: str) -> None:
    clips = clips_by_key(reader_dataset["urls"], ClipConfig(mode="center", short_video=short_video,
                                                            num_iframes=2))
    (c,) = clips["short"]  # 10 frames, one I-frame (0), clip of 16
    assert c["start"] == 0
    np.testing.assert_array_equal(c["iframe_index"], [0, 0])  # one I-frame, repeated
    if short_video == "loop":
        np.testing.assert_array_equal(c["frame_index"], np.arange(16) % 10)
        np.testing.assert_array_equal(c["valid"][10:16], c["valid"][0:6])
        np.testing.assert_array_equal(c["mv"][10:16], c["mv"][0:6])
    else:
        np.testing.assert_array_equal(c["frame_index"], np.where(np.arange(16) < 10, np.arange(16), -1))
        assert not c["valid"][10:].any() and (c["mv"][10:] == 0).all()
    assert c["valid"][1:10].any()


def test_multi_clip_count(reader_dataset) -> None:
    clips = clips_by_key(reader_dataset["urls"], ClipConfig(mode="multi", num_clips=3), batch_size=7)
    assert sum(map(len, clips.values())) == 3 * len(reader_dataset["videos"])
    assert [c["start"] for c in clips["c1_coffee"]] == [0, 12, 24]
    assert [c["clip_index"] for c in clips["c1_coffee"]] == [0, 1, 2]
    assert [c["start"] for c in clips["short"]] == [0, 0, 0]


def median_motion(clip: dict) -> tuple[float, float]:
    """Median (dx, dy) over the valid cells of the clip's frames 2.. (away from the I-frames)."""
    mv, valid = clip["mv"], clip["valid"]
    return float(np.median(mv[:, 0][valid])), float(np.median(mv[:, 1][valid]))


@pytest.mark.parametrize("eval_crop,sx,sy", [("center", 224 / 144, 224 / 144), ("full", 224 / 192, 224 / 144)])
def test_eval_vectors_in_output_px_per_frame(reader_dataset, eval_crop: str, sx: float, sy: float) -> None:
    clips = clips_by_key(reader_dataset["urls"], ClipConfig(mode="center", eval_crop=eval_crop))
    for key, (vx, vy) in reader_dataset["velocity"].items():
        dx, dy = median_motion(clips[key][0])
        assert dx == pytest.approx(vx * sx, abs=0.1), key
        assert dy == pytest.approx(vy * sy, abs=0.1), key


def test_train_crop_and_flip_scale_vectors(reader_dataset) -> None:
    """Random crops and flips: a pan of (vx, vy) source px/frame reads (+-vx * 224 / box width px,
    vy * 224 / box height px) per frame, dx negated when flipped."""
    clip = ClipConfig(crop_area=(0.3, 0.9))
    flips = []
    for epoch in range(3):
        for batch in build_train_pipeline(reader_dataset["urls"], clip, 2, epoch=epoch):
            for i, key in enumerate(batch["key"]):
                vx, vy = reader_dataset["velocity"][key]
                y0, x0, y1, x1 = batch["crop_box"][i].tolist()
                flipped = bool(batch["flipped"][i])
                dx, dy = median_motion({k: batch[k][i].numpy() for k in ("mv", "valid")})
                expect_dx = (-vx if flipped else vx) * 224 / ((x1 - x0) * 192)
                assert dx == pytest.approx(expect_dx, rel=0.05, abs=0.1), (key, epoch)
                assert dy == pytest.approx(vy * 224 / ((y1 - y0) * 144), rel=0.05, abs=0.1), (key, epoch)
                flips.append(flipped)
    assert any(flips) and not all(flips)


def test_collation_shapes_and_dtypes(reader_dataset) -> None:
    clip = ClipConfig(num_frames=8, num_iframes=2, iframe_size=112, mv_size=7)
    batch = next(iter(build_train_pipeline(reader_dataset["urls"], clip, 3)))
    assert batch["mv"].shape == (3, 8, 2, 7, 7) and batch["mv"].dtype == torch.float32
    assert batch["valid"].shape == (3, 8, 7, 7) and batch["valid"].dtype == torch.bool
    assert batch["iframes"].shape == (3, 2, 3, 112, 112) and batch["iframes"].dtype == torch.uint8
    assert batch["label"].shape == (3,) and batch["label"].dtype == torch.int64
    assert isinstance(batch["key"], list) and len(batch["key"]) == 3
    assert batch["frame_index"].shape == (3, 8) and batch["iframe_index"].shape == (3, 2)
    assert batch["crop_box"].shape == (3, 4) and batch["flipped"].dtype == torch.bool


class CountingIFrames:
    """The torch I-frame operations, counting the JPEGs they decode."""

    def __init__(self) -> None:
        self.decoded = 0

    def decode(self, jpeg: bytes) -> np.ndarray:
        self.decoded += 1
        return TORCH_IFRAMES.decode(jpeg)

    def crop_resize(self, images, box, size: int) -> np.ndarray:
        return TORCH_IFRAMES.crop_resize(images, box, size)


@pytest.mark.parametrize("mode", ["train", "multi"])
def test_motion_only_clips_decode_no_iframe(reader_dataset, mode: str) -> None:
    """num_iframes=0: no JPEG is decoded, clips carry (0, 3, S, S) I-frames, and the fields,
    starts, crops and flips are those of the same clips with I-frames; batches collate."""
    options = {"mode": "train"} if mode == "train" else {"mode": "multi", "num_clips": 2}

    def clips(num_iframes: int) -> tuple[list, int]:
        ops = CountingIFrames()
        sources = decode_sources(read_shards({"url": u} for u in expand_urls(reader_dataset["urls"])))
        out = list(sample_clips(sources, ClipConfig(num_iframes=num_iframes, **options), seed=3, ops=ops))
        return out, ops.decoded

    (with_iframes, decoded), (motion_only, none) = clips(1), clips(0)
    assert 0 < decoded <= len(with_iframes) and none == 0  # clips of a sample share decoded I-frames
    assert [c.key for c in motion_only] == [c.key for c in with_iframes]
    for a, b in zip(with_iframes, motion_only):
        assert b.iframes.shape == (0, 3, 224, 224) and b.iframe_index.shape == (0,)
        assert (a.start, a.clip_index, a.crop_box, a.flipped) == (b.start, b.clip_index, b.crop_box, b.flipped)
        for name in ("mv", "valid", "frame_index"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    batch = next(iter(build_train_pipeline(reader_dataset["urls"], ClipConfig(num_iframes=0), 3)))
    assert batch["iframes"].shape == (3, 0, 3, 224, 224) and batch["iframe_index"].shape == (3, 0)


def make_intra_refresh_cut(path: Path, skip: int = 5) -> Path:
    """A real H.264 file with no I-frame: a pan (2 px/frame) encoded by libx264 with periodic intra
    refresh (one IDR, at the start), remuxed without its first ``skip`` packets, as a capture that
    starts mid-stream. FFmpeg starts decoding at the next recovery point: only P-frames."""
    options = {"crf": "18", "threads": "1", "x264-params": "intra-refresh=1:keyint=12:bframes=0:log-level=error"}
    whole = encode_h264(path.with_name(f"whole_{path.name}"), media.render_pan(vx=2, vy=0, num_frames=40), 25, options)
    with av.open(str(whole)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        packets = [p for p in src.demux(video=0) if p.size][skip:]
        first_pts, first_dts = packets[0].pts, packets[0].dts
        for packet in packets:
            packet.pts, packet.dts, packet.stream = packet.pts - first_pts, packet.dts - first_dts, stream
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def no_iframe_shard(tmp_path_factory) -> Path:
    """A shard (``run_job``) of one sample without I-frames (``make_intra_refresh_cut``)."""
    d = tmp_path_factory.mktemp("no_iframe")
    make_intra_refresh_cut(d / "cut.mp4")
    (d / "list.txt").write_text("cut.mp4 0\n")
    summary = run_job(JobConfig(input=d / "list.txt", out_dir=d / "shards"))
    assert summary.num_ok == 1, summary
    gc.collect()  # no PyAV garbage for forked DataLoader workers (see conftest.reader_dataset)
    return d / "shards" / "train-000000.tar"


@pytest.mark.parametrize("mode", ["train", "center"])
def test_motion_only_clips_of_a_sample_without_iframes(no_iframe_shard, mode: str) -> None:
    """A sample without I-frames (its record: no iframe_index, iframe_size [0, 0]) gives
    motion-only clips (num_iframes=0), the box snapped to whole source px; with I-frames it is
    skipped and counted as a bad sample (train) or refused (eval)."""
    (raw,) = read_shards([{"url": str(no_iframe_shard)}])
    record = json.loads(raw["json"])
    assert (record["iframe_index"], record["iframe_size"], record["gop"]["num_i"]) == ([], [0, 0], 0)
    assert verify_shards(str(no_iframe_shard)) == []
    if mode == "train":
        pipeline = build_train_pipeline(str(no_iframe_shard), ClipConfig(num_iframes=0), 1)
    else:
        pipeline = build_eval_pipeline(str(no_iframe_shard), ClipConfig(mode="center", num_iframes=0), 1)
    (batch,) = list(pipeline)
    assert batch["iframes"].shape == (1, 0, 3, 224, 224) and batch["valid"].any()
    h, w = record["size"]
    y0, x0, y1, x1 = batch["crop_box"][0].tolist()
    px = np.array([y0 * h, x0 * w, y1 * h, x1 * w])
    np.testing.assert_allclose(px, np.round(px), atol=1e-4)
    dx, _ = median_motion({k: batch[k][0].numpy() for k in ("mv", "valid")})
    expect_dx = (-2 if bool(batch["flipped"][0]) else 2) * 224 / ((x1 - x0) * w)
    assert dx == pytest.approx(expect_dx, rel=0.05, abs=0.1)
    if mode == "train":
        pipeline = build_train_pipeline(str(no_iframe_shard), ClipConfig(), 1)
        assert list(pipeline) == [] and pipeline.skips.skipped == 1
    else:
        with pytest.raises(SampleError, match="no I-frame"):
            list(build_eval_pipeline(str(no_iframe_shard), CENTER, 1))


# --------------------------------------------------------------------------- order and splitting


def train_run(urls, seed: int, epoch: int) -> list[tuple]:
    """(key, start, crop box, flipped) of every clip of one epoch, batch size 1."""
    return [(b["key"][0], int(b["start"][0]), tuple(b["crop_box"][0].tolist()), bool(b["flipped"][0]))
            for b in build_train_pipeline(urls, ClipConfig(), 1, seed=seed, epoch=epoch)]


def test_order_deterministic_in_seed_and_epoch(reader_dataset) -> None:
    urls = reader_dataset["urls"]
    first = train_run(urls, seed=5, epoch=0)
    assert first == train_run(urls, seed=5, epoch=0)
    assert sorted(k for k, *_ in first) == sorted(reader_dataset["videos"])
    other = train_run(urls, seed=5, epoch=1)
    assert [k for k, *_ in other] != [k for k, *_ in first]
    assert sorted(other) != sorted(first)  # new starts / crops / flips too


def test_set_epoch_reaches_persistent_workers(reader_dataset) -> None:
    """set_epoch between epochs of one persistent-worker loader = a loader built for that epoch."""
    def run(loader) -> list[tuple]:
        return [(k, s) for b in loader for k, s in zip(b["key"], b["start"].tolist())]

    urls = reader_dataset["urls"]
    pipeline = build_train_pipeline(urls, ClipConfig(), 1, seed=9)
    loader = make_loader(pipeline, num_workers=2, persistent_workers=True, timeout_s=WORKER_TIMEOUT_S)
    epoch0 = run(loader)
    pipeline.set_epoch(1)
    epoch1 = run(loader)
    for epoch, expected in enumerate([epoch0, epoch1]):
        fresh = build_train_pipeline(urls, ClipConfig(), 1, seed=9, epoch=epoch)
        assert run(make_loader(fresh, num_workers=2, timeout_s=WORKER_TIMEOUT_S)) == expected
    assert epoch0 != epoch1


@pytest.mark.parametrize("build", ["train", "eval"])
def test_ranks_and_workers_cover_every_sample_once(reader_dataset, build: str) -> None:
    """2 ranks x 2 DataLoader workers over 4 shards: every sample exactly once."""
    per_rank = []
    for rank in range(2):
        if build == "train":
            pipeline = build_train_pipeline(reader_dataset["urls"], ClipConfig(), 1, seed=1, rank=rank,
                                            world_size=2)
        else:
            pipeline = build_eval_pipeline(reader_dataset["urls"], CENTER, 2, rank=rank, world_size=2)
        per_rank.append(keys_of(make_loader(pipeline, num_workers=2, timeout_s=WORKER_TIMEOUT_S)))
    everything = per_rank[0] + per_rank[1]
    assert sorted(everything) == sorted(reader_dataset["videos"])
    assert not set(per_rank[0]) & set(per_rank[1])


def test_resampled_is_endless_and_deterministic(reader_dataset) -> None:
    def run() -> list[str]:
        pipeline = build_train_pipeline(reader_dataset["urls"], ClipConfig(), 1, seed=2, resampled=True)
        return keys_of(pipeline.with_epoch(25))

    keys = run()
    assert len(keys) == 25 and set(keys) <= set(reader_dataset["videos"])
    assert keys == run()


def test_rank_resolution() -> None:
    assert resolve_rank(None, None) == (0, 1)  # torch.distributed not initialized
    assert resolve_rank(1, 4) == (1, 4)
    with pytest.raises(ValueError, match="both"):
        resolve_rank(1, None)
    with pytest.raises(ValueError, match="rank"):
        resolve_rank(4, 4)


def test_builders_refuse_the_other_mode(reader_dataset) -> None:
    with pytest.raises(ValueError, match="train"):
        build_train_pipeline(reader_dataset["urls"], CENTER, 2)
    with pytest.raises(ValueError, match="center"):
        build_eval_pipeline(reader_dataset["urls"], ClipConfig(), 2)


# --------------------------------------------------------------------------- URLs


def test_url_forms(reader_dataset) -> None:
    tars = [str(t) for t in reader_dataset["tars"]]
    folder = reader_dataset["shards"]
    assert expand_urls(reader_dataset["urls"]) == tars
    assert expand_urls([f"{folder}/train-{{000000..000001}}.tar", f"{folder}/train-{{000002..000003}}.tar"]) == tars
    assert expand_urls("::".join(tars[:2])) == tars[:2]
    with pytest.raises(ValueError, match="no shard"):
        expand_urls([])
    everything = sorted(reader_dataset["videos"])
    two_patterns = [f"{folder}/train-{{000000..000001}}.tar", f"file://{folder}/train-00000{{2,3}}.tar"]
    assert sorted(keys_of(build_eval_pipeline(two_patterns, CENTER, 3))) == everything
    pipes = [f"pipe:cat {t}" for t in tars]
    assert sorted(keys_of(build_eval_pipeline(pipes, CENTER, 3))) == everything


# --------------------------------------------------------------------------- damaged and refused shards


def corrupt_member(tar: Path, member: str) -> None:
    """Flip bytes in the middle of a member's data in place (every kind of damage, and HTTP
    faults: tests/faults)."""
    with tarfile.open(tar) as t:
        info = t.getmember(member)
    with open(tar, "r+b") as fh:
        offset = info.offset_data + info.size // 2
        fh.seek(offset)
        old = fh.read(8)
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in old))


def corrupt_mv_chunks(tar: Path, key: str) -> None:
    """Flip bytes in the middle of every MV chunk of a sample, in place: whatever frames a clip
    reads, the reader (which checks only the chunks it reads) meets a damaged one."""
    record = json.loads(next(s for s in raw_samples(tar) if s["__key__"] == key)["json"])
    with tarfile.open(tar) as t:
        start = t.getmember(f"{key}.mv.zst").offset_data
    with open(tar, "r+b") as fh:
        for begin, size in zip(np.cumsum([0, *record["mv_chunk_bytes"][:-1]]), record["mv_chunk_bytes"]):
            fh.seek(start + int(begin) + size // 2)
            old = fh.read(4)
            fh.seek(start + int(begin) + size // 2)
            fh.write(bytes(b ^ 0xFF for b in old))


@pytest.fixture
def corrupt_dataset(reader_dataset, tmp_path) -> dict:
    """A copy of the shards with c0_coffee's mv.zst damaged in every chunk (shard 0, second sample)."""
    tars = copy_shards(reader_dataset, tmp_path / "corrupt")
    corrupt_mv_chunks(tars[0], "c0_coffee")
    return {"urls": [str(t) for t in tars], "keys": set(reader_dataset["videos"])}


@pytest.mark.parametrize("context,num_workers", [(None, 2), ("spawn", 1)])
def test_corrupt_sample_skipped_and_counted_across_workers(corrupt_dataset, context, num_workers) -> None:
    """Counted in the main process from forked workers and from a spawned one (which also shows
    that the pipeline pickles)."""
    pipeline = build_train_pipeline(corrupt_dataset["urls"], ClipConfig(), 1)
    loader = make_loader(pipeline, num_workers=num_workers, timeout_s=WORKER_TIMEOUT_S,
                         multiprocessing_context=context)
    keys = keys_of(loader)
    assert sorted(keys) == sorted(corrupt_dataset["keys"] - {"c0_coffee"})
    assert pipeline.skips.summary() == {"seen": 10, "skipped": 1, "shards_seen": 4, "shards_skipped": 0,
                                       "shard_retries": 0}


def test_corrupt_sample_is_loud_in_eval_by_default(corrupt_dataset) -> None:
    with pytest.raises(SampleError, match="c0_coffee.*checksum"):
        keys_of(build_eval_pipeline(corrupt_dataset["urls"], CENTER, 2))
    skips = SkipCounter()
    keys = keys_of(build_eval_pipeline(corrupt_dataset["urls"], CENTER, 2, handler=skips))
    assert len(keys) == 9 and skips.skipped == 1


@pytest.mark.parametrize("ratio,raises", [(0.05, True), (0.2, False)])
def test_max_skip_ratio(corrupt_dataset, ratio: float, raises: bool) -> None:
    skips = SkipCounter(max_skip_ratio=ratio, min_samples=5)
    pipeline = build_eval_pipeline(corrupt_dataset["urls"], CENTER, 2, handler=skips)
    if raises:
        with pytest.raises(TooManySkipsError, match=r"1 of \d+ samples skipped"):
            keys_of(pipeline)
    else:
        assert len(keys_of(pipeline)) == 9


@pytest.fixture
def version_99_shard(reader_dataset, tmp_path) -> Path:
    """Shard 0's samples with format_version 99 in their records."""
    with ShardFile(tmp_path / "train-000099.tar") as shard:
        for raw in raw_samples(reader_dataset["tars"][0]):
            shard.write(update_record(raw, format_version=99))
        shard.commit()
    return shard.path


@pytest.mark.parametrize("handler", [None, ignore_and_continue])
def test_format_version_refused_never_skipped(reader_dataset, version_99_shard, handler) -> None:
    urls = [str(reader_dataset["tars"][1]), str(version_99_shard)]
    pipeline = build_train_pipeline(urls, ClipConfig(), 1, handler=handler)
    with pytest.raises(FormatVersionError) as err:
        keys_of(pipeline)
    message = str(err.value)
    assert "version 99" in message and "version(s) 1, 2" in message and str(version_99_shard) in message


def test_iter_samples_refuses_format_version(version_99_shard) -> None:
    with pytest.raises(FormatVersionError, match="99"):
        list(iter_samples(str(version_99_shard)))


def test_read_config_validation() -> None:
    with pytest.raises(ValueError, match="max_time_s"):
        ReadConfig(max_time_s=0)
    cmd = ReadConfig(max_time_s=60, connect_timeout_s=5).curl_command("http://x/a.tar")
    assert "--max-time" in cmd and cmd[cmd.index("--max-time") + 1] == "60" and "--retry" not in cmd


def test_skip_counter_skips_data_errors_only() -> None:
    skips = SkipCounter()
    assert skips(SampleError("bad sample")) is True
    assert (skips.skipped, skips.shards_skipped) == (1, 0)
    with pytest.raises(FormatVersionError):
        skips(FormatVersionError("version 99"))
    with pytest.raises(TypeError):  # a bug, not bad data
        skips(TypeError("unsupported operand"))
    skips.reset()
    assert skips.summary() == {"seen": 0, "skipped": 0, "shards_seen": 0, "shards_skipped": 0, "shard_retries": 0}
    with pytest.raises(ValueError, match="max_skip_ratio"):
        SkipCounter(max_skip_ratio=1.5)
