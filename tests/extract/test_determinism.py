"""Extraction is bit-reproducible: run to run, process to process, and with slice threads.

FFmpeg's frame threading changes exported B-frame vectors from run to run (FACTS.md); the decoder
must therefore never use it. bikes.mp4 has B-frames, 4 references and a b-pyramid.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from mvmae.extract import h264
from mvmae.extract.config import ExtractConfig
from mvmae.extract.export import load_export
from mvmae.extract.video import extract_video

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
except ImportError:  # ... or as the `tests` package
    from tests import media

REPO = Path(__file__).resolve().parents[2]

_SUBPROCESS = """
import sys
from mvmae.extract import h264
from mvmae.extract.config import ExtractConfig
from mvmae.extract.export import save_export
from mvmae.extract.video import extract_video
save_export(sys.argv[2], extract_video(sys.argv[1], ExtractConfig()))
"""


def _assert_identical(a, b) -> None:
    assert a.mv.dtype == b.mv.dtype == np.float32
    np.testing.assert_array_equal(a.mv, b.mv)
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_array_equal(a.frame_types, b.frame_types)
    np.testing.assert_array_equal(a.iframes, b.iframes)
    np.testing.assert_array_equal(a.iframe_index, b.iframe_index)
    assert a.mv.tobytes() == b.mv.tobytes()  # bit-identical, -0.0 and NaN payloads included


def test_same_process_runs_are_identical(bikes_fields, bikes_mp4) -> None:
    first = bikes_fields["resolved"]
    assert first.valid.any() and first.mv.any()
    for _ in range(2):  # with the session fixture: three runs in this process
        _assert_identical(first, extract_video(bikes_mp4, ExtractConfig()))


def test_subprocess_run_is_identical(bikes_fields, bikes_mp4, tmp_path: Path) -> None:
    out = tmp_path / "bikes.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _SUBPROCESS, str(bikes_mp4), str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _assert_identical(bikes_fields["resolved"], load_export(out))


def test_slice_threads_are_identical(bikes_fields, bikes_mp4) -> None:
    _assert_identical(bikes_fields["resolved"], extract_video(bikes_mp4, ExtractConfig(threads=2)))


@pytest.fixture(scope="module")
def four_slice_mp4(tmp_path_factory) -> Path:
    """bikes.mp4 has one slice per picture, so slice threads have nothing to split there: a pan
    (content +2.5, -1 px/frame) with 4 slices per picture, 3 B-frames, refs 4, GOP 24."""
    options = media._x264_options(bframes=3, refs=4, gop=24, crf=18)
    options["x264-params"] += ":slices=4"
    frames = media.render_pan(vx=2.5, vy=-1, num_frames=48)
    path = media._encode(tmp_path_factory.mktemp("slices") / "four_slices.mp4", frames, options=options)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        length_size, _ = h264.parse_avcc(bytes(stream.codec_context.extradata))
        slices = {sum(n[0] & 0x1F in (h264.NAL_SLICE, h264.NAL_IDR) for n in h264.iter_nals(p, length_size))
                  for p in container.demux(stream) if p.size}
    assert slices == {4}
    return path


@pytest.mark.parametrize("threads", [2, 4])
def test_slice_threads_on_a_multi_slice_stream_are_identical(four_slice_mp4, threads: int) -> None:
    one = extract_video(four_slice_mp4, ExtractConfig(threads=1))
    assert one.valid.any()
    _assert_identical(one, extract_video(four_slice_mp4, ExtractConfig(threads=threads)))


def test_raw_runs_are_identical(bikes_fields, bikes_mp4) -> None:
    _assert_identical(bikes_fields["raw"], extract_video(bikes_mp4, ExtractConfig(raw=True, threads=2)))
