"""``mvmae predict -`` on a live 480p stream, ONE core: latency when fed at real-time rate, and
throughput as a multiple of real time when fed at once.

    python benchmarks/stream_latency.py [--seconds 20] [--models micro,small] [--cache-dir DIR]

The stream: a libx264 pan in MPEG-TS (``tests/live_media.make_ts_stream``: 480x854, 25 fps, 2
B-frames, an IDR every 2 s, content moving (1, -0.5) px per frame) of ``--seconds`` seconds, cached in ``--cache-dir``. Classifiers of
random weights (``predict_speed.make_checkpoint``; speed does not depend on them): ``micro`` (the
CPU-sized one of the benchmarks: micro Motion encoder, motion only, 2 segments of 16 frames at 8 x 8
cells: 1.28 s windows) and ``small`` (the Motion encoder ``small`` alone at the command's defaults:
8 segments of 16 frames at 14 x 14 cells, 5.12 s windows). Each runs ``python -m mvmae predict
--ckpt C -`` as a subprocess pinned to one CPU with one torch thread, started and left to load
(imports, checkpoint) until it blocks reading stdin, then fed:

- **real time**: the bytes of each picture are written when the wall clock reaches its decode
  timestamp (the first at once), as a live encoder sends them. A window's latency is the time from
  the moment the clock reaches its end (its display timestamp) to its line on stdout.
- **at once**: the whole stream is written as fast as the process reads it. Throughput is the
  stream time between the first and the last window's end over the wall time between their lines
  (the start-up and the first window left out), as a multiple of real time.

Baseline, in the same run: ``extract_video`` of the same stream as a file, pinned to one core in
this process (the extraction alone, x real time). Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cpu_model, git_state, loadavg  # noqa: E402
from predict_speed import MODELS, make_checkpoint  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
import live_media  # noqa: E402

from mvmae.extract.video import extract_video  # noqa: E402

FPS, SIZE, GOP = 25, (480, 854), 50
STREAM_MODELS = {"micro": "micro, motion only (2 x 16 frames, 8 x 8 cells)",
                 "small": "small, motion only (defaults otherwise)"}


def make_stream(cache_dir: Path, seconds: float) -> Path:
    path = cache_dir / f"pan_{SIZE[0]}p_{round(seconds * FPS)}.ts"
    if not path.exists():
        # 1 px per frame: a 20 s pan stays inside the photograph
        path.write_bytes(live_media.make_ts_stream(num_frames=round(seconds * FPS), size=SIZE, fps=FPS, gop=GOP,
                                                   vx=1.0, vy=-0.5))
    return path


def schedule(ts: bytes) -> tuple[list[tuple[int, float]], float]:
    """([(byte offset where a picture's PES starts, its decode time s from the first)], first pts
    minus first dts s): the feed writes each picture's bytes at its decode time."""
    with av.open(io.BytesIO(ts), format="mpegts") as container:
        stream = container.streams.video[0]
        packets = [(p.pos, p.dts, p.pts) for p in container.demux(stream) if p.size]
        tb = float(stream.time_base)
    dts0 = packets[0][1]
    return [(pos, (dts - dts0) * tb) for pos, dts, _ in packets], (packets[0][2] - dts0) * tb


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_until_idle(proc: subprocess.Popen, quiet_s: float = 1.0, timeout_s: float = 300) -> None:
    """Until the process has used no CPU for ``quiet_s`` (blocked reading stdin: loaded)."""
    end, last, since = time.monotonic() + timeout_s, -1, time.monotonic()
    while time.monotonic() < end and proc.poll() is None:
        ticks = _cpu_ticks(proc.pid)
        if ticks != last:
            last, since = ticks, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)
    raise RuntimeError("the predict process did not become idle")


def run_predict(ckpt: Path, ts: bytes, cpu: int, paced: bool) -> tuple[list[tuple[dict, float]], float]:
    """([(window line, perf_counter when read)], perf_counter when the first byte was written)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mvmae", "predict", "--ckpt", str(ckpt), "--top-k", "1",
                             "--device", "cpu", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    lines: list[tuple[dict, float]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((json.loads(line), time.perf_counter()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until_idle(proc)
        pictures, _ = schedule(ts)
        t0 = time.perf_counter()
        if paced:
            ends = [pos for pos, _ in pictures[1:]] + [len(ts)]
            written = 0
            for (_, at_s), end in zip(pictures, ends):
                delay = t0 + at_s - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                proc.stdin.write(ts[written:end])
                proc.stdin.flush()
                written = end
        else:
            proc.stdin.write(ts)
        proc.stdin.close()
        proc.wait(timeout=3600)
        reader.join()
    finally:
        proc.kill()
    return lines, t0


def latencies(lines: list[tuple[dict, float]], t0: float, offset_s: float) -> list[float]:
    """Seconds from each whole window's end, on the feed's clock, to its line."""
    return [at - (t0 + w["end"] + offset_s) for w, at in lines if not w.get("partial")]


def throughput(lines: list[tuple[dict, float]]) -> float:
    """Stream seconds per wall second from the first window's line to the last whole one's."""
    whole = [(w, at) for w, at in lines if not w.get("partial")]
    (first, t1), (last, t2) = whole[0], whole[-1]
    return (last["end"] - first["end"]) / (t2 - t1) if t2 > t1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--models", default="micro,small", help="comma-separated: micro, small")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "mvmae-bench")
    args = parser.parse_args(argv)
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    path = make_stream(args.cache_dir, args.seconds)
    ts = path.read_bytes()
    _, offset_s = schedule(ts)
    print(f"# predict on a live stream, 1 core: {cpu_model()}; {git_state()}; load {loadavg()}")
    print(f"stream: {SIZE[1]}x{SIZE[0]} MPEG-TS, {args.seconds:g} s at {FPS} fps, GOP {GOP}, "
          f"{len(ts) * 8 / args.seconds / 1e6:.2f} Mbit/s; CPU {cpu}\n")
    extract_video(path)  # warm-up: imports, the page cache
    t = time.perf_counter()
    extract_video(path)
    print(f"baseline: extract_video of the stream as a file: {args.seconds / (time.perf_counter() - t):.1f}x real time\n")
    print("| model | window s | windows | latency median s | latency max s | first window s "
          "| x real time (fed at once) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            ckpt = make_checkpoint(Path(tmp), key, MODELS[STREAM_MODELS[key]])
            paced, t0 = run_predict(ckpt, ts, cpu, paced=True)
            late = latencies(paced, t0, offset_s)
            fast, _ = run_predict(ckpt, ts, cpu, paced=False)
            errors = sum("error" in w for w, _ in paced + fast)
            window = paced[0][0]["end"] - paced[0][0]["start"]
            print(f"| {key} | {window:.2f} | {len(paced)} | {statistics.median(late):.2f} | {max(late):.2f} "
                  f"| {late[0]:.2f} | {throughput(fast):.1f} |" + (f" {errors} error lines!" if errors else ""),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
