"""The ``mvmae`` command line. The only place that turns exceptions into exit codes and messages.

``base`` holds the root group and the error reporting; each module registers the commands of
one stage on it: ``data`` (probe, check, extract video, synth), ``extract_run`` (extract run),
``shards`` (inspect, verify, export), ``training`` (codebook, pretrain, train, eval, demo),
``predict``, ``export`` (a classifier to ONNX or TorchScript), ``datasets`` (uavhuman, kinetics,
folders).
"""

from mvmae.cli import (data, datasets, export, extract_run, predict, shards,  # noqa: F401  (registers their commands)
                       training)
from mvmae.cli.base import handle_errors, main

__all__ = ["handle_errors", "main"]
