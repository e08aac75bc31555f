"""Helpers for tests/eval: what the two ranks of the shared torchrun launch (``two_ranks`` in
tests/conftest.py, ``tests/two_ranks.py``) gathered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gathered(two_ranks: Path) -> list[dict]:
    """What each of the two torchrun ranks ended with after ``two_ranks.gather``."""
    return [json.loads((two_ranks / f"rank{rank}.json").read_text()) for rank in range(2)]
