"""Reading shards for training and evaluation: webdataset pipelines of MV-field clips.

A pipeline is an explicit list of stages (generators from iterator to iterator, each testable on
a list), then ``webdataset.DataPipeline(*stages)``::

    shard URLs -> [shuffle (seed, epoch)] -> split by rank and DataLoader worker (shares.py)
    -> read_shards (stream.py: open with timeouts, tar checked, retry with backoff -> raw samples)
    -> [shuffle buffer] -> decode_sources (format version, CRC, lazy decoding)
    -> sample_clips (clips.py, in groups of samples; I-frames through torch_iframes.py)
    -> batched(collate_clips) -> torch tensors

URLs: local paths, ``file:``, ``http(s)://`` (read with curl), ``s3://`` and ``gs://`` (fsspec),
``pipe:`` commands, every wait
bounded by :class:`ReadConfig` (``fetch.py``), and anything else ``webdataset.gopen`` opens; brace
patterns (``train-{000000..000127}.tar``), ``::``-separated lists, or a list of any of these.
Shards are read by ``stream.ShardReader``, the reader ``mvmae shards verify`` uses too.
Clip sampling and augmentation are in ``clips.py``; the rules are in FORMAT.md, "Reader".

Errors. Every stage takes a webdataset handler ``handler(exn) -> bool`` and is loud by default
(``reraise_exception``). :class:`SkipCounter` is the opt-in skip-and-count handler: it logs and
counts corrupt samples, unreadable shards and shard retries (across DataLoader workers) and raises
:class:`TooManySkipsError` past ``max_skip_ratio``. A :class:`FormatVersionError` is never
skipped, whatever the handler: the shard is refused with the versions found and supported.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import random
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from webdataset.handlers import reraise_exception

from mvmae.shards import clips as clip_sampling
from mvmae.shards import sample as fmt
from mvmae.shards.clips import Clip, ClipConfig, IFrameOps, ShardClipSource
from mvmae.shards.forking import settle_exiting_feeders
from mvmae.shards.sample import FormatVersionError, SampleError
from mvmae.shards.stream import Handler, ReadConfig, ShardReadError, expand_urls, read_shards
from mvmae.shards.shares import (EpochResampledShards, EpochShardList, EqualEpoch, SharedEpoch, read_share,
                                 split_by_rank)
from mvmae.shards.shares import epoch_of as _epoch
from mvmae.shards.torch_iframes import TORCH_IFRAMES, TorchIFrames

__all__ = [
    "Clip", "ClipConfig", "ReadConfig", "ShardReadError", "SkipCounter", "TooManySkipsError", "TorchIFrames",
    "eval_skips",
    "SharedEpoch", "build_train_pipeline", "build_eval_pipeline", "make_loader", "collate_clips", "iter_samples",
    "expand_urls", "read_shards", "decode_sources", "sample_clips", "split_by_rank", "shuffle_samples",
]

log = logging.getLogger(__name__)


class TooManySkipsError(RuntimeError):
    """More samples (or shards) were skipped than ``max_skip_ratio`` allows."""


# --------------------------------------------------------------------------- skip and count


class SkipCounter:
    """The skip-and-count handler: logs a warning per skipped sample or shard and counts them in
    shared memory, readable in the main process after an epoch whatever the number of DataLoader
    workers and their start method (one row of counts per worker: no lock). ``max_skip_ratio``
    (None: no limit) raises :class:`TooManySkipsError` once skipped/seen exceeds it, for samples
    after ``min_samples`` seen and for shards after ``min_shards`` seen (totals over workers).
    ``shard_retries`` counts the re-reads of shards that failed part-way (``stream.ShardReader``).
    FormatVersionError and errors that are not data errors (bugs) re-raise. The stages hand it
    SampleErrors and, for shards, ShardReadErrors (OSErrors; tar damage is one too).
    ``skip_shards=False`` re-raises shard errors too (naming the URL) and skips only samples:
    what evaluation uses (:func:`eval_skips`), where a missing shard would silently change the
    numbers but a sample it cannot use is counted, named in the log, and left out.
    """

    SKIPPABLE = (SampleError, OSError)
    _FIELDS = ("seen", "skipped", "shards_seen", "shards_skipped", "shard_retries")
    _ROWS = 256  # DataLoader workers with their own row (beyond: rows shared, counts may race)

    def __init__(self, max_skip_ratio: float | None = None, min_samples: int = 100,
                 min_shards: int = 10, skip_shards: bool = True) -> None:
        if max_skip_ratio is not None and not 0.0 <= max_skip_ratio < 1.0:
            raise ValueError(f"max_skip_ratio must be in [0, 1), got {max_skip_ratio}")
        self.max_skip_ratio, self.min_samples, self.min_shards = max_skip_ratio, min_samples, min_shards
        self.skip_shards = skip_shards
        self._counts = multiprocessing.RawArray("q", self._ROWS * len(self._FIELDS))

    def _totals(self) -> np.ndarray:
        return np.frombuffer(self._counts, np.int64).reshape(self._ROWS, -1).sum(0)  # (5,)

    @property
    def seen(self) -> int:
        """Samples read (decoded or skipped)."""
        return int(self._totals()[0])

    @property
    def skipped(self) -> int:
        return int(self._totals()[1])

    @property
    def shards_seen(self) -> int:
        return int(self._totals()[2])

    @property
    def shards_skipped(self) -> int:
        return int(self._totals()[3])

    @property
    def shard_retries(self) -> int:
        return int(self._totals()[4])

    def summary(self) -> dict[str, int]:
        return dict(zip(self._FIELDS, map(int, self._totals())))

    def metrics(self) -> dict[str, int]:
        """The counts under the names training logs them with (per epoch, this process)."""
        _, skipped, _, shards_skipped, retries = map(int, self._totals())
        return {"num_samples_skipped": skipped, "num_shards_skipped": shards_skipped, "num_shard_retries": retries}

    def reset(self) -> None:
        np.frombuffer(self._counts, np.int64)[:] = 0

    def count_sample(self) -> None:
        self._check(*self._add(0), shard=False)

    def count_shard(self) -> None:
        self._check(*self._add(2), shard=True)

    def count_retry(self) -> None:
        self._add(4)

    def __call__(self, exn: Exception) -> bool:
        if isinstance(exn, FormatVersionError) or not isinstance(exn, self.SKIPPABLE):
            raise exn
        shard = isinstance(exn, ShardReadError)
        if shard and not self.skip_shards:
            raise exn
        seen, skipped = self._add(3 if shard else 1)
        notes = "; ".join(getattr(exn, "__notes__", []))
        log.warning("skipped %s (%d of %d so far): %s%s", "shard" if shard else "sample", skipped, seen,
                    exn, f" ({notes})" if notes else "")
        self._check(seen, skipped, shard, exn)
        return True

    def _add(self, field: int) -> tuple[int, int]:
        """Increment one count in this worker's row; returns the totals (seen, skipped) of its
        kind (samples: fields 0-1, shards: 2-3)."""
        info = torch.utils.data.get_worker_info()
        row = (info.id if info else 0) % self._ROWS
        self._counts[row * len(self._FIELDS) + field] += 1
        totals, base = self._totals(), 0 if field < 2 else 2
        return int(totals[base]), int(totals[base + 1])

    def _check(self, seen: int, skipped: int, shard: bool, exn: Exception | None = None) -> None:
        """Raise once at least the minimum were seen and skipped/seen is past the ratio."""
        minimum = self.min_shards if shard else self.min_samples
        if self.max_skip_ratio is None or seen < minimum or skipped <= self.max_skip_ratio * seen:
            return
        kind = "shards" if shard else "samples"
        raise TooManySkipsError(f"{skipped} of {seen} {kind} skipped, more than max_skip_ratio="
                                f"{self.max_skip_ratio}" + (f"; last: {exn}" if exn else ""))


# --------------------------------------------------------------------------- decoding


def decode_sources(src: Iterable[dict], check_crc: bool = True,
                   handler: Handler = reraise_exception) -> Iterator[ShardClipSource]:
    """Raw samples -> :class:`ShardClipSource`; a FormatVersionError always raises, naming the shard."""
    for raw in src:
        if hasattr(handler, "count_sample"):
            handler.count_sample()
        try:
            source = ShardClipSource(raw, check_crc)  # its errors name the shard
        except FormatVersionError as exc:
            raise FormatVersionError(f"{raw.get('__url__', '?')}: refused: {exc}") from exc
        except Exception as exc:
            if not handler(exc):
                return
            continue
        yield source


def sample_clips(src: Iterable, clip: ClipConfig, seed: int = 0, epoch: SharedEpoch | int = 0,
                 handler: Handler = reraise_exception, ops: IFrameOps = TORCH_IFRAMES,
                 group_size: int = 16) -> Iterator[Clip]:
    """``clips.sample_clips`` as the pipelines use it: I-frames through torch, the epoch read
    (from a SharedEpoch) when iteration starts."""
    yield from clip_sampling.sample_clips(src, clip, seed, _epoch(epoch), handler, ops, group_size)


def collate_clips(clips: list[Clip]) -> dict:
    """Clips -> a batch: mv float32 (B, T, 2, h, w) output px per frame, valid bool (B, T, h, w),
    iframes uint8 (B, K, 3, H, W), label int64 (B,), key list[str] (B); and for bookkeeping
    start, clip_index int64 (B,), frame_index int64 (B, T), iframe_index int64 (B, K),
    crop_box float32 (B, 4) normalized (y0, x0, y1, x1), flipped bool (B,)."""
    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(c, name) for c in clips]))

    def values(name: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([getattr(c, name) for c in clips], dtype=dtype)

    return {"mv": stack("mv"), "valid": stack("valid"), "iframes": stack("iframes"),
            "label": values("label", torch.int64), "key": [c.key for c in clips],
            "start": values("start", torch.int64), "clip_index": values("clip_index", torch.int64),
            "frame_index": stack("frame_index"), "iframe_index": stack("iframe_index"),
            "crop_box": values("crop_box", torch.float32), "flipped": values("flipped", torch.bool)}


# --------------------------------------------------------------------------- pipelines


class ClipPipeline(wds.DataPipeline):
    """A DataPipeline of clip batches; ``skips``: its SkipCounter (None when loud); ``set_epoch``
    takes effect at the next iteration, in persistent DataLoader workers too."""

    def __init__(self, stages: list, skips: SkipCounter | None, num_shards: int, world_size: int,
                 epoch: SharedEpoch | None = None) -> None:
        super().__init__(*stages)
        self.skips, self.num_shards, self.world_size = skips, num_shards, world_size
        self.epoch = epoch or SharedEpoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch.set(epoch)


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): as given, else torch.distributed's when initialized, else (0, 1)."""
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if rank is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = 0, 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got {rank} of {world_size}")
    return rank, world_size


def shuffle_samples(src: Iterable, bufsize: int, seed: int, epoch: SharedEpoch | int, rank: int) -> Iterator:
    """webdataset's buffer shuffle, its generator seeded by (seed, epoch, rank, DataLoader worker)."""
    worker = wds.utils.pytorch_worker_info()[2]
    rng = np.random.default_rng([seed, _epoch(epoch), rank, worker])
    yield from wds.shuffle(bufsize, min(bufsize, max(1, bufsize // 4)),
                           rng=random.Random(int(rng.integers(2 ** 63))))(iter(src))


def select_keys(src: Iterable[dict], keys: frozenset[str]) -> Iterator[dict]:
    """Only the raw samples whose key is in ``keys``."""
    return (sample for sample in src if sample["__key__"] in keys)


def build_train_pipeline(urls: str | Sequence[str], clip: ClipConfig, batch_size: int, *, seed: int = 0,
                         epoch: int = 0, shuffle_shards: bool = True, shuffle_buffer: int = 256,
                         resampled: bool = False, equal: EqualEpoch | None = None, rank: int | None = None,
                         world_size: int | None = None, handler: Handler | None = None,
                         read: ReadConfig | None = None, keys: frozenset[str] | None = None) -> ClipPipeline:
    """Batches of random clips (``clip.mode == 'train'``), full batches only.

    Shard order, sample shuffle and augmentation are deterministic in (seed, epoch):
    ``pipeline.set_epoch(e)`` before each epoch (or build with ``epoch=e``). Shards are split by
    rank (``rank``/``world_size``, else torch.distributed's) and DataLoader worker, one pass
    (``shares.py``); ``equal`` reads each worker's share again and again instead, for at least
    ``equal.num_batches`` batches per rank (bound it: ``make_loader(...).slice(n)``), whatever
    the number of shards; ``resampled`` draws shards with replacement per worker, endlessly
    (bound it with ``.with_epoch(n)``).
    shuffle_buffer: raw samples (compressed, ~0.1-1 MB each) held per worker; 0 disables.
    handler: None skips and counts corrupt samples and unreadable shards in a new
    ``SkipCounter()`` (``pipeline.skips``); pass ``SkipCounter(max_skip_ratio=...)`` to bound
    them or ``reraise_exception`` to be loud. keys: read only the samples with these keys (a
    labelled subset, ``mvmae.train.labels``); None reads all.
    """
    if clip.mode != "train":
        raise ValueError(f"the train pipeline needs ClipConfig(mode='train'), got {clip.mode!r}")
    if resampled and equal is not None:
        raise ValueError("resampled and equal epochs are two ways to size an epoch: give one")
    _check_batch(batch_size, shuffle_buffer)
    read, shard_urls = read or ReadConfig(), expand_urls(urls)
    rank, world_size = resolve_rank(rank, world_size)
    handler, shared_epoch = SkipCounter() if handler is None else handler, SharedEpoch(epoch)
    if resampled:
        source = [EpochResampledShards(shard_urls, seed, shared_epoch, rank),
                  functools.partial(read_shards, config=read, handler=handler)]
    elif equal is not None:  # the keys inside: read_share stops after a pass that delivers nothing
        source = [EpochShardList(shard_urls, seed if shuffle_shards else None, shared_epoch),
                  functools.partial(read_share, rank=rank, world_size=world_size, equal=equal,
                                    batch_size=batch_size, config=read, handler=handler, keys=keys)]
        keys = None
    else:
        source = [EpochShardList(shard_urls, seed if shuffle_shards else None, shared_epoch),
                  functools.partial(split_by_rank, rank=rank, world_size=world_size), wds.split_by_worker,
                  functools.partial(read_shards, config=read, handler=handler)]
    stages = [
        *source,
        functools.partial(select_keys, keys=keys) if keys is not None else None,
        functools.partial(shuffle_samples, bufsize=shuffle_buffer, seed=seed, epoch=shared_epoch, rank=rank)
        if shuffle_buffer else None,
        functools.partial(decode_sources, check_crc=read.check_crc, handler=handler),
        functools.partial(sample_clips, clip=clip, seed=seed, epoch=shared_epoch, handler=handler),
        wds.batched(batch_size, collation_fn=collate_clips, partial=False),
    ]
    skips = handler if isinstance(handler, SkipCounter) else None
    # every worker has a share in equal epochs: none idles (make_loader's warning)
    num_shards = 0 if equal is not None else len(shard_urls)
    return ClipPipeline([s for s in stages if s is not None], skips, num_shards, world_size, shared_epoch)


def eval_skips(max_skip_ratio: float | None = None) -> SkipCounter:
    """The handler of validation and ``mvmae eval``: a sample they cannot use (damaged, or without
    the I-frames a clip needs: shards of mvmae before context frames) is skipped, counted and
    named in a warning, as in training; too many (``max_skip_ratio``, None: no limit, as training)
    raise TooManySkipsError. A shard that cannot be read stays an error naming its URL."""
    return SkipCounter(max_skip_ratio, skip_shards=False)


def build_eval_pipeline(urls: str | Sequence[str], clip: ClipConfig, batch_size: int, *,
                        rank: int | None = None, world_size: int | None = None,
                        handler: Handler = reraise_exception, read: ReadConfig | None = None) -> ClipPipeline:
    """Batches of deterministic clips (``center`` or ``multi`` mode), shards in order, split by rank
    and worker: every sample once across ranks and workers; the last batch may be partial.
    Loud by default (a partial evaluation must be a decision): pass a SkipCounter to skip."""
    if clip.mode == "train":
        raise ValueError("the eval pipeline needs ClipConfig(mode='center' or 'multi')")
    _check_batch(batch_size, 0)
    read, shard_urls = read or ReadConfig(), expand_urls(urls)
    rank, world_size = resolve_rank(rank, world_size)
    stages = [
        wds.SimpleShardList(shard_urls),
        functools.partial(split_by_rank, rank=rank, world_size=world_size),
        wds.split_by_worker,
        functools.partial(read_shards, config=read, handler=handler),
        functools.partial(decode_sources, check_crc=read.check_crc, handler=handler),
        functools.partial(sample_clips, clip=clip, handler=handler),
        wds.batched(batch_size, collation_fn=collate_clips, partial=True),
    ]
    skips = handler if isinstance(handler, SkipCounter) else None
    return ClipPipeline(stages, skips, len(shard_urls), world_size)


def _check_batch(batch_size: int, shuffle_buffer: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle_buffer < 0:
        raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")


def make_loader(pipeline: wds.DataPipeline, num_workers: int = 0, *, pin_memory: bool = False,
                persistent_workers: bool = False, prefetch_factor: int = 2, timeout_s: float = 0.0,
                multiprocessing_context: str | None = None) -> wds.WebLoader:
    """A ``webdataset.WebLoader`` over a batching pipeline (batch_size=None: batches come
    collated from the workers). timeout_s > 0: a worker that delivers no batch for that long
    raises instead of stalling training. multiprocessing_context: torch's default (``fork`` on
    Linux) or ``forkserver``/``spawn`` when the main process holds state a fork must not inherit
    (e.g. live PyAV objects, whose FFmpeg threads a forked child lacks). More workers than this
    rank's shards leaves some idle (warned)."""
    shards = getattr(pipeline, "num_shards", 0) // max(1, getattr(pipeline, "world_size", 1))
    if num_workers > 1 and 0 < shards < num_workers:
        log.warning("%d DataLoader workers for %d shard(s) per rank: %d worker(s) will be idle",
                    num_workers, shards, num_workers - shards)
    if num_workers and multiprocessing_context in (None, "fork"):
        settle_exiting_feeders()  # the previous loader's threads, before this one forks (forking.py)
    extra = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers,
             "timeout": timeout_s, "multiprocessing_context": multiprocessing_context} if num_workers else {}
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=num_workers,
                         pin_memory=pin_memory, **extra)


def iter_samples(urls: str | Sequence[str], *, with_iframes: bool = True, read: ReadConfig | None = None,
                 handler: Handler = reraise_exception) -> Iterator[fmt.ShardSample]:
    """Every sample of the shards, in order, fully decoded (``sample.decode_sample``): for
    inspection and tests, not training."""
    read = read or ReadConfig()
    shards = ({"url": u} for u in expand_urls(urls))
    for raw in read_shards(shards, read, handler):
        try:
            yield fmt.decode_sample(raw, with_iframes=with_iframes, check=read.check_crc)
        except FormatVersionError as exc:
            raise FormatVersionError(f"{raw.get('__url__')}: refused: {exc}") from exc
        except SampleError as exc:
            if not handler(exc):
                return
