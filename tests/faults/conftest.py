"""Fixtures of the fault-injection suite shared by several of its modules; the helpers they use
are plain modules beside this one (``processes``, ``extract_faults``, ``shard_faults``,
``train_faults``)."""

from __future__ import annotations

import pytest

import train_faults


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory) -> dict:
    """Synthetic shards, codebook and the two run configs of the training fault tests."""
    return train_faults.build_fault_data(tmp_path_factory)


@pytest.fixture(scope="session")
def references(fault_data, tmp_path_factory):
    """``references(kind) -> Reference``: the uninterrupted run of ``kind``, once per session."""
    return train_faults.reference_runs(fault_data, tmp_path_factory)
