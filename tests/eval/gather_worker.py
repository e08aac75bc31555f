"""Run by ``torchrun --nproc_per_node=2`` (see conftest.py): each rank feeds its share of a
fixed data set to StreamingMetrics and ViewAggregator, gathers, and writes what it ended with
to ``<out>/rank<r>.json``. The tests compare that with one process over the whole set."""

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


def main(out: str) -> None:
    import torch
    import torch.distributed as dist

    from mvmae.eval.metrics import StreamingMetrics
    from mvmae.eval.views import ViewAggregator

    dist.init_process_group("gloo")
    rank = dist.get_rank()
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
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
