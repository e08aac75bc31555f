"""Run-description helpers shared by the benchmark scripts (machine, repository state, load)."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_state() -> str:
    """'commit abc1234 (mvmae/ clean)' or how many paths under mvmae/ are uncommitted."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO)
        return proc.stdout.strip() if proc.returncode == 0 else ""
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "mvmae")
    return f"commit {head}" + (f" + uncommitted changes in {len(dirty.splitlines())} path(s) under mvmae/"
                               if dirty else " (mvmae/ clean)")


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, 'a / b / c'."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what platform knows)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")),
                        platform.processor() or "unknown")
    except OSError:
        return platform.processor() or "unknown"


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None
