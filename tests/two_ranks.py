"""One real 2-process torchrun (gloo, CPU) that several test modules read: run by
``torchrun --nproc_per_node=2 two_ranks.py OUT`` (the ``two_ranks`` fixture, tests/conftest.py),
each rank joins the group with ``mvmae.train.distributed.init_distributed`` and then

- ``helpers``: all-reduces, skip counts and a DDP model (tests/train/test_distributed.py) into
  ``OUT/rank<r>.pt``;
- ``gather``: feeds its share of a fixed data set to StreamingMetrics and ViewAggregator,
  gathers, and writes what it ended with to ``OUT/rank<r>.json`` (tests/eval/test_metrics.py,
  tests/eval/test_views.py compare that with one process over the whole set).

One launch for all of them: each launch costs about 10 s of interpreter start-up.
"""

from __future__ import annotations

import json
import sys

import numpy as np

NUM_CLASSES = 6
NUM_CLIPS = 11
# views: 14 clips of 4 videos, interleaved so every video has clips on both ranks
VIEW_KEYS = ["v0", "v1", "v2", "v0", "v3", "v1", "v0", "v2", "v3", "v1", "v3", "v2", "v0", "v3"]
VIEW_LABELS = {"v0": 2, "v1": 0, "v2": 5, "v3": 2}
VIEW_SPLIT = 8  # rank 0 takes clips [0, 8), rank 1 [8, 14)


def make_data() -> dict[str, np.ndarray]:
    """The same arrays on every rank and in the test."""
    rng = np.random.default_rng(0)
    return {"scores": rng.normal(size=(NUM_CLIPS, NUM_CLASSES)).astype(np.float32),
            "labels": rng.integers(0, NUM_CLASSES, NUM_CLIPS),
            "view_scores": rng.normal(size=(len(VIEW_KEYS), NUM_CLASSES)).astype(np.float32),
            "view_labels": np.array([VIEW_LABELS[k] for k in VIEW_KEYS])}


def metric_rows(rank: int) -> list[int]:
    """Rank 1 repeats clip 0, as DistributedSampler's padding would."""
    return list(range(7)) if rank == 0 else list(range(7, NUM_CLIPS)) + [0]


def helpers(out: str, info) -> None:
    """mvmae's distributed helpers on this rank: means and sums over ranks, every rank's skip
    counts summed, and DDP (different initial weights per rank: rank 0's are broadcast; each rank
    its own data: gradients averaged)."""
    import torch

    from mvmae.shards.reader import SkipCounter
    from mvmae.shards.sample import SampleError
    from mvmae.train.distributed import all_reduce_mean, all_reduce_sum, unwrap_model, wrap_ddp
    from mvmae.train.trainer import skip_metrics

    assert info.world_size == 2 and info.device.type == "cpu", info
    mean = all_reduce_mean(torch.tensor([info.rank + 1.0, 10.0 * info.rank]))
    total = all_reduce_sum(torch.tensor([info.rank + 1, 10 * info.rank]))
    skips = SkipCounter()  # rank r skips r + 1 samples of its shards
    for _ in range(info.rank + 1):
        assert skips(SampleError("a damaged sample"))
    skipped = skip_metrics(skips)
    torch.manual_seed(100 + info.rank)  # different initial weights: DDP must broadcast rank 0's
    model = wrap_ddp(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                         torch.nn.Linear(8, 1)), info)
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # each rank its own data: gradients are averaged
        x = torch.randn(16, 4)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = any(not torch.equal(a, b) for a, b in zip(initial, model.parameters()))
    torch.save({"mean": mean, "total": total, "skipped": skipped, "moved": moved, "is_main": info.is_main,
                "params": unwrap_model(model).state_dict()}, f"{out}/rank{info.rank}.pt")


def gather(out: str, rank: int) -> None:
    """StreamingMetrics and ViewAggregator over this rank's share, gathered."""
    import torch

    from mvmae.eval.metrics import StreamingMetrics
    from mvmae.eval.views import ViewAggregator

    data = make_data()
    rows = metric_rows(rank)
    meter = StreamingMetrics(NUM_CLASSES)
    for chunk in (rows[:3], rows[3:]):
        meter.update(torch.from_numpy(data["scores"][chunk]),
                     torch.from_numpy(data["labels"][chunk]), [f"clip{i}" for i in chunk])
    scores, labels, keys = meter.gather().arrays()

    clips = range(VIEW_SPLIT) if rank == 0 else range(VIEW_SPLIT, len(VIEW_KEYS))
    views = ViewAggregator(NUM_CLASSES)
    for i in clips:  # one clip per update, as a batch-size-1 test loop would
        views.update(data["view_scores"][i:i + 1], [VIEW_KEYS[i]], data["view_labels"][i:i + 1])
    video = views.gather().result()

    result = {"metrics": meter.compute(), "keys": keys, "labels": labels.tolist(),
              "scores": scores.tolist(), "video_scores": video.scores.tolist(),
              "video_keys": video.keys, "video_labels": video.labels.tolist(),
              "num_views": video.num_views.tolist()}
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump(result, fh)


def main(out: str) -> None:
    from mvmae.train.distributed import barrier, cleanup, exit_finished_rank, init_distributed

    info = init_distributed()
    helpers(out, info)
    gather(out, info.rank)
    barrier()
    cleanup()
    # as mvmae's own ranks end: gloo's threads can abort the interpreter's teardown (SIGABRT,
    # "terminate called without an active exception"; seen once in CI), failing a finished run
    exit_finished_rank()


if __name__ == "__main__":
    main(sys.argv[1])
