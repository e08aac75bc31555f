"""Forking DataLoader workers safely from a process that has other threads.

CPython before 3.11.8 (gh-112275; 3.12 has the fix) can deadlock a forked child in
``PyOS_AfterFork_Child`` when another thread of the parent held the runtime's thread-list lock at
the moment of the fork: the child waits on that lock forever. A thread takes it while it starts
and while it exits. In training that is the last batch's aftermath: the previous DataLoader has
just shut down, and the feeder threads of its closed queues are exiting while the next loader
(validation, or the next epoch) forks its workers. A distributed rank that forks a worker into
this hang waits for it without end (seen once in ``tests/train/test_distributed_nodes.py`` on
Python 3.11.7, with gloo's threads alongside).

:func:`settle_exiting_feeders` narrows that window before a fork: it waits, within a small
budget, for multiprocessing's queue feeder threads to end, then for the interpreter to finish
tearing them down. Feeders of queues still in use are not waited for past the budget.
"""

from __future__ import annotations

import sys
import threading
import time

FEEDER_NAME = "QueueFeederThread"  # multiprocessing.queues.Queue._start_thread
NEEDED = sys.version_info < (3, 11, 8)  # 3.10 and older included


def settle_exiting_feeders(budget_s: float = 1.0, teardown_s: float = 0.02) -> int:
    """Join the queue feeder threads of this process, ``budget_s`` in all, then pause
    ``teardown_s``: a thread's end is signalled before the interpreter unlinks its state, and a
    feeder may have ended just before we looked. Returns how many feeders ended while waited for.
    A no-op where CPython has the fix."""
    if not NEEDED:
        return 0
    deadline = time.monotonic() + budget_s
    ended = 0
    for thread in threading.enumerate():
        if thread.name != FEEDER_NAME or thread is threading.current_thread():
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        ended += not thread.is_alive()
    time.sleep(teardown_s)
    return ended
