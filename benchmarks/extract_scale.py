"""Extraction at scale: videos per second of the batch job's engines over one list, and shard
upload to a loopback S3 server against a copy into a local folder.

    python benchmarks/extract_scale.py [--num-videos N] [--frames F] [--size HxW] [--rounds R]

Dataset: ``--num-videos`` (16) libx264 pans made with ``tests.media.make_pan_clip`` (``--size``
360x640, ``--frames`` 100 at 25 fps, 2 B-frames, 3 references, GOP 24), shards of 4 videos,
default extraction options. Measured in one run, in turn, ``--rounds`` times (the median kept):

* **local, 1 worker** (the baseline), **local, 2 workers**: ``run_job`` with the supervised pool;
* **ray, 2 CPUs**: ``--engine ray`` on a local Ray instance started once before the rounds (its
  start-up, a few seconds, reported apart: a cluster is started once for many jobs).

Every run writes into a fresh folder; the shards of every run are compared byte for byte with the
baseline's. Then the baseline's shards are uploaded to moto's S3 server on 127.0.0.1 (``Store``:
one PUT per object, tar then marker) and, for comparison, copied into a fresh local folder
(``shutil.copyfile`` + fsync). Finally a projection, stated as one, of UAV-Human's extraction
(67,428 clips) on N machines of this kind from the measured per-video cost of the best engine:
it assumes clips costing what this benchmark's do, which UAV-Human's (1920x1080, longer) do not.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.media (clip generator) lives in the repository, not the package

from mvmae.job.job import JobConfig, run_job  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py
from common import cpu_model, git_state, loadavg  # noqa: E402

UAV_HUMAN_CLIPS = 67_428


def make_list(folder: Path, num_videos: int, frames: int, size: tuple[int, int]) -> Path:
    from tests import media

    lines = []
    for i in range(num_videos):
        path = folder / f"pan_{i:03d}.mp4"
        media.make_pan_clip(path, vx=1 + i % 4, vy=(i % 3) - 1, num_frames=frames, size=size,
                            image=("astronaut", "coffee", "chelsea")[i % 3])
        lines.append(f"{path.name} c{i % 4}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def timed_job(listing: Path, out: Path, engine: str, workers: int) -> float:
    t0 = time.perf_counter()
    summary = run_job(JobConfig(input=listing, out_dir=out, shard_size=4, workers=workers, engine=engine))
    seconds = time.perf_counter() - t0
    assert not summary.shards_failed, summary
    return seconds


def same_shards(a: Path, b: Path) -> bool:
    tars = sorted(p.name for p in a.glob("*.tar"))
    return tars == sorted(p.name for p in b.glob("*.tar")) and all(
        (a / t).read_bytes() == (b / t).read_bytes() for t in tars)


def upload_rates(shards: Path, work: Path) -> tuple[float, float, int, float]:
    """(MB/s to the loopback S3 server, MB/s copied into a local folder, bytes, ms per object to S3)."""
    from moto.server import ThreadedMotoServer

    from mvmae.job.store import Store

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    files = sorted(shards.glob("train-0*.tar")) + sorted(shards.glob("train-0*.json"))
    num_bytes = sum(f.stat().st_size for f in files)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        import boto3

        boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench")
        store = Store("s3://bench/shards")
        t0 = time.perf_counter()
        for f in files:
            store.upload(f, f.name)
        s3_s = time.perf_counter() - t0
    finally:
        server.stop()
    dest = work / "copy"
    dest.mkdir()
    t0 = time.perf_counter()
    for f in files:
        shutil.copyfile(f, dest / f.name)
        with open(dest / f.name, "rb+") as fh:
            os.fsync(fh.fileno())
    copy_s = time.perf_counter() - t0
    return num_bytes / s3_s / 1e6, num_bytes / copy_s / 1e6, num_bytes, 1000 * s3_s / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", default="360x640")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="extract_scale-"))
    listing = make_list(work, args.num_videos, args.frames, size)

    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray_start_s = time.perf_counter() - t0
    rows = {"local, 1 worker": ("local", 1), "local, 2 workers": ("local", 2), "ray, 2 CPUs": ("ray", 2)}
    times: dict[str, list[float]] = {name: [] for name in rows}
    identical = {name: True for name in rows}
    for r in range(args.rounds):
        for name, (engine, workers) in rows.items():
            out = work / f"out-{r}-{engine}{workers}"
            times[name].append(timed_job(listing, out, engine, workers))
            identical[name] &= same_shards(work / "out-0-local1", out)
    ray.shutdown()
    s3_mb_s, copy_mb_s, num_bytes, ms_per_object = upload_rates(work / "out-0-local1", work)

    print(f"{args.num_videos} videos ({args.frames} frames {args.size}), shards of 4; {cpu_model()}, "
          f"{os.cpu_count()} CPUs; {git_state()}; load {loadavg()}; median of {args.rounds} rounds")
    print("| engine | videos/s | ratio to local, 1 worker | shards identical to the baseline |")
    print("|---|---|---|---|")
    base = statistics.median(times["local, 1 worker"])
    for name in rows:
        median = statistics.median(times[name])
        print(f"| {name} | {args.num_videos / median:.2f} | {base / median:.2f}x | {identical[name]} |")
    print(f"\nRay local instance start-up: {ray_start_s:.1f} s (not in the rates)")
    print(f"Upload of {num_bytes / 1e6:.1f} MB of shards: loopback S3 {s3_mb_s:.0f} MB/s, "
          f"local folder copy {copy_mb_s:.0f} MB/s ({s3_mb_s / copy_mb_s:.2f}x); {ms_per_object:.0f} ms per "
          f"object to S3")
    best = min(statistics.median(t) for t in times.values()) / args.num_videos  # s per video, this machine
    for machines in (1, 8, 64):
        hours = UAV_HUMAN_CLIPS * best / machines / 3600
        print(f"Projection (not a measurement): UAV-Human's {UAV_HUMAN_CLIPS} clips on {machines} machine(s) "
              f"like this one at {best:.2f} s per clip: {hours:.1f} h")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
