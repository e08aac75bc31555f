"""Helpers of the shard fault tests: a real dataset of shards, a loopback HTTP server that fails
on purpose, ways to damage a shard, and a guard that fails a test instead of letting it hang.

Imported by ``test_shard_server.py`` and ``test_corrupt_shards.py`` (no conftest: the dataset is
built once per session through the cache below, whichever module asks first).
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import socket
import struct
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
    import needs
except ImportError:  # ... or as the `tests` package
    from tests import media, needs

# 12 real clips (24 frames 144x192, 2 B-frames, GOP 12: I-frames at 0 and 12), 4 classes by
# direction of the pan, extracted by `mvmae extract run` into 4 shards of 3 samples.
CLASSES = {"right": (2, 0), "left": (-2, 0), "down": (0, 2), "up": (0, -2)}
IMAGES = ("astronaut", "coffee", "chelsea")
SHARD_SIZE, NUM_FRAMES = 3, 24
NUM_SHARDS = len(CLASSES) * len(IMAGES) // SHARD_SIZE

_DATASETS: dict[Path, dict] = {}  # session base temp folder -> dataset (one build per session)


def fault_dataset(tmp_path_factory) -> dict:
    """The session's dataset, built on first use (about 5 s): ``{"dir": shard folder, "tars":
    [paths], "keys": {shard name: [keys in tar order]}, "classes": classes.json}``. Read-only:
    damage copies (:func:`copy_shards`)."""
    base = tmp_path_factory.getbasetemp()
    if base not in _DATASETS:
        _DATASETS[base] = _build_dataset(tmp_path_factory.mktemp("fault_dataset"))
    return _DATASETS[base]


def _build_dataset(root: Path) -> dict:
    from click.testing import CliRunner

    from mvmae.cli import main

    lines = []
    for name, (vx, vy) in CLASSES.items():
        for image in IMAGES:
            media.make_pan_clip(root / f"{name}_{image}.mp4", vx=vx, vy=vy, num_frames=NUM_FRAMES, gop=12,
                                image=image)
            lines.append(f"{name}_{image}.mp4 {name}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    out = root / "shards"
    result = CliRunner().invoke(main, ["extract", "run", str(root / "list.txt"), str(out),
                                       "--shard-size", str(SHARD_SIZE), "--iframe-size", "96"])
    assert result.exit_code == 0, result.output
    # No PyAV garbage left for forked DataLoader workers to free (see tests/shards/conftest.py).
    gc.collect()
    tars = sorted(out.glob("train-*.tar"))
    assert len(tars) == NUM_SHARDS
    return {"dir": out, "tars": tars, "keys": {t.name: tar_keys(t) for t in tars},
            "classes": out / "classes.json"}


def tar_keys(tar: Path) -> list[str]:
    """Sample keys of an intact shard in tar order, read with tarfile alone."""
    with tarfile.open(tar) as t:
        return list(dict.fromkeys(m.name.split(".", 1)[0] for m in t.getmembers()))


def all_keys(dataset: dict) -> list[str]:
    return [k for keys in dataset["keys"].values() for k in keys]


def copy_shards(dataset: dict, dest: Path) -> list[Path]:
    """A private copy of the shards and their stats files (to damage)."""
    dest.mkdir(parents=True, exist_ok=True)
    for stats in dataset["dir"].glob("*.json"):
        shutil.copy(stats, dest / stats.name)
    return [Path(shutil.copy(t, dest / t.name)) for t in dataset["tars"]]


def brace(folder: Path | str) -> str:
    return f"{folder}/train-{{000000..{NUM_SHARDS - 1:06d}}}.tar"


# --------------------------------------------------------------------------- damage


def member_offsets(tar: Path) -> dict[str, tuple[int, int, int]]:
    """Member name -> (offset of its header, offset of its data, data size) in an intact tar."""
    with tarfile.open(tar) as t:
        return {m.name: (m.offset, m.offset_data, m.size) for m in t.getmembers()}


def flip_bytes(tar: Path, offset: int, num_bytes: int = 1) -> None:
    """Invert ``num_bytes`` bytes from ``offset``, in place."""
    data = bytearray(tar.read_bytes())
    for i in range(offset, offset + num_bytes):
        data[i] ^= 0xFF
    tar.write_bytes(bytes(data))


def flip_member_data(tar: Path, member: str) -> None:
    """One byte in the middle of a member's data inverted."""
    _, data, size = member_offsets(tar)[member]
    flip_bytes(tar, data + size // 2)


def flip_member_header(tar: Path, member: str) -> None:
    """One byte of a member's name field in its tar header inverted (its checksum fails)."""
    header, _, _ = member_offsets(tar)[member]
    flip_bytes(tar, header + 10)


def cut(tar: Path, size: int) -> None:
    tar.write_bytes(tar.read_bytes()[:size])


def zero_block(tar: Path, offset: int) -> None:
    """512 zero bytes written over the tar from ``offset``."""
    data = bytearray(tar.read_bytes())
    data[offset:offset + 512] = bytes(512)
    tar.write_bytes(bytes(data))


def drop_member(tar: Path, member: str) -> None:
    """The tar rewritten without one member (as a tool that lost it would write it)."""
    rewritten = tar.with_name(f".{tar.name}.rewrite")
    with tarfile.open(tar) as src, tarfile.open(rewritten, "w", format=tarfile.USTAR_FORMAT) as dst:
        for info in src.getmembers():
            if info.name != member:
                dst.addfile(info, src.extractfile(info))
    rewritten.replace(tar)


# --------------------------------------------------------------------------- the faulty server

# What the server does with one request for a shard:
#   ok           the file, with Content-Length
#   500          HTTP 500
#   drop         headers and the first half of the body, then the connection is reset (RST)
#   short        Content-Length of the whole file, half the body, then a clean close
#   close_early  no Content-Length (the body ends when the connection closes), half the body
#   stall        headers and half the body, then nothing until the server stops
#   slow         the whole file in SLOW_PIECES pieces, SLOW_PAUSE_S apart (slow but alive)
MODES = ("ok", "500", "drop", "short", "close_early", "stall", "slow")
SLOW_PIECES, SLOW_PAUSE_S = 8, 0.35


@dataclass
class Request:
    name: str
    mode: str
    time: float  # time.monotonic() when it arrived


@dataclass
class FaultServer:
    """A folder served on 127.0.0.1 with a fault plan per file name: ``plan[name]`` is the list
    of modes of its successive requests, the last one repeating (absent: always ``ok``)."""

    base: str
    plan: dict[str, list[str]]
    requests: list[Request] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def count(self, name: str) -> int:
        return sum(r.name == name for r in self.requests)

    def times(self, name: str) -> list[float]:
        return [r.time for r in self.requests if r.name == name]


def _handler(folder: Path, server: FaultServer, release: threading.Event, lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            path = folder / name
            with lock:
                asked = server.count(name)
                modes = server.plan.get(name, ["ok"])
                mode = modes[min(asked, len(modes) - 1)]
                server.requests.append(Request(name, mode, time.monotonic()))
            if not path.is_file():
                self.send_error(404)
                return
            if mode == "500":
                self.send_error(500, "server on fire")
                return
            data = path.read_bytes()
            self.send_response(200)
            if mode != "close_early":
                self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            getattr(self, f"_send_{mode}")(data)

        def _send_ok(self, data: bytes) -> None:
            self.wfile.write(data)

        def _send_slow(self, data: bytes) -> None:
            step = -(-len(data) // SLOW_PIECES)
            for i in range(0, len(data), step):
                self.wfile.write(data[i:i + step])
                self.wfile.flush()
                time.sleep(SLOW_PAUSE_S)

        def _send_short(self, data: bytes) -> None:
            self.wfile.write(data[:len(data) // 2])

        _send_close_early = _send_short

        def _send_drop(self, data: bytes) -> None:
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            time.sleep(0.3)  # let the client take the half in: a reset may discard data in flight
            # SO_LINGER 0: close() resets the connection instead of finishing it
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

        def _send_stall(self, data: bytes) -> None:
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            release.wait(120)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must not hold up server_close()

    def handle_error(self, request, client_address) -> None:
        """The client went away mid-response (the reader timed out and killed curl): expected."""


@contextlib.contextmanager
def fault_server(folder: Path, plan: dict[str, list[str]] | None = None) -> Iterator[FaultServer]:
    """Serve ``folder`` on a free loopback port in a thread, with the fault ``plan``."""
    release, lock = threading.Event(), threading.Lock()
    state = FaultServer("", plan or {})
    httpd = _QuietServer(("127.0.0.1", 0), _handler(folder, state, release, lock))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    # Polled every 20 ms (not socketserver's 0.5 s): shutdown() waits for the next poll, and
    # the suite starts dozens of these servers.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def require_curl() -> None:
    needs.curl()


# --------------------------------------------------------------------------- hang guard


def bounded(func: Callable, limit_s: float):
    """``func()`` in a thread; its result, or its exception re-raised; the test fails (instead of
    hanging) if it has not returned after ``limit_s`` seconds."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = func()
        except BaseException as exc:  # handed to the test's thread, re-raised there
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        pytest.fail(f"still running after {limit_s:g} s: the read hangs")
    if "error" in box:
        raise box["error"]
    return box["result"]


def keys_within(tar: Path, num_bytes: int) -> list[str]:
    """Keys of the samples whose members all lie in the first ``num_bytes`` bytes of an intact
    tar: what a reader delivers of a stream cut there."""
    ends: dict[str, int] = {}
    for name, (_, data, size) in member_offsets(tar).items():
        key = name.split(".", 1)[0]
        ends[key] = max(ends.get(key, 0), data + size)
    return [k for k in tar_keys(tar) if ends[k] <= num_bytes]
