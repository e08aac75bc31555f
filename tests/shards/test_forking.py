"""``mvmae.shards.forking``: before a DataLoader forks its workers, the feeder threads of the
previous loader's closed queues have ended (CPython < 3.11.8 can hang a child forked while a thread
exits: gh-112275), and a feeder still in use is not waited for past the budget."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from mvmae.shards import forking
from mvmae.shards.clips import ClipConfig
from mvmae.shards.reader import build_eval_pipeline, make_loader

pytestmark = pytest.mark.skipif(not forking.NEEDED, reason="this CPython has the fix of gh-112275")


def feeders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == forking.FEEDER_NAME]


def test_feeders_of_an_exhausted_loader_have_ended(reader_dataset) -> None:
    clip = ClipConfig(num_frames=8, mode="center", num_iframes=0)
    keys = [k for batch in make_loader(build_eval_pipeline(reader_dataset["urls"], clip, 2), 2, timeout_s=60)
            for k in batch["key"]]
    assert len(keys) == len(reader_dataset["videos"])
    forking.settle_exiting_feeders()
    assert feeders() == []
    # and the next loader (which settles first) reads the same again
    again = [k for batch in make_loader(build_eval_pipeline(reader_dataset["urls"], clip, 2), 2, timeout_s=60)
             for k in batch["key"]]
    assert sorted(again) == sorted(keys)


def test_a_feeder_in_use_is_left_running() -> None:
    queue = multiprocessing.Queue()
    queue.put("x")  # starts the queue's feeder thread
    assert queue.get(timeout=10) == "x"
    assert len(feeders()) == 1
    assert forking.settle_exiting_feeders(budget_s=0.2) == 0
    assert len(feeders()) == 1  # still there, its queue still usable
    queue.put("y")
    assert queue.get(timeout=10) == "y"
    queue.close()
    queue.join_thread()
    assert feeders() == []
