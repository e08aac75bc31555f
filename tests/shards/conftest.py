"""Fixtures of the shard tests: the reader datasets (the job_* datasets are in tests/job_fixtures.py)."""

from __future__ import annotations

import contextlib
import functools
import gc
import http.server
import threading
from pathlib import Path
from typing import Iterator

import pytest

import needs

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
except ImportError:  # ... or as the `tests` package
    from tests import media

@contextlib.contextmanager
def _serve_folder(folder: Path) -> Iterator[str]:
    """``folder`` served over HTTP on the loopback interface while the block runs: its base URL.
    Needs curl (webdataset's http reader): tests/needs.py skips without it, or fails under CI."""
    needs.curl()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def serve_folder():
    """``with serve_folder(folder) as base_url:``: a folder over HTTP on the loopback interface."""
    return _serve_folder


# --- reader_* fixtures: a small dataset of shards for the reader (mvmae.shards.reader) ---------

# (key, label, vx, vy, image): 40 frames 144x192, 25 fps, 2 B-frames, GOP 12 (I-frames at 0, 12,
# 24, 36); one velocity per class. "short" (10 frames, one I-frame) is shorter than a 16-frame clip.
READER_CLIPS = [(f"c{label}_{image}", label, vx, vy, image)
                for label, (vx, vy) in enumerate([(2, 0), (-3, 1), (0, 2)])
                for image in ("astronaut", "coffee", "chelsea")]
READER_SHORT = ("short", 0, 2, 0, "astronaut")


@pytest.fixture(scope="session")
def reader_dataset(tmp_path_factory) -> dict:
    """10 real clips (3 classes + a short one) extracted by ``run_job`` into 4 shards of 3 videos
    (about 5 s to build). ``{"shards": folder, "urls": brace pattern, "tars": [paths],
    "videos": {key: mp4}, "labels": {key: label}, "velocity": {key: (vx, vy)}, "num_frames":
    {key: N}}``. Read-only for tests: copy a shard before damaging it."""
    from mvmae.job.job import JobConfig, run_job

    d = tmp_path_factory.mktemp("reader_dataset")
    videos, labels, velocity, num_frames, lines = {}, {}, {}, {}, []
    for key, label, vx, vy, image in READER_CLIPS + [READER_SHORT]:
        n = 10 if key == "short" else 40
        videos[key] = media.make_pan_clip(d / f"{key}.mp4", vx=vx, vy=vy, num_frames=n, gop=12, image=image)
        labels[key], velocity[key], num_frames[key] = label, (vx, vy), n
        lines.append(f"{key}.mp4 {label}")
    (d / "list.txt").write_text("\n".join(lines) + "\n")
    summary = run_job(JobConfig(input=d / "list.txt", out_dir=d / "shards", shard_size=3))
    assert summary.num_ok == len(videos) and summary.num_shards == 4, summary
    # Free PyAV objects now: a DataLoader worker forked while they are garbage would free them
    # itself and hang joining FFmpeg threads it does not have (see job.py's spawn pool).
    gc.collect()
    tars = sorted((d / "shards").glob("train-*.tar"))
    return {"shards": d / "shards", "urls": str(d / "shards" / "train-{000000..000003}.tar"),
            "tars": tars, "videos": videos, "labels": labels, "velocity": velocity,
            "num_frames": num_frames}
