"""What the two trainers (``pretrain.Pretrainer``, ``finetune.Finetuner``) share besides their
folder (``run_folder``): the shard-reading fields of their configs, seeding, an epoch's batches
and their count, the skip counts of an epoch over all ranks, and continuing from a checkpoint.

An epoch is sized in one of three ways (README, "Training at scale"): ``steps_per_epoch`` set,
that many steps of shards drawn with replacement; on several ranks whose shards the manifests
list, an *equal epoch* (:func:`equal_epoch`): every rank the same fixed number of batches, a
rank that runs out of its share reading it again; else one pass over the shards, counted at the
start, the ranks in lockstep (one process: simply one pass).

The functions take the run's config duck-typed (``TrainingData``): both configs have the fields.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from mvmae.shards.clips import ClipConfig
from mvmae.shards.manifest import manifest_sample_counts
from mvmae.shards.reader import ReadConfig, SkipCounter, build_train_pipeline, expand_urls, make_loader
from mvmae.shards.shares import EqualEpoch
from mvmae.train import checkpoint as ckpt
from mvmae.train.distributed import DistInfo, all_reduce_sum, in_lockstep

log = logging.getLogger(__name__)


@dataclass
class ShardReading:
    """The fields of both training configs that say how shards are read. read: timeouts and
    retries of the shard reads (YAML ``read: {stall_s: 30}``); loader_timeout_s > 0: a
    DataLoader worker that delivers no batch for that long fails the run (0: no limit; the shard
    reads themselves are bounded by ``read``)."""

    read: ReadConfig = field(default_factory=ReadConfig)
    loader_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.read, dict):  # built from a saved config (YAML, a checkpoint) directly
            self.read = ReadConfig(**self.read)
        if self.loader_timeout_s < 0:
            raise ValueError(f"loader_timeout_s must be >= 0, got {self.loader_timeout_s}")


class TrainingData(Protocol):
    """The config fields the functions below read (``PretrainConfig``, ``FinetuneConfig``)."""

    train: list[str]
    batch_size: int
    accum_steps: int
    steps_per_epoch: int
    seed: int
    workers: int
    read: ReadConfig
    loader_timeout_s: float


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python's, numpy's and torch's global RNGs (two runs of one config then save identical
    checkpoints); ``deterministic``: deterministic torch algorithms too."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def equal_epoch(cfg: TrainingData, dist: DistInfo, keys: frozenset[str] | None = None) -> EqualEpoch | None:
    """The equal epoch of a run on several ranks: ``n // (ranks x batch_size)`` batches per rank,
    n the samples (with ``keys``, of a labelled subset) that the manifests list for the shards,
    rounded down to whole optimizer steps. None in one process, with ``steps_per_epoch`` set, or
    when a shard is in no manifest (then one pass, in lockstep; warned on rank 0). Raises
    ValueError when the samples do not make one step on every rank."""
    if not dist.is_distributed or cfg.steps_per_epoch:
        return None
    counts = manifest_sample_counts(cfg.train, cfg.read, keys)
    if counts is None:
        if dist.is_main:
            log.warning(f"no manifest lists the shards of {cfg.train}: each epoch is one pass over them, "
                        "ending when the first rank runs out (write one: mvmae shards manifest DIR)")
        return None
    per_rank = sum(counts) // (dist.world_size * cfg.batch_size)
    steps = per_rank // cfg.accum_steps
    if steps == 0:
        raise ValueError(f"{sum(counts)} sample(s) in {cfg.train} (by its manifest) make {per_rank} batch(es) "
                         f"of {cfg.batch_size} per rank for {dist.world_size} ranks: fewer than "
                         f"accum_steps={cfg.accum_steps}")
    return EqualEpoch(steps * cfg.accum_steps)


def epoch_batches(cfg: TrainingData, clip: ClipConfig, epoch: int, dist: DistInfo,
                  **pipeline: Any) -> tuple[Iterator[dict], SkipCounter]:
    """The batches of ``epoch`` (clips cut by ``clip``, mode 'train'), all ranks stopping
    together (``distributed.in_lockstep``), and the epoch's ``SkipCounter``. ``steps_per_epoch``
    x ``accum_steps`` batches drawn with replacement when ``cfg.steps_per_epoch`` is set;
    ``equal.num_batches`` when the run has an equal epoch (``pipeline["equal"]``, from
    :func:`equal_epoch`); else one pass over the shards. ``pipeline``: more
    ``build_train_pipeline`` options."""
    pipe = build_train_pipeline(cfg.train, clip, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                resampled=bool(cfg.steps_per_epoch), read=cfg.read, **pipeline)
    loader = make_loader(pipe, cfg.workers, pin_memory=dist.device.type == "cuda",
                         timeout_s=cfg.loader_timeout_s)
    if cfg.steps_per_epoch:
        loader = loader.slice(cfg.steps_per_epoch * cfg.accum_steps)
    elif pipeline.get("equal") is not None:
        loader = loader.slice(pipeline["equal"].num_batches)
    return in_lockstep(loader, dist), pipe.skips


def steps_per_epoch(cfg: TrainingData, clip: ClipConfig, dist: DistInfo, **pipeline: Any) -> int:
    """Optimizer steps per epoch: ``cfg.steps_per_epoch``, else the equal epoch's
    (``pipeline["equal"]``), else counted over one pass of the loader (epoch 0; the same options
    as ``epoch_batches``). Raises ValueError when an epoch has fewer batches than ``accum_steps``,
    or, counting one pass, a rank would have no shard (fewer shards than ranks)."""
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    if pipeline.get("equal") is not None:
        return pipeline["equal"].num_batches // cfg.accum_steps
    num_shards = len(expand_urls(cfg.train))
    if num_shards < dist.world_size:  # a rank without a shard would end every epoch at once
        raise ValueError(f"{num_shards} shard(s) in {cfg.train} for {dist.world_size} ranks: each rank "
                         "needs one; extract with a smaller --shard-size, or draw shards with replacement "
                         "(--steps-per-epoch N), or write the shards' manifest (mvmae shards manifest DIR) "
                         "for equal epochs")
    batches, _ = epoch_batches(cfg, clip, 0, dist, **pipeline)
    num_batches = sum(1 for _ in batches)
    if num_batches < cfg.accum_steps:
        raise ValueError(f"{num_batches} full batch(es) of {cfg.batch_size} clips per epoch in "
                         f"{cfg.train}: fewer than accum_steps={cfg.accum_steps}")
    return num_batches // cfg.accum_steps


def skip_metrics(skips: SkipCounter) -> dict[str, int]:
    """An epoch's skipped samples and shards and its shard re-reads, summed over all ranks (each
    rank reads its own shards), under the names they are logged with. Every rank must call it
    (a collective)."""
    counts = skips.metrics()
    totals = all_reduce_sum(torch.tensor(list(counts.values()), dtype=torch.int64))
    return dict(zip(counts, map(int, totals.tolist())))


def load_weights(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The model (unwrapped from DDP) and optimizer of checkpoint ``state``."""
    model.load_state_dict(state[ckpt.MODEL])
    optimizer.load_state_dict(state[ckpt.OPTIMIZER])


def continue_from(state: dict | None) -> tuple[int, int]:
    """(epoch to run next, optimizer step) after checkpoint ``state`` ((0, 0) when None), with
    the global RNGs restored to their state at the save: call it last in set-up, after
    everything that draws from them."""
    if state is None:
        return 0, 0
    ckpt.restore_rng_state(state[ckpt.RNG])
    return state[ckpt.EPOCH] + 1, state[ckpt.STEP]
