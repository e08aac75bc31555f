"""Facts about single files for ``mvmae check`` (:mod:`mvmae.shards.check`): stat, content
fingerprint and bitstream probe, in parallel processes, and the problems a probe shows."""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Callable

from mvmae.extract.errors import VideoError
from mvmae.extract.probe import probe_video

if TYPE_CHECKING:
    from mvmae.shards.check import CheckConfig

_VFR_RATIO = 1.1  # max / min packet interval above which the frame rate counts as variable


def inspect_file(path: str, hash_bytes: int) -> dict:
    """Facts about one file, without decoding (runs in worker processes).

    ``{"size_bytes", "content_hash" ("<size>:<sha1>" of the first and last ``hash_bytes``; None
    when unreadable or empty), "error": [code, reason] or None, "stream": ProbeReport dict or None}``.
    The probe says why a file cannot be used (missing, unreadable, empty, not a video, ...).
    """
    facts = {"size_bytes": None, "content_hash": None, "error": None, "stream": None}
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

    A worker that dies (an FFmpeg crash, the OOM killer) loses no other file: the files of the
    broken pool are probed again one at a time in a fresh single-worker pool, and a file whose
    probe kills that worker too is recorded as ``unreadable``. With one worker, files are probed in
    this process (fastest; nothing isolates a crash).
    """
    results: list[dict] = [{}] * len(paths)
    num_done = 0

    def store(i: int, facts: dict) -> None:
        nonlocal num_done
        results[i] = facts
        num_done += 1
        if progress:
            progress(num_done, len(paths))

    if config.workers == 1 or len(paths) < 2:
        for i, path in enumerate(paths):
            store(i, inspect_file(path, config.hash_bytes))
        return results
    workers = min(config.workers, len(paths))
    chunk = max(1, min(32, len(paths) // (workers * 8)))
    lost = _pool_round(paths, list(range(len(paths))), config.hash_bytes, workers, chunk, store)
    while lost:  # one worker, one file at a time, in order: the first lost file killed it
        lost = _pool_round(paths, lost, config.hash_bytes, 1, 1, store)
        if lost:
            store(lost.pop(0), {"size_bytes": None, "content_hash": None, "stream": None,
                                "error": ["unreadable", "the probing process died on this file "
                                                        "(an FFmpeg crash, or out of memory)"]})
    return results


def _pool_round(paths: list[str], todo: list[int], hash_bytes: int, workers: int, chunk: int,
                store: Callable[[int, dict], None]) -> list[int]:
    """Probe ``paths[i]`` for i in ``todo`` in batches of ``chunk``; the indices a dead worker lost."""
    batches = [todo[k:k + chunk] for k in range(0, len(todo), chunk)]
    lost: list[int] = []
    # spawn, as extract run: a forked child would inherit the parent's PyAV objects and threads
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_inspect_batch, [paths[i] for i in batch], hash_bytes) for batch in batches]
        for batch, future in zip(batches, futures):
            try:
                for i, facts in zip(batch, future.result()):
                    store(i, facts)
            except BrokenProcessPool:
                lost.extend(batch)
    return lost


def _inspect_batch(paths: list[str], hash_bytes: int) -> list[dict]:
    return [inspect_file(path, hash_bytes) for path in paths]


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
    if stream["width"] % 2 or stream["height"] % 2:
        found.append(("odd_size", f"{stream['width']}x{stream['height']} px ({stream['profile']})"))
    segments = _num_segments(stream, config.max_seconds)
    if segments > 1:
        found.append(("long_video", f"{stream['duration_s']:g} s > --max-seconds {config.max_seconds:g}: "
                                    f"extract run makes {segments} samples of it"))
    return found


def _num_segments(stream: dict, max_seconds: float) -> int:
    """Samples ``extract run`` makes of the video (as :func:`mvmae.extract.video.iter_segments`)."""
    if not max_seconds:
        return 1
    max_frames = max(1, math.ceil(max_seconds * (stream["fps"] or 30.0)))
    return max(1, math.ceil(stream["num_frames"] / max_frames))
