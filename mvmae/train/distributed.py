"""Distributed data parallel set-up for ``torchrun`` launches, a no-op in a single process.

``torchrun --nproc_per_node=G ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; ``init_distributed``
reads them, joins the process group (nccl on CUDA, gloo on CPU) and picks this process's device.
Without those variables everything below works unchanged in one process.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, number of processes, rank on this machine, its
    device, and whether it is the main process (rank 0: the one that logs and checkpoints)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _default_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _ENV_VARS)


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group when launched by torchrun, else describe a single process.

    backend: None picks nccl when CUDA is available, else gloo. Calling it twice reuses the
    existing group.
    """
    if not launched_by_torchrun():
        return DistInfo(0, 1, 0, _default_device(0), True)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = _default_device(local_rank)
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        log.info(f"joined process group: rank {rank}/{world_size} (local {local_rank}), "
                 f"backend {backend}, device {device}")
    return DistInfo(rank, world_size, local_rank, device, rank == 0)


def cleanup() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_finished_rank() -> NoReturn:
    """End a torchrun rank whose run is complete (files closed, the process group left) with
    status 0, without the interpreter's teardown. Gloo's C++ threads can abort that teardown
    ("terminate called without an active exception", SIGABRT) even after
    ``destroy_process_group``: torchrun then reports a finished run as a failed rank, and with
    two nodes the other node's agent waits 5 minutes at its exit barrier (seen once in the
    two-node Ray example under load). Only stdio and logging need flushing here."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(0)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def collective_device() -> torch.device:
    """Where the process group's collectives take their tensors: nccl only moves CUDA tensors
    (this process's device), gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all processes, as a new tensor on the input's device (the input
    is untouched); the tensor itself in a single process. Every rank must call it (a collective)."""
    if not _active():
        return tensor
    reduced = tensor.detach().to(collective_device(), copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(tensor.device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes, as a new tensor on the input's device (the input
    is untouched); the tensor itself in a single process. Every rank must call it (a collective)."""
    if not _active():
        return tensor
    return all_reduce_sum(tensor) / dist.get_world_size()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if _active():
        dist.barrier()


def wrap_ddp(model: nn.Module, info: DistInfo, find_unused_parameters: bool = False) -> nn.Module:
    """Move ``model`` to ``info.device`` and wrap it in DDP when running distributed (DDP
    broadcasts rank 0's parameters, so every rank starts from the same weights)."""
    model = model.to(info.device)
    if not (info.is_distributed and _active()):
        return model
    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (what checkpoints should save), else ``model``."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def in_lockstep(batches: Iterable, info: DistInfo) -> Iterator:
    """Yield ``batches`` until ANY rank runs out. Shards split unevenly over ranks give ranks
    different numbers of batches in a one-pass epoch; a rank that went on alone would wait
    forever (or abort) in a collective the others never join. In an equal epoch every rank has
    its fixed number, and this only guards against a rank whose shards all fail. Single process:
    the batches unchanged."""
    if not info.is_distributed:
        yield from batches
        return
    it = iter(batches)
    while True:
        batch = next(it, None)
        has_batch = torch.tensor([int(batch is not None)], device=info.device)
        torch.distributed.all_reduce(has_batch, op=torch.distributed.ReduceOp.MIN)
        if not has_batch.item():
            return
        yield batch
