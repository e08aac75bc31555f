"""Facts about single files for ``mvmae check`` (:mod:`mvmae.shards.check`): stat, content
fingerprint and bitstream probe, in parallel processes, and the problems a probe shows."""

from __future__ import annotations

import functools
import hashlib
import math
import os
import stat
from collections import Counter
from typing import TYPE_CHECKING, Callable

from mvmae.extract.errors import VideoError
from mvmae.extract.probe import probe_video
from mvmae.extract.video import segment_frames
from mvmae.job.workers import Lost, Supervisor, Work

if TYPE_CHECKING:
    from mvmae.shards.check import CheckConfig

_VFR_RATIO = 1.1  # max / min packet interval above which the frame rate counts as variable
_START_TRIES = 2  # workers lost before probing a batch's first file: then its files are unreadable


def inspect_file(path: str, hash_bytes: int) -> dict:
    """Facts about one file, without decoding (runs in worker processes).

    ``{"size_bytes", "content_hash" ("<size>:<sha1>" of the first and last ``hash_bytes``; None
    when unreadable or empty), "resolved": the path with links resolved, "error": [code, reason]
    or None, "stream": ProbeReport dict or None}``. The probe says why a file cannot be used
    (missing, unreadable, empty, not a video, ...).
    """
    facts = {"size_bytes": None, "content_hash": None, "resolved": os.path.realpath(path),
             "error": None, "stream": None}
    try:
        report = probe_video(path).to_dict()
    except VideoError as exc:
        facts["error"] = [exc.code, exc.reason]
    else:
        report.pop("path")
        facts["stream"] = report
    try:
        info = os.stat(path)
    except OSError:  # the probe has said why
        return facts
    if stat.S_ISREG(info.st_mode):
        facts["size_bytes"] = info.st_size
        try:
            if info.st_size:
                facts["content_hash"] = _fingerprint(path, info.st_size, hash_bytes)
        except OSError as exc:  # an I/O error the probe did not run into
            facts["error"] = facts["error"] or ["unreadable", exc.strerror or str(exc)]
    return facts


def _fingerprint(path: str, size: int, num_bytes: int) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        digest.update(fh.read(num_bytes))
        if size > num_bytes:
            fh.seek(max(num_bytes, size - num_bytes))
            digest.update(fh.read(num_bytes))
    return f"{size}:{digest.hexdigest()}"


def inspect_all(paths: list[str], config: CheckConfig,
                progress: Callable[[int, int], None] | None) -> list[dict]:
    """:func:`inspect_file` of every path, in order, over ``config.workers`` processes.

    With ``workers`` 0, files are probed in this process (no time limit, and nothing isolates a
    crash). Otherwise batches of files go to supervised processes
    (:class:`mvmae.job.workers.Supervisor`): a worker that dies on a file (an FFmpeg crash, the
    OOM killer) or probes it for longer than ``config.timeout`` costs that file only, recorded
    ``unreadable`` with the reason or ``timeout``; the rest of its batch goes to another worker.
    """
    results: list[dict] = [{}] * len(paths)
    num_done = 0

    def store(i: int, facts: dict) -> None:
        nonlocal num_done
        results[i] = facts
        num_done += 1
        if progress:
            progress(num_done, len(paths))

    if config.workers == 0 or not paths:
        for i, path in enumerate(paths):
            store(i, inspect_file(path, config.hash_bytes))
    else:
        _Probes(paths, config, store).run()
    return results


class _Probes(Work):
    """``mvmae check``'s rules for its supervised probing processes (see :func:`inspect_all`)."""

    def __init__(self, paths: list[str], config: CheckConfig, store: Callable[[int, dict], None]) -> None:
        self.paths, self.config, self._store = paths, config, store
        self.stored: set[int] = set()
        self.start_losses: Counter = Counter()  # first file of a batch -> workers lost starting on it
        workers = min(config.workers, len(paths))
        self.chunk = max(1, min(32, len(paths) // (workers * 8)))
        self.supervisor = Supervisor(functools.partial(_probe_batch, config.hash_bytes), self, workers,
                                     config.timeout, ("file",))

    def run(self) -> None:
        for k in range(0, len(self.paths), self.chunk):
            self.supervisor.submit(tuple(range(k, min(k + self.chunk, len(self.paths)))))
        self.supervisor.run()

    def payload(self, batch: tuple[int, ...]) -> list[str]:
        return [self.paths[i] for i in batch]

    def on_message(self, batch: tuple[int, ...], kind: str, value) -> None:
        if kind != "facts":
            super().on_message(batch, kind, value)
        k, facts = value
        self.store(batch[k], facts)

    def on_error(self, batch: tuple[int, ...], phase: str, index: int, message: str) -> None:
        raise RuntimeError(f"{self.paths[batch[index]]}: probing it raised {message}")

    def on_lost(self, batch: tuple[int, ...], lost: Lost) -> None:
        left = [i for i in batch if i not in self.stored]
        if lost.phase == "file":
            i = batch[lost.index]
            if i in left:  # (not when it finished just as it was killed)
                left.remove(i)
                self.store(i, _failed_facts(self.paths[i], *self._blame(lost)))
        elif left:
            self.start_losses[left[0]] += 1
            if self.start_losses[left[0]] >= _START_TRIES:
                why = (f"the probing process died {_START_TRIES} times before probing it "
                       f"(last: {lost.cause})")
                for i in left:
                    self.store(i, _failed_facts(self.paths[i], "unreadable", why))
                return
        if left:
            self.supervisor.submit(tuple(left), front=True)

    def _blame(self, lost: Lost) -> tuple[str, str]:
        if lost.timed_out:
            return "timeout", f"still probing after {self.config.timeout:g} s (--timeout): its process was killed"
        return "unreadable", f"the probing process died on this file ({lost.cause}: an FFmpeg crash, or out of memory)"

    def store(self, i: int, facts: dict) -> None:
        self.stored.add(i)
        self._store(i, facts)


def _probe_batch(hash_bytes: int, paths: list[str], send: Callable) -> None:
    """In a worker: the facts of each file, sent as soon as it is probed."""
    for k, path in enumerate(paths):
        send("phase", ("file", k))
        send("facts", (k, inspect_file(path, hash_bytes)))


def _failed_facts(path: str, code: str, reason: str) -> dict:
    return {"size_bytes": None, "content_hash": None, "resolved": os.path.realpath(path),
            "error": [code, reason], "stream": None}


def stream_problems(stream: dict, config: CheckConfig) -> list[tuple[str, str]]:
    """(code, message) of what the probe of a readable H.264 video shows."""
    found = []
    n, need = stream["num_frames"], config.required_frames
    if n < need:
        span = (f"--min-frames {need}" if config.min_frames
                else f"a clip of {config.clip_frames} frames at stride {config.stride}")
        found.append(("too_short", f"{n} frame{'s' * (n != 1)}, {span} needs {need}"))
    declared = stream["num_frames_declared"]
    if declared and declared != n:
        found.append(("frames_declared_mismatch", f"the container declares {declared} frames, the "
                                                  f"bitstream holds {n}"))
    if stream["num_unparsed_packets"]:
        found.append(("damaged_packets", f"{stream['num_unparsed_packets']} packets with unreadable headers"))
    if stream["container_error"]:
        found.append(("container_damaged", f"{stream['container_error']}: extract run keeps the "
                                           f"{n} frames before"))
    interval = stream["frame_interval_ms"]
    if interval and interval[1] > _VFR_RATIO * interval[0]:
        found.append(("variable_fps", f"frame intervals {interval[0]:g} to {interval[1]:g} ms"))
    if n and stream["num_p"] + stream["num_b"] == 0:
        found.append(("all_intra", f"all {n} frames are I-frames: no motion vectors"))
    if n and stream["num_p"] + stream["num_b"] and not stream.get("num_i_shown", stream["num_i"]):
        hidden = stream.get("num_hidden", 0)
        why = (f"the edit list hides {hidden} picture{'s' * (hidden != 1)}, the I-frame among them"
               if hidden and stream["num_i"] else "the stream starts on a non-IDR slice")
        found.append(("no_iframe", f"no I-frame is shown ({why}): the first decoded frame is the context frame"))
    if stream.get("rotation"):
        found.append(("rotated", f"display rotation {stream['rotation']} degrees counterclockwise: "
                                 f"coded {stream['width']}x{stream['height']} px, extracted upright"))
    if stream["width"] % 2 or stream["height"] % 2:
        found.append(("odd_size", f"{stream['width']}x{stream['height']} px ({stream['profile']})"))
    segments = _num_segments(stream, config.max_seconds)
    if segments > 1:
        found.append(("long_video", f"{stream['duration_s']:g} s > --max-seconds {config.max_seconds:g}: "
                                    f"extract run makes {segments} samples of it"))
    return found


def _num_segments(stream: dict, max_seconds: float) -> int:
    """Samples ``extract run`` makes of the video (as :func:`mvmae.extract.video.iter_segments`)."""
    max_frames = segment_frames(max_seconds, stream["fps"])
    return max(1, math.ceil(stream["num_frames"] / max_frames)) if max_frames else 1
