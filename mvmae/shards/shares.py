"""Which shards each rank and DataLoader worker of a training run reads, epoch by epoch.

Every epoch the shard list is in one order on every rank: shuffled by (seed, epoch)
(:class:`EpochShardList`), or drawn with replacement per worker instead
(:class:`EpochResampledShards`). The *readers* of an epoch are the R ranks' W DataLoader workers
(W = 1 without workers); rank r's worker w is reader ``w * R + r``. The list is shared out in
one of two ways:

- **one pass** (:func:`split_by_rank`, then ``webdataset.split_by_worker``): reader j reads the
  shards j, j + R*W, j + 2*R*W, ... once; readers may end with different numbers of samples, and
  with fewer shards than readers some read nothing. A single process, and ranks whose shards no
  manifest lists.
- **equal epochs** (:class:`EqualEpoch`, :func:`read_share`): with at least R x W shards, the
  same shards to the same readers as one pass; with S < R x W shards, reader j reads shard
  ``j % S`` and keeps every c-th of its samples (c: the readers sharing that shard), so in a pass
  every sample has exactly one reader (:func:`reader_share`). A reader that reaches the end of its
  share starts it again (a *repeat*: its clips are drawn anew, ``sources.REPEAT``), so that every
  rank delivers the epoch's fixed number of batches, counted from the manifests' samples per shard
  (``mvmae.shards.manifest.manifest_sample_counts``).
"""

from __future__ import annotations

import functools
import multiprocessing
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import webdataset as wds

from mvmae.shards.sample import REPEAT
from mvmae.shards.stream import Handler, ReadConfig, read_shards

__all__ = ["SharedEpoch", "EpochShardList", "EpochResampledShards", "split_by_rank", "EqualEpoch",
           "SharePart", "reader_share", "read_share"]


class SharedEpoch:
    """The epoch number in shared memory: set in the main process, read by DataLoader workers
    (persistent ones included) when they start iterating."""

    def __init__(self, epoch: int = 0) -> None:
        self._value = multiprocessing.RawValue("q", epoch)  # one writer (the main process): no lock

    def set(self, epoch: int) -> None:
        self._value.value = epoch

    def get(self) -> int:
        return int(self._value.value)


def epoch_of(epoch: SharedEpoch | int) -> int:
    return epoch.get() if isinstance(epoch, SharedEpoch) else int(epoch)


class EpochShardList(wds.SimpleShardList):
    """webdataset's shard list, shuffled at each iteration by (seed, current epoch) (None: in order),
    the same order on every rank."""

    def __init__(self, urls: list[str], seed: int | None, epoch: SharedEpoch) -> None:
        super().__init__(urls)
        self.shuffle_seed, self.shared_epoch = seed, epoch

    def __iter__(self):
        self.seed = None if self.shuffle_seed is None else _epoch_seed(self.shuffle_seed, self.shared_epoch.get())
        return super().__iter__()


class EpochResampledShards(wds.ResampledShards):
    """webdataset's ResampledShards (endless draws with replacement), its draws a function of
    (seed, current epoch, rank, DataLoader worker)."""

    def __init__(self, urls: list[str], seed: int, epoch: SharedEpoch, rank: int) -> None:
        super().__init__(urls, seed=seed, deterministic=True, worker_seed=functools.partial(_worker_seed, rank))
        self.base_seed, self.shared_epoch = seed, epoch

    def __iter__(self):
        self.seed, self.epoch = _epoch_seed(self.base_seed, self.shared_epoch.get()), -1
        return super().__iter__()


def split_by_rank(src: Iterable, rank: int, world_size: int) -> Iterator:
    """Every world_size-th item, from the rank-th (the shard list is in the same order on every rank)."""
    for i, item in enumerate(src):
        if i % world_size == rank:
            yield item


def _worker_seed(rank: int) -> int:
    """ResampledShards' per-worker seed: distinct for each (rank, DataLoader worker)."""
    return rank * 1000 + wds.utils.pytorch_worker_info()[2]


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch]).integers(2 ** 31))


# --------------------------------------------------------------------------- equal epochs


@dataclass(frozen=True)
class EqualEpoch:
    """An epoch of exactly ``num_batches`` batches on every rank (``mvmae.train.trainer.equal_epoch``
    sizes it from the manifests: the samples of one pass over the shards, divided by ranks x batch
    size, rounded down)."""

    num_batches: int

    def __post_init__(self) -> None:
        if self.num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {self.num_batches}")


class SharePart(NamedTuple):
    """A shard a reader reads: of its samples n = 0, 1, ... (in tar order) the reader keeps those
    with ``n % count == index`` (all of them when count is 1)."""

    url: str
    index: int
    count: int


def reader_share(urls: Sequence[str], reader: int, num_readers: int) -> list[SharePart]:
    """Reader ``reader``'s share of one epoch's shard list (in the order every rank has it). At
    least as many shards as readers: shards reader, reader + num_readers, ... whole (what one pass
    gives the reader); fewer (S): shard ``reader % S``, sample by sample with the other readers of
    that shard. Over all readers, each sample of each shard exactly once."""
    if not 0 <= reader < num_readers:
        raise ValueError(f"reader must be in [0, {num_readers}), got {reader}")
    if not urls:
        return []
    if len(urls) >= num_readers:
        return [SharePart(url, 0, 1) for url in urls[reader::num_readers]]
    shard = reader % len(urls)
    return [SharePart(urls[shard], reader // len(urls), len(range(shard, num_readers, len(urls))))]


def read_share(src: Iterable[dict], rank: int, world_size: int, equal: EqualEpoch, batch_size: int,
               config: ReadConfig, handler: Handler, keys: frozenset[str] | None = None) -> Iterator[dict]:
    """The webdataset stage from the epoch's shard list (``{'url': ...}`` items, the same order on
    every rank) to the raw samples of this reader's share (:func:`reader_share`; the reader of this
    rank and DataLoader worker), only those with ``keys`` (None: all), read again and again, each
    sample's ``sources.REPEAT`` the pass it comes from (absent in the first). Passes stop once
    this worker has delivered the samples of its batches of the epoch (the DataLoader takes
    batches from its workers in turn) and one pass more, for samples that the stages after it may
    skip; or after a pass that delivers none (a share of unreadable shards, or of no sample)."""
    urls = [item["url"] for item in src]
    _, _, worker, num_workers = wds.utils.pytorch_worker_info()
    share = reader_share(urls, worker * world_size + rank, world_size * num_workers)
    needed = len(range(worker, equal.num_batches, num_workers)) * batch_size
    total, first_pass, repeat = 0, None, 0
    while first_pass is None or total < needed + first_pass:
        delivered = 0
        for part in share:
            for n, raw in enumerate(read_shards([{"url": part.url}], config, handler)):
                if n % part.count == part.index and (keys is None or raw["__key__"] in keys):
                    delivered += 1
                    yield {**raw, REPEAT: repeat} if repeat else raw
        if delivered == 0:
            return
        total, first_pass, repeat = total + delivered, first_pass or delivered, repeat + 1
