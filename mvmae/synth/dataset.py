"""``make_dataset``: the clips, the split lists and the unlabelled pool of a synthetic set.

Layout under ``out_dir`` (list lines are ``<path> <class name>``, paths relative to the list):

- ``videos/<class>/<class>_<i>.mp4``: the labelled clips; ``train.txt``, ``val.txt`` and, when
  ``test_ratio`` > 0, ``test.txt``; ``classes.txt`` (one name a line, in label order).
- ``unlabelled/pool_<j>.mp4`` and ``unlabelled.txt`` when ``num_unlabelled`` > 0: a pool drawn
  from the same classes, balanced, in a shuffled order. ``mvmae extract run`` needs a label on
  every line, so the list carries each clip's TRUE class name: pretraining ignores labels, and
  diagnostics (kNN on the pool) may use them; the file names do not give the class away.
- ``synth.json``: the resolved :class:`SynthConfig`.

Deterministic for a seed. ``basic`` draws its labelled clips from one stream in order (as it
always has); ``trajectories`` gives each clip its own stream keyed by (seed, class, index), so a
clip does not depend on how many others are made nor on the number of worker processes. The pool
draws from streams of its own (``[seed, 1, block]``, ``[seed, 2, j]``): the labelled clips are the
same whatever ``num_unlabelled`` is, and a larger pool starts with the clips of a smaller one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from mvmae.files import WriteError, atomic_open, remove_quietly, temporary_path
from mvmae.synth.config import PRESETS, SynthConfig
from mvmae.synth.encode import encode_h264, x264_options
from mvmae.synth.render import render_clip

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def split_counts(cfg: SynthConfig) -> tuple[int, int]:
    """(num_val, num_test) clips per class: each ratio rounded, at least one when it is > 0, and
    at least one clip left for train."""
    n = cfg.clips_per_class
    num_val = round(n * cfg.val_ratio)
    if cfg.val_ratio > 0 and n > 1:
        num_val = min(max(num_val, 1), n - 1)  # at least one clip on each side
    num_test = round(n * cfg.test_ratio)
    if cfg.test_ratio > 0:
        num_test = max(num_test, 1)
    num_test = max(0, min(num_test, n - num_val - 1))
    return num_val, num_test


def pool_classes(cfg: SynthConfig) -> list[str]:
    """The class of each pool clip: each run of ``num_classes`` clips holds every class once, in
    a shuffled order (so every class comes equally often, within one, and a larger pool starts
    with the clips of a smaller one)."""
    classes = cfg.classes
    num_blocks = -(-cfg.num_unlabelled // len(classes))
    order = [i for block in range(num_blocks)
             for i in np.random.default_rng([cfg.seed, 1, block]).permutation(len(classes))]
    return [classes[i] for i in order[: cfg.num_unlabelled]]


def make_dataset(out_dir: str | Path, cfg: SynthConfig, progress: Progress | None = None,
                 num_workers: int = 1) -> dict[str, Path]:
    """Write the clips and lists of ``cfg`` under ``out_dir`` (see the module docstring).

    ``progress(done, total)`` is called after each clip. ``num_workers`` > 1 renders trajectories
    clips in that many processes (same bytes); ``basic`` always renders in this process.
    Returns the paths of the list files by split: train, val, classes, and test / unlabelled
    when written.
    """
    out = Path(out_dir)
    classes = cfg.classes
    num_val, num_test = split_counts(cfg)
    labelled = [(name, i) for name in classes for i in range(cfg.clips_per_class)]
    pool = pool_classes(cfg)
    total = len(labelled) + len(pool)
    jobs = [(f"videos/{name}/{name}_{i:03d}.mp4", name, _labelled_key(cfg, name, i))
            for name, i in labelled]
    jobs += [(f"unlabelled/pool_{j:05d}.mp4", name, (cfg.seed, 2, j)) for j, name in enumerate(pool)]
    if cfg.preset == "basic":
        _run_basic(out, cfg, jobs, len(labelled), progress)
    else:
        _run(out, cfg, jobs, progress, num_workers)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for (rel, name, _), (_, i) in zip(jobs, labelled):
        split = "val" if i < num_val else "test" if i < num_val + num_test else "train"
        splits[split].append(f"{rel} {name}")
    lists = {"train": out / "train.txt", "val": out / "val.txt", "classes": out / "classes.txt"}
    _write_list(lists["train"], splits["train"])
    _write_list(lists["val"], splits["val"])
    _write_list(lists["classes"], classes)
    if num_test:
        lists["test"] = out / "test.txt"
        _write_list(lists["test"], splits["test"])
    if pool:
        lists["unlabelled"] = out / "unlabelled.txt"
        _write_list(lists["unlabelled"], [f"{rel} {name}" for rel, name, _ in jobs[len(labelled):]])
    with atomic_open(out / "synth.json") as fh:
        json.dump(dataclasses.asdict(cfg), fh, indent=1)
    log.info("%d clips (%d labelled, %d unlabelled) -> %s", total, len(labelled), len(pool), out)
    return lists


def _labelled_key(cfg: SynthConfig, name: str, i: int) -> tuple[int, ...]:
    # The class's index in the whole preset, so that --classes N leaves each class's clips alone.
    return (cfg.seed, 0, list(PRESETS[cfg.preset]).index(name), i)


def _run_basic(out: Path, cfg: SynthConfig, jobs: list, num_labelled: int,
               progress: Progress | None) -> None:
    """One stream for the labelled clips (the first ``num_labelled`` jobs), in class order: the
    output of mvmae <= 0.1 depends on it. The pool's clips from their own streams."""
    rng = np.random.default_rng(cfg.seed)
    for done, (rel, name, key) in enumerate(jobs, 1):
        clip_rng = rng if done <= num_labelled else np.random.default_rng(list(key))
        _write_clip(out / rel, render_clip(name, cfg, clip_rng), cfg)
        if progress:
            progress(done, len(jobs))


def _run(out: Path, cfg: SynthConfig, jobs: list, progress: Progress | None,
         num_workers: int) -> None:
    if num_workers <= 1:
        for done, job in enumerate(jobs, 1):
            _make_clip(out, cfg, *job)
            if progress:
                progress(done, len(jobs))
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ProcessPoolExecutor(num_workers, mp_context=ctx) as executor:
        futures = [executor.submit(_make_clip, out, cfg, *job) for job in jobs]
        for done, future in enumerate(futures, 1):
            future.result()
            if progress:
                progress(done, len(jobs))


def _make_clip(out: Path, cfg: SynthConfig, rel: str, name: str, key: tuple[int, ...]) -> None:
    _write_clip(out / rel, render_clip(name, cfg, np.random.default_rng(list(key))), cfg)


def _write_clip(path: Path, frames: np.ndarray, cfg: SynthConfig) -> None:
    """Encode ``frames`` uint8 (T, H, W, 3) to ``path`` atomically (a temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    options = x264_options(cfg.bframes, cfg.refs, cfg.gop, cfg.crf)
    try:
        encode_h264(tmp, frames, cfg.fps, options, container_format="mp4")
        os.replace(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        raise WriteError(path, exc, what="synthetic clip") from exc
    except BaseException:
        remove_quietly(tmp)
        raise


def _write_list(path: Path, lines: list[str]) -> None:
    with atomic_open(path) as fh:
        fh.write("\n".join(lines) + ("\n" if lines else ""))
