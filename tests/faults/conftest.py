"""Fixtures of the fault-injection suite shared by several of its modules; the helpers they use
are plain modules beside this one (``processes``, ``extract_faults``, ``shard_faults``,
``train_faults``)."""

from __future__ import annotations

import pytest

import shard_faults
import train_faults
from s3_server import s3_server


@pytest.fixture(scope="session")
def fault_data(tmp_path_factory) -> dict:
    """Synthetic shards, codebook and the two run configs of the training fault tests."""
    return train_faults.build_fault_data(tmp_path_factory)


@pytest.fixture(scope="session")
def references(fault_data, tmp_path_factory):
    """``references(kind) -> Reference``: the uninterrupted run of ``kind``, once per session."""
    return train_faults.reference_runs(fault_data, tmp_path_factory)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """The session's small extraction reference: 12 clips, the local run's 4 shards
    (:func:`shard_faults.fault_dataset`)."""
    return shard_faults.fault_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def s3():
    """A real S3 server on loopback with its fault middleware, one per module
    (:func:`s3_server.s3_server`)."""
    with s3_server() as server:
        yield server
