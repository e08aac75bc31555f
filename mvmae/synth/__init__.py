"""``mvmae synth``: synthetic action datasets whose classes differ by motion alone.

Top-down views of a textured actor moving over textured ground, under a drifting camera, encoded
as real H.264 (libx264: B-frames, several references, fixed GOP). Every clip draws a new actor,
ground, start position, speed and camera drift, so a single frame carries no class information.
Two presets (:class:`SynthConfig` ``preset``):

- ``basic`` (:data:`PATTERNS`): 8 classes told apart by the DIRECTION of motion (walk
  right/left/down/up, circle cw/ccw, pacing), value-noise ground. Used by the tests, the demo and
  the benchmarks; its output is unchanged from mvmae 0.1 for the same config.
- ``trajectories`` (:data:`TRAJECTORIES`): 12 path shapes at a random orientation, speed and
  start time, told apart only by how the velocity evolves over time (the mean velocity and any
  single frame carry nothing); real-photo ground, a camera pan that changes slowly, one or two
  distractors, an actor big enough that about a tenth of the MV cells move; test split and an
  unlabelled pool for pretraining.

Modules: ``config`` (SynthConfig), ``patterns`` and ``trajectories`` (the classes), ``ground``,
``sprites``, ``render`` (basic) and ``scene`` (trajectories, with the ground truth), ``encode``
(libx264), ``dataset`` (make_dataset: files and lists).
"""

from mvmae.synth.config import PRESETS, SynthConfig
from mvmae.synth.dataset import make_dataset, pool_classes, split_counts
from mvmae.synth.encode import encode_h264, x264_options
from mvmae.synth.patterns import PATTERNS
from mvmae.synth.render import render_clip
from mvmae.synth.scene import TrajectoryTruth, plan_trajectory, render_trajectory
from mvmae.synth.trajectories import FLIP_PAIRS, TRAJECTORIES

__all__ = ["FLIP_PAIRS", "PATTERNS", "PRESETS", "TRAJECTORIES", "SynthConfig", "TrajectoryTruth",
           "encode_h264", "make_dataset", "plan_trajectory", "pool_classes", "render_clip",
           "render_trajectory",
           "split_counts", "x264_options"]
