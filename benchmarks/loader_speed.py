"""Training-clip loading speed on ONE core: the shard reader versus decoding the mp4s on the fly.

    python benchmarks/loader_speed.py [--rounds N] [--iframe-sizes 256,224] [--cache-dir DIR] [--out-md PATH]

Dataset: ``--num-videos`` (16) libx264 pans made with ``tests.media.make_pan_clip`` (360x640,
``--seconds`` 8 s at 25 fps, 2 B-frames, 3 references, an IDR every 24 frames, crf 18; a different
velocity and photo each), extracted with ``run_job`` (default options: resolved vectors, 8-px grid,
I-frames at short side 256) into shards of 4 videos. Rendering takes about 20 s per clip; both are
cached in ``--cache-dir``. GOP 24 (make_pan_clip's default) is the case least favourable to the
shards: an on-the-fly loader decodes only ~12 frames before a clip on average. ``--long-gop`` (250,
x264's default keyint: one I-frame in 8 s) re-encodes the same decoded frames and measures again,
as a second, labelled data set.

Compared, in one process pinned to one CPU (``torch.set_num_threads(1)``), producing the same
training clip (T = 16 frames at a uniformly drawn start, one I-frame, a random resized crop + flip,
14x14 MV cells and a 224x224 I-frame, the same code: ``clips.py``'s crop box snapped to whole
I-frame pixels and field resampling, the reader's torch I-frame resize):

* **shards**: ``build_train_pipeline`` + ``make_loader(num_workers=0)``, batches of 8, collated
  into torch tensors (everything a DataLoader worker does).
* **on the fly**: what a decode-at-train-time loader does per clip: open the mp4 with PyAV (one
  slice thread, ``+export_mvs``), seek to the keyframe before the clip, decode to the clip's last
  frame, rasterise each clip frame's exported vectors onto the 8-px grid (mvmae's C kernel with
  the raw vectors: no reference resolution, so this is *cheaper* than what the shards hold), take
  the decoded I-frame nearest the clip centre as RGB, then crop/resample/resize as above. Only
  the I-frames decoded anyway are used (no extra decoding to reach a nearer one).
* **on the fly, RGB** (``onthefly.py``): what VideoMAE and mmaction2 load per clip with decord
  (16 RGB frames at stride 4, resized by decord to short side 224, one thread, random 224 crop +
  flip), and the same with torchcodec where FFmpeg's shared libraries exist (the table's notes say
  why a loader was not measured). A different clip from the shards', but the one users would
  otherwise load; the verdict is the shard reader's speed over the *fastest* on-the-fly loader.
* **shards, motion only**: the same pipeline with ``num_iframes=0`` (no JPEG decoded), as
  pretraining, ``mvmae codebook`` and ``mvmae train --inputs mv`` read; a row for information,
  with no target.
* **shards, I-frames stored at short side S** (only with ``--iframe-sizes``, e.g. ``256,224``):
  the same videos extracted again with ``ExtractConfig(iframe_short_side=S)`` into their own
  cached shards, read by the same pipeline; a row for information (issue 19's "I-frames stored
  at the size training needs"; their quality cost: ``iframe_quality.py``), with no target.

Timed in ``--rounds`` interleaved rounds (each: ``--epochs-per-round`` epochs of the reader, one
clip per video with each on-the-fly loader; the default 16 epochs make the two timed intervals about as long,
0.3-0.4 s each, so the slower first epoch after the other loader's round, with its caches cold,
weighs alike on both); the table gives the median of the per-round rates, by this process's
CPU time (the verdict: the machine may be shared, and other processes' turns on the pinned core
stretch the wall clock of either loader at random) and by the wall clock. Also reported:
bytes of shards versus the source mp4s per second of video, and the peak RSS (VmHWM) and private
memory of one DataLoader worker process running the train pipeline (resampled, shuffle buffer 256)
for ``--worker-batches`` batches. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.media (clip generator) lives in the repository, not the package

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mvmae.extract.config import ExtractConfig  # noqa: E402
from mvmae.shards.clips import ClipConfig  # noqa: E402
from mvmae.job.job import JobConfig, run_job  # noqa: E402
from mvmae.shards.reader import build_train_pipeline, make_loader  # noqa: E402
from mvmae.shards.sample import FORMAT_VERSION  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import cpu_model, git_state, loadavg, package_version  # noqa: E402
from onthefly import BATCH, on_the_fly_round, rgb_loaders, video_meta  # noqa: E402

TARGET_SPEED_RATIO = 50.0  # issue 19: >= 50x the fastest on-the-fly loader per core (stretch 100x)
TARGET_SIZE_RATIO = 1.5  # shards <= 1.5x the size of the source videos
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
IFRAME_SIDE = ExtractConfig().iframe_short_side  # what the default shards store (256 px)


# --------------------------------------------------------------------------- dataset


def _make_clip(args: tuple) -> str:
    sys.path.insert(0, str(REPO))
    from tests import media

    path, vx, vy, num_frames, image = args
    if not Path(path).exists():
        tmp = Path(path).with_suffix(".tmp.mp4")
        media.make_pan_clip(tmp, vx=vx, vy=vy, num_frames=num_frames, size=(360, 640), bframes=2,
                            refs=3, gop=24, image=image)
        os.replace(tmp, path)
    return path


def render_videos(cache: Path, num_videos: int, seconds: float) -> list[Path]:
    """The mp4s (rendered in 2 processes, cached)."""
    videos_dir = cache / f"videos-{num_videos}x{seconds:g}s"
    videos_dir.mkdir(parents=True, exist_ok=True)
    num_frames = round(seconds * 25)
    jobs = []
    for i in range(num_videos):
        angle = 2 * np.pi * i / num_videos
        speed = 1.0 + 0.15 * (i % 5)  # 1-1.6 px/frame keeps 200 frames inside the photo
        jobs.append((str(videos_dir / f"pan{i:02d}.mp4"), round(speed * np.cos(angle), 2),
                     round(speed * np.sin(angle) * 0.5, 2), num_frames, PHOTOS[i % len(PHOTOS)]))
    with ProcessPoolExecutor(2) as pool:
        return [Path(p) for p in pool.map(_make_clip, jobs)]


def extract_shards(videos: list[Path], folder: Path, iframe_side: int = IFRAME_SIDE) -> Path:
    """The videos' shards (cached), I-frames stored at short side ``iframe_side`` px: ``folder/shards``
    for the default size, ``folder/shards-iframes{iframe_side}`` for another."""
    listing = folder / "list.txt"
    listing.write_text("".join(f"{v.name} {i % 4}\n" for i, v in enumerate(videos)))
    out = folder / ("shards" if iframe_side == IFRAME_SIDE else f"shards-iframes{iframe_side}")
    run_job(JobConfig(input=listing, out_dir=out, shard_size=4, workers=2,
                      extract=ExtractConfig(iframe_short_side=iframe_side)))
    return out


def _reencode(args: tuple) -> str:
    """Decode ``src`` and encode its frames again with an IDR every ``gop`` frames (same x264
    options as make_pan_clip otherwise)."""
    src, dst, gop = args
    if Path(dst).exists():
        return dst
    tmp = Path(dst).with_suffix(".tmp.mp4")
    with av.open(src) as inp, av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.options = {"bf": "2", "refs": "3", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                          "crf": "18", "threads": "1", "x264-params": "b-adapt=0:mbtree=0:log-level=error"}
        for t, decoded in enumerate(inp.decode(video=0)):
            # a fresh frame: a decoded one carries its picture type, which libx264 would obey
            frame = av.VideoFrame.from_ndarray(decoded.to_ndarray(format="rgb24"), format="rgb24")
            frame = frame.reformat(format="yuv420p", threads=1)
            frame.pts, frame.time_base = t, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    os.replace(tmp, dst)
    return dst


def long_gop_dataset(videos: list[Path], gop: int) -> tuple[list[Path], Path]:
    """The same clips re-encoded with a long GOP (cached), and their shards."""
    folder = videos[0].parent / f"gop{gop}"
    folder.mkdir(exist_ok=True)
    with ProcessPoolExecutor(2) as pool:
        out = [Path(p) for p in pool.map(_reencode, [(str(v), str(folder / v.name), gop) for v in videos])]
    return out, extract_shards(out, folder)


# --------------------------------------------------------------------------- the shard reader


def reader_epochs(urls: str, clip: ClipConfig, first_epoch: int, num_epochs: int) -> int:
    """Iterate the train pipeline for some epochs in this process; returns the clips produced."""
    n = 0
    for epoch in range(first_epoch, first_epoch + num_epochs):
        pipeline = build_train_pipeline(urls, clip, BATCH, seed=0, epoch=epoch)
        for batch in make_loader(pipeline, num_workers=0):
            n += len(batch["key"])
    return n


def measure(videos: list[Path], urls: str, clip: ClipConfig, rounds: int, epochs_per_round: int,
            rgb: dict, resized: dict[int, str] | None = None) -> dict:
    """Clips per second of each loader per round: ``{"wall": {name: [...]}, "cpu": {name: [...]}}``,
    by the wall clock and by this process's CPU time (the one core's time it got: the machine is
    shared, and other processes' turns on this core inflate the wall clock of both loaders).
    rgb: the RGB on-the-fly loaders to measure too (:func:`rgb_loaders`); resized: {I-frame short
    side: shard URLs} of the same videos with I-frames stored at other sizes (rows ``shards_{side}``)."""
    metas = {v: video_meta(v) for v in videos}
    resized = {f"shards_{side}": u for side, u in (resized or {}).items()}
    for u in (urls, *resized.values()):
        reader_epochs(u, clip, 10_000, 1)  # warm-up: imports, page cache
    on_the_fly_round(videos[:2], clip, np.random.default_rng(0))
    for fn in rgb.values():
        on_the_fly_round(videos[:2], clip, np.random.default_rng(0), fn, metas)
    motion_only = dataclasses.replace(clip, num_iframes=0)
    names = ["shards", *resized, "shards_mv", "fly", *rgb]
    rates: dict[str, dict[str, list[float]]] = {kind: {n: [] for n in names} for kind in ("wall", "cpu")}
    for r in range(rounds):
        order = [("shards", lambda: reader_epochs(urls, clip, r * epochs_per_round, epochs_per_round)),
                 *[(name, lambda u=u: reader_epochs(u, clip, r * epochs_per_round, epochs_per_round))
                   for name, u in resized.items()],
                 ("shards_mv", lambda: reader_epochs(urls, motion_only, r * epochs_per_round, epochs_per_round)),
                 ("fly", lambda: on_the_fly_round(videos, clip, np.random.default_rng(r)))]
        order += [(name, lambda fn=fn: on_the_fly_round(videos, clip, np.random.default_rng(r), fn, metas))
                  for name, fn in rgb.items()]
        for name, run in order[r % len(order):] + order[:r % len(order)]:
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            n = run()
            rates["wall"][name].append(n / (time.perf_counter() - t0))
            rates["cpu"][name].append(n / (time.process_time() - c0))
    return rates


# --------------------------------------------------------------------------- memory of a worker


def _memory_kib(pid: int) -> tuple[int, int]:
    """(VmHWM, private memory) of a process in KiB."""
    hwm = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmHWM:"))
    private = sum(int(line.split()[1]) for line in open(f"/proc/{pid}/smaps_rollup")
                  if line.startswith(("Private_Clean:", "Private_Dirty:")))
    return hwm, private


def worker_memory(urls: str, clip: ClipConfig, num_batches: int) -> dict:
    """Peak RSS and private memory of one DataLoader worker (forked) over ``num_batches`` batches,
    read from /proc while the worker is alive; the parent's RSS for reference."""
    pipeline = build_train_pipeline(urls, clip, BATCH, resampled=True, shuffle_buffer=256).with_epoch(num_batches)
    # make_loader's DataLoader, unwrapped: its iterator knows the worker processes
    it = iter(torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=1))
    hwm = private = 0
    for _ in it:
        pid = it._workers[0].pid  # torch's worker process (private attribute; benchmark only)
        hwm, private = _memory_kib(pid)
    parent = _memory_kib(os.getpid())
    return {"worker_hwm_mib": hwm / 1024, "worker_private_mib": private / 1024,
            "parent_rss_hwm_mib": parent[0] / 1024}


# --------------------------------------------------------------------------- report


LOADER_NAMES = {
    "shards": f"shards: train pipeline, num_workers=0, batch {BATCH}",
    "fly": "on the fly: PyAV seek + decode + export_mvs + rasterise + I-frame RGB",
    "decord": "on the fly, RGB (VideoMAE): decord, 16 frames at stride 4 resized to short side 224, crop + flip",
    "torchcodec": "on the fly, RGB: torchcodec, 16 frames at stride 4, short side 224 (torch resize), crop + flip",
    "shards_mv": "shards, motion only (K=0: pretraining, codebook, `--inputs mv`)",
}


def loader_name(name: str, resized: bool) -> str:
    """A row's loader; with other stored I-frame sizes measured, the shard rows name theirs."""
    if name == "shards" and resized:
        return f"{LOADER_NAMES['shards']}, I-frames stored at short side {IFRAME_SIDE}"
    if name.startswith("shards_") and name[7:].isdigit():
        return f"shards, I-frames stored at short side {name[7:]} (same pipeline)"
    return LOADER_NAMES[name]


def speed_rows(r: dict) -> list[str]:
    """The table rows of one data set: the shard reader (then the same videos' shards with I-frames
    stored at other sizes), each on-the-fly loader, the reader without I-frames; each row's ratio is
    the shard reader's speed over that row's (for the reader rows: over the fastest on-the-fly
    loader). The verdict is on CPU time, for the default clips (one I-frame) and shards."""
    cpu = {k: statistics.median(v) for k, v in r["rates"]["cpu"].items()}
    wall = {k: statistics.median(v) for k, v in r["rates"]["wall"].items()}
    baselines = [k for k in cpu if not k.startswith("shards")]
    resized = [k for k in cpu if k.startswith("shards_") and k != "shards_mv"]
    fastest = max(baselines, key=cpu.get)
    fastest_wall = max(baselines, key=wall.get)
    rows = []
    for reader in ("shards", *resized):
        ratio = cpu[reader] / cpu[fastest]
        worst = min(s / max(r["rates"]["cpu"][b][i] for b in baselines)
                    for i, s in enumerate(r["rates"]["cpu"][reader]))
        ok = "met" if ratio >= TARGET_SPEED_RATIO else "NOT met"
        rows.append(f"| {r['label']} | {loader_name(reader, bool(resized))} | {cpu[reader]:,.1f} | "
                    f"{1000 / cpu[reader]:.2f} | **{ratio:.1f}x** over {fastest} (worst round {worst:.1f}x) | "
                    f"{wall[reader]:,.1f} | {wall[reader] / wall[fastest_wall]:.1f}x | "
                    f"{f'>= {TARGET_SPEED_RATIO:.0f}x: {ok}' if reader == 'shards' else '(no target)'} |")
    for b in baselines:
        rows.append(f"| {r['label']} | {LOADER_NAMES[b]} | {cpu[b]:,.1f} | {1000 / cpu[b]:.2f} | "
                    f"{cpu['shards'] / cpu[b]:.1f}x | {wall[b]:,.1f} | {wall['shards'] / wall[b]:.1f}x | |")
    rows.append(f"| {r['label']} | {LOADER_NAMES['shards_mv']} | {cpu['shards_mv']:,.1f} | "
                f"{1000 / cpu['shards_mv']:.2f} | {cpu['shards_mv'] / cpu[fastest]:.1f}x over {fastest} | "
                f"{wall['shards_mv']:,.1f} | {wall['shards_mv'] / wall[fastest_wall]:.1f}x | (no target) |")
    return rows


def report(results: list[dict], seconds: float, memory: dict | None, cpu: int,
           args: argparse.Namespace, missing: dict) -> list[str]:
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    n = args.num_videos
    lines = [
        "## Loader speed: shards vs on-the-fly decoding (one core)", "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {git_state()}; machine: nproc "
        f"{os.cpu_count()} ({cpu_model()}), pinned to CPU {cpu}; Python {platform.python_version()}, "
        f"PyAV {av.__version__}, torch {torch.__version__}",
        f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip(),
        f"- data: {n} pans 360x640 (make_pan_clip), {seconds:g} s at 25 fps, bf=2, crf 18; shards by run_job "
        f"(4 videos each, format version {FORMAT_VERSION}); clip T=16, K=1 I-frame, 224 px, 14x14 cells, "
        f"random crop + flip",
        f"- {args.rounds} interleaved rounds per dataset (reader: {args.epochs_per_round} epochs of {n} clips; "
        f"on the fly: {n} clips); load average (1, 5, 15 min) at end {loadavg()} on {os.cpu_count()} cores", "",
        "| GOP | loader | clips/s per core, CPU time (median) | CPU ms per clip | shard reader's speed over it | "
        "clips/s, wall clock (median) | wall ratio | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines += speed_rows(r)
    versions = {name: package_version(name) for name in ("decord", "torchcodec")}
    lines += [""] + [f"- {name} {versions[name] or '(not installed)'}: "
                     f"{'measured' if name not in missing else 'not measured: ' + missing[name]}"
                     for name in ("decord", "torchcodec")]
    lines += ["", "| GOP | bytes | total | KB per second of video | ratio to the mp4s | target |",
              "|---|---|---:|---:|---:|---|"]
    for r in results:
        mp4 = sum(v.stat().st_size for v in r["videos"])
        tar = sum(t.stat().st_size for t in r["shards"].glob("*.tar"))
        total_s = seconds * len(r["videos"])
        lines += [f"| {r['label']} | source mp4s | {mp4 / 1e6:.2f} MB | {mp4 / total_s / 1e3:.1f} | 1.00 | |",
                  f"| {r['label']} | shards (.tar) | {tar / 1e6:.2f} MB | {tar / total_s / 1e3:.1f} | "
                  f"**{tar / mp4:.2f}** | <= {TARGET_SIZE_RATIO}x: {verdict(tar / mp4 <= TARGET_SIZE_RATIO)} |"]
        for side, folder in r["resized"].items():
            tar = sum(t.stat().st_size for t in folder.glob("*.tar"))
            lines.append(f"| {r['label']} | shards (.tar), I-frames at short side {side} | {tar / 1e6:.2f} MB | "
                         f"{tar / total_s / 1e3:.1f} | {tar / mp4:.2f} | |")
    lines.append("")
    if memory:
        lines += [
            f"| memory of one loader worker (train pipeline, resampled, shuffle buffer 256, "
            f"{args.worker_batches} batches of {BATCH}, {results[0]['label']}) | MiB |",
            "|---|---:|",
            f"| DataLoader worker, peak RSS (VmHWM; includes pages shared with the parent by fork) | "
            f"{memory['worker_hwm_mib']:.0f} |",
            f"| DataLoader worker, private memory at the end (Private_Clean + Private_Dirty) | "
            f"{memory['worker_private_mib']:.0f} |",
            f"| parent (benchmark process) peak RSS, for reference | {memory['parent_rss_hwm_mib']:.0f} |", "",
        ]
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (default 5)")
    p.add_argument("--epochs-per-round", type=int, default=16,
                   help="reader epochs per round (default 16: as long as an on-the-fly round)")
    p.add_argument("--num-videos", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0, help="length of each generated clip (default 8)")
    p.add_argument("--worker-batches", type=int, default=100, help="batches for the worker memory run")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "mvmae-loader-bench")
    p.add_argument("--cpu", type=int, help="CPU to pin to (default: the last one allowed)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--long-gop", type=int, default=250,
                   help="also measure the clips re-encoded with this GOP (x264's default keyint; 0: skip)")
    p.add_argument("--iframe-sizes", type=lambda v: sorted({int(x) for x in v.split(",")}, reverse=True),
                   default=[IFRAME_SIDE], help=f"I-frame short sides to store and read, e.g. 256,224: sizes "
                   f"other than {IFRAME_SIDE} (the default shards) get their own shards and rows")
    p.add_argument("--out-md", type=Path, help="also write the report as markdown to this file")
    return p.parse_args(argv)


def shard_urls(shards: Path) -> str:
    return f"{shards}/train-{{000000..{len(list(shards.glob('train-*.tar'))) - 1:06d}}}.tar"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    videos = render_videos(args.cache_dir, args.num_videos, args.seconds)
    shards = extract_shards(videos, videos[0].parent)
    datasets = [("24", videos, shards)]
    if args.long_gop:
        datasets.append((f"{args.long_gop} (re-encoded)", *long_gop_dataset(videos, args.long_gop)))
    # before pinning: extraction uses 2 worker processes
    resized = [{side: extract_shards(vids, vids[0].parent, side) for side in args.iframe_sizes if side != IFRAME_SIDE}
               for _, vids, _ in datasets]
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if args.cpu is None else args.cpu
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    clip = ClipConfig()
    rgb, missing = rgb_loaders(videos[0])
    for name, reason in missing.items():
        print(f"{name}: not measured ({reason})", file=sys.stderr)
    results = []
    for (label, vids, shard_dir), other in zip(datasets, resized):
        rates = measure(vids, shard_urls(shard_dir), clip, args.rounds, args.epochs_per_round, rgb,
                        {side: shard_urls(folder) for side, folder in other.items()})
        results.append({"label": label, "videos": vids, "shards": shard_dir, "rates": rates, "resized": other})
    memory = None if args.skip_memory else worker_memory(shard_urls(shards), clip, args.worker_batches)
    lines = report(results, args.seconds, memory, cpu, args, missing)
    print("\n".join(lines))
    if args.out_md:
        args.out_md.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
