"""Equal epochs on several ranks (``mvmae.shards.shares``, ``manifest``, ``train.trainer.equal_epoch``):
every rank reads the same fixed number of batches per epoch, sized from the manifest's samples
per shard, on shards that divide unevenly over ranks x DataLoader workers and on fewer shards
than that. Each rank's loader is the one a torchrun rank builds (its rank and world size given),
over real shards with real DataLoader workers; the runs under torchrun are in
``test_distributed_nodes.py`` and ``tests/faults/test_train_nodes_kill.py``."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from mvmae.shards.clips import ClipConfig
from mvmae.shards.manifest import manifest_sample_counts
from mvmae.shards.reader import ReadConfig, build_train_pipeline, make_loader
from mvmae.shards.sample import REPEAT
from mvmae.shards.shares import EqualEpoch, read_share, reader_share
from mvmae.train.distributed import DistInfo
from mvmae.train.trainer import equal_epoch

CLIP = ClipConfig(mode="train", num_frames=8, mv_size=8, num_iframes=0)
BATCH = 2


@pytest.fixture(scope="module")
def uneven(synth_shards) -> dict:
    """The shared synthetic train shards: 3 of 4 samples, which divide unevenly over 2 ranks (8
    and 4 samples) and are fewer than 2 ranks x 2 workers or 4 ranks."""
    return {"dir": synth_shards["shards"], "train": synth_shards["train"]}


def _info(rank: int, world_size: int) -> DistInfo:
    return DistInfo(rank, world_size, 0, torch.device("cpu"), rank == 0)


def _cfg(train: str, **fields) -> SimpleNamespace:
    return SimpleNamespace(**{"train": train, "batch_size": BATCH, "accum_steps": 1, "steps_per_epoch": 0,
                              "read": ReadConfig(), **fields})


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("num_readers", [1, 2, 3, 4, 6])
def test_reader_shares_give_each_sample_one_reader(num_shards, num_readers):
    """Over all readers of a pass, each sample of each shard exactly once: whole shards when
    there are enough, shared sample by sample when fewer shards than readers; every reader reads."""
    urls = [f"s{i}.tar" for i in range(num_shards)]
    sizes = {url: 3 + i for i, url in enumerate(urls)}
    seen = Counter()
    for reader in range(num_readers):
        share = reader_share(urls, reader, num_readers)
        assert share, f"reader {reader} has nothing to read"
        seen.update((p.url, n) for p in share for n in range(p.index, sizes[p.url], p.count))
    assert seen == Counter((url, n) for url in urls for n in range(sizes[url]))


def test_one_pass_split_is_kept_when_shards_suffice():
    """With at least ranks x workers shards a reader's share is what one pass gives it (rank r's
    worker w: every R x W-th shard from w x R + r), so equal epochs read the same data."""
    urls = [f"s{i}.tar" for i in range(7)]
    ranks, workers = 2, 3
    for rank in range(ranks):
        one_pass = urls[rank::ranks]
        for worker in range(workers):
            share = reader_share(urls, worker * ranks + rank, ranks * workers)
            assert [p.url for p in share] == one_pass[worker::workers]
            assert all((p.index, p.count) == (0, 1) for p in share)


def test_manifest_sample_counts(uneven, tmp_path):
    """Samples per shard from the job's manifest, a labelled subset's keys only; None (one pass
    then) where a shard is in no manifest: a folder without one, a pipe: URL, a manifest that
    does not list the shard."""
    assert manifest_sample_counts(uneven["train"]) == [4, 4, 4]
    manifest = uneven["dir"] / "train-manifest.jsonl"
    keys = [k for line in manifest.read_text().splitlines() for k in json.loads(line)["keys"]]
    assert manifest_sample_counts(uneven["train"], keys=frozenset(keys[3:6])) == [1, 2, 0]
    copied = tmp_path / "train-000000.tar"
    shutil.copy(uneven["dir"] / "train-000000.tar", copied)
    assert manifest_sample_counts(str(copied)) is None
    assert manifest_sample_counts(f"pipe:cat {uneven['dir'] / 'train-000000.tar'}") is None
    (tmp_path / "train-manifest.jsonl").write_text(manifest.read_text().splitlines()[0] + "\n")
    shutil.copy(uneven["dir"] / "train-000001.tar", tmp_path / "train-000001.tar")
    assert manifest_sample_counts(str(tmp_path / "train-{000000..000001}.tar")) is None
    assert manifest_sample_counts(str(copied)) == [1]


def test_equal_epoch_only_on_several_ranks(uneven):
    """One process and --steps-per-epoch keep their epochs; 12 samples for 4 ranks in batches of
    2: 1 batch each; too few samples for a step on every rank is refused."""
    assert equal_epoch(_cfg(uneven["train"]), _info(0, 1)) is None
    assert equal_epoch(_cfg(uneven["train"], steps_per_epoch=3), _info(0, 2)) is None
    assert equal_epoch(_cfg(uneven["train"]), _info(1, 4)) == EqualEpoch(1)
    assert equal_epoch(_cfg(uneven["train"], accum_steps=2), _info(0, 2)) == EqualEpoch(2)  # 3 -> whole steps
    with pytest.raises(ValueError, match=r"12 sample\(s\) .* 0 batch\(es\) of 2 per rank for 7 ranks"):
        equal_epoch(_cfg(uneven["train"]), _info(0, 7))


@pytest.mark.parametrize("ranks, workers", [(2, 2), (4, 1), (3, 2)])
def test_every_rank_reads_the_same_number_of_batches(uneven, ranks, workers):
    """3 shards of 4 samples: for 2 ranks x 2 workers (3 shards for 4 readers), 4 ranks (fewer
    shards than ranks) and 3 ranks x 2 workers, each rank's loader runs for at least the equal
    epoch's batches (12 // (ranks x 2)) without running dry, and exactly that many as training
    takes them; in a one-pass epoch the same ranks would have read different numbers, or none."""
    equal = equal_epoch(_cfg(uneven["train"]), _info(0, ranks))
    assert equal.num_batches == 12 // (ranks * BATCH)
    for rank in range(ranks):
        def loader():
            pipe = build_train_pipeline(uneven["train"], CLIP, BATCH, seed=0, epoch=1, equal=equal, rank=rank,
                                        world_size=ranks, shuffle_buffer=4)
            return make_loader(pipe, workers)
        available = sum(1 for _ in loader())
        assert available >= equal.num_batches, (rank, available)
        assert sum(1 for _ in loader().slice(equal.num_batches)) == equal.num_batches


def test_shared_shards_are_read_once_per_pass_then_again(uneven):
    """4 ranks on 3 shards (reader 3 shares the first with reader 0): the first passes of all
    ranks together hold every sample once; a rank that needs more reads its share again, marked
    as a repeat (a new clip is drawn from it)."""
    urls = [{"url": str(uneven["dir"] / f"train-{i:06d}.tar")} for i in range(3)]
    first, repeats = Counter(), 0
    for rank in range(4):
        for raw in read_share(urls, rank, 4, EqualEpoch(2), BATCH, ReadConfig(), handler=None):
            if raw.get(REPEAT):
                repeats += 1
            else:
                first[raw["__key__"]] += 1
    assert len(first) == 12 and set(first.values()) == {1}
    assert repeats > 0


def test_manifest_read_over_http(uneven):
    """Shards behind an HTTP server on loopback: the manifest beside them is read the way the
    shards are (curl, ``ReadConfig``'s timeouts)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import needs

    needs.curl()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(uneven["dir"]))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            assert manifest_sample_counts(f"{base}/train-{{000000..000002}}.tar") == [4, 4, 4]
            assert manifest_sample_counts(f"{base}/missing/train-000000.tar") is None
        finally:
            server.shutdown()
