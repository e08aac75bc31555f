"""Clips from mvmae shards in your own PyTorch training code: a ``torch.utils.data.DataLoader``.

::

    from mvmae.dataloader import ClipConfig, class_names, clip_loader

    classes = class_names("shards/train-{000000..000009}.tar")      # classes.json beside them
    clip = ClipConfig(num_frames=16, mv_size=14, num_iframes=1)      # what a clip is
    loader = clip_loader("shards/train-{000000..000009}.tar", clip, batch_size=8, workers=2, seed=0)
    for epoch in range(10):
        loader.dataset.set_epoch(epoch)  # shard order, shuffle, clip starts, crops: new per epoch
        for batch in loader:
            batch["mv"]       # float32 (B, T, 2, h, w): (dx, dy) px per frame of the output field
            batch["valid"]    # bool (B, T, h, w): False where a cell has no vector
            batch["iframes"]  # uint8 (B, K, 3, H, W): the K I-frames nearest the clip's centre
            batch["label"]    # int64 (B,): index into classes
            batch["key"]      # list[str] (B): the samples' keys

Every batch holds ``batch_size`` clips (the train loader drops a last partial batch; the eval
loader, ``train=False``, keeps it and yields every sample once, in shard order, its clips cut
deterministically: ``ClipConfig(mode="center")``, or ``mode="multi", num_clips=N`` for N clips of
each sample). Also in a batch, for bookkeeping: ``start``, ``clip_index``, ``frame_index``,
``iframe_index``, ``crop_box``, ``flipped`` (``mvmae.shards.reader.collate_clips``).

Splitting and seeds. Shards are split over ranks first (``rank`` and ``world_size``, else
torch.distributed's when it is initialised: each rank needs one shard or more), then over the
DataLoader's ``workers`` (more workers than a rank's shards leaves some idle). The train loader's
shard order, sample shuffle (``shuffle_buffer`` samples per worker), clip starts and augmentation
(``ClipConfig``: random resized crop, flips, quarter turns) follow from ``seed`` and the epoch:
the same seed, epoch, ranks and workers give the same batches.

Errors. The train loader skips a damaged sample or an unreadable shard, logs it and counts it
(``loader.dataset.skips.metrics()``); ``max_skip_ratio`` makes too many an error. The eval loader
stops at the first one. URLs: anything ``mvmae shards`` reads (local files, brace patterns,
http(s), ``s3://``, ``gs://``, ``pipe:``), a list of them too; ``read`` bounds every wait.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from webdataset.handlers import reraise_exception

from mvmae.shards.clips import ClipConfig
from mvmae.shards.reader import SkipCounter, build_eval_pipeline, build_train_pipeline, expand_urls
from mvmae.shards.stream import ReadConfig

__all__ = ["ClipConfig", "ReadConfig", "class_names", "clip_loader"]


def clip_loader(urls: str | Sequence[str], clip: ClipConfig | None = None, *, batch_size: int = 8,
                train: bool = True, workers: int = 2, seed: int = 0, shuffle_buffer: int = 256,
                rank: int | None = None, world_size: int | None = None, max_skip_ratio: float | None = None,
                read: ReadConfig | None = None, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader of clip batches from the shards at ``urls`` (see the module doc).

    clip: how clips are cut (default ``ClipConfig()``: 16 frames of 14 x 14 cells, one 224-px
    I-frame; ``mode='train'`` for the train loader, ``'center'`` or ``'multi'`` for
    ``train=False``; ``num_iframes=0`` decodes no JPEG). The loader's ``dataset`` is the pipeline:
    ``loader.dataset.set_epoch(e)`` before each epoch of training.
    """
    clip = clip if clip is not None else ClipConfig(mode="train" if train else "center")
    if train:
        pipeline = build_train_pipeline(urls, clip, batch_size, seed=seed, shuffle_buffer=shuffle_buffer,
                                        rank=rank, world_size=world_size, read=read,
                                        handler=SkipCounter(max_skip_ratio=max_skip_ratio))
    else:
        pipeline = build_eval_pipeline(urls, clip, batch_size, rank=rank, world_size=world_size, read=read,
                                       handler=reraise_exception)
    # batch_size=None: the pipeline batches (collates) inside the workers.
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers, pin_memory=pin_memory)


def class_names(urls: str | Sequence[str], classes: str | Path | None = None) -> list[str]:
    """The class names by label index: the ``classes.json`` file ``classes``, else the one the
    extraction job wrote beside the first of the local shards ``urls``. ValueError naming the
    file when it cannot be read (remote shards: pass ``classes``)."""
    if classes is None:
        first = expand_urls(urls)[0]
        if "://" in first or first.startswith("pipe:"):
            raise ValueError(f"{first}: remote shards; pass classes= (the classes.json of the extraction job)")
        classes = Path(first).parent / "classes.json"
    try:
        names = json.loads(Path(classes).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{classes}: cannot read the class list ({exc})") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{classes}: not a class list (a JSON list of names)")
    return names
