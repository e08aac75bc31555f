"""The optional engines and stores name their extra when it is missing: one line, exit status 1.

The package is made unimportable in a fresh interpreter (``sys.modules[name] = None``, Python's
own way of marking a module absent) before the real CLI runs on a real list.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

RUN = "import sys; sys.modules[{module!r}] = None; from mvmae.cli import main; main({args!r})"


@pytest.mark.parametrize("module,extra_args,message", [
    ("ray", ["--engine", "ray"], "error: --engine ray needs Ray: pip install 'mvmae[ray]'"),
    ("s3fs", [], "pip install 'mvmae[s3]'"),
    ("gcsfs", [], "pip install 'mvmae[gcs]'"),
])
def test_missing_extra_is_one_line(job_list_names, tmp_path, module, extra_args, message) -> None:
    out = {"s3fs": "s3://bucket/shards", "gcsfs": "gs://bucket/shards"}.get(module, str(tmp_path / "out"))
    args = ["extract", "run", str(job_list_names), out, "--scratch", str(tmp_path / "scratch"), *extra_args]
    proc = subprocess.run([sys.executable, "-c", RUN.format(module=module, args=args)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
