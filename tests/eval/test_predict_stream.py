"""``mvmae predict -``: a live MPEG-TS stream on stdin, predicted window by window as it arrives,
a damaged stretch reported and decoding resumed at the next IDR; each window predicted as
``mvmae predict`` predicts the same frames. The classifier of tests/eval/conftest.py (``trained``:
2 segments of 16 frames, so 32-frame windows, 1.28 s at 25 fps); real libx264 streams
(``tests/live_media.py``)."""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import live_media
except ImportError:  # ... or as the `tests` package
    from tests import live_media

from mvmae.cli import main

REPO = Path(__file__).resolve().parents[2]
FPS, WINDOW_FRAMES = 25, 32
WINDOW_S = WINDOW_FRAMES / FPS
TIMEOUT_S = 300  # python, torch and numba start in a few seconds, slower on a loaded machine

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"no line within {timeout_s} s"
    return proc.stdout.readline().decode()


def test_a_damaged_stream_on_stdin_is_predicted_as_it_arrives(trained, tmp_path):
    ts = live_media.make_ts_stream(num_frames=200, fps=FPS, gop=25)  # 8 s, an IDR every second
    pictures = live_media.ts_pictures(ts)
    bad, damaged = live_media.damage_ts(ts, len(ts) // 2, 6, seed=0)
    hit_pictures = live_media.damaged_pictures(pictures, damaged)  # decode order
    hit = [p.time_s for p in hit_pictures]
    resync_s = next(p.time_s for p in pictures[pictures.index(hit_pictures[-1]) + 1:] if p.is_idr)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mvmae", "predict", "--ckpt", str(trained["ckpt"]),
                             "--top-k", "3", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        # The stream up to the damage: its first windows come out before the rest is sent.
        proc.stdin.write(bad[:damaged.start])
        proc.stdin.flush()
        first = _readline(proc, TIMEOUT_S)
        proc.stdin.write(bad[damaged.start:])
        proc.stdin.close()
        proc.stdin = None  # closed: communicate() only reads
        rest, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
        proc.kill()
    lines = [json.loads(line) for line in [first, *rest.decode().splitlines()]]
    assert proc.returncode == 1, stderr.decode()
    assert "resynchronised at the keyframe" in stderr.decode()

    # One line per window, in order: 1.28 s windows, no overlap, the last one cut at 8 s.
    assert [w["window"] for w in lines] == list(range(7))
    assert [w["start"] for w in lines] == pytest.approx([k * WINDOW_S for k in range(7)], abs=1e-3)
    assert [w["end"] for w in lines] == pytest.approx([(k + 1) * WINDOW_S for k in range(6)] + [8.0], abs=1e-3)
    assert [w.get("partial", False) for w in lines] == [False] * 6 + [True]
    # Windows showing a damaged picture: an error; from the IDR after the damage on: predicted
    # again; before the damage (and the B-frames it can reach): predicted.
    errors = {w["window"] for w in lines if "error" in w}
    assert {w["window"] for w in lines if any(w["start"] <= t < w["end"] for t in hit)} <= errors
    reasons = [w["error"] for w in lines if "error" in w]  # a window given before the resync: "no keyframe yet"
    assert all("damaged stream from" in r for r in reasons)
    assert f"resynchronised at the keyframe at {resync_s:.3f} s" in reasons[-1]
    predicted = [w for w in lines if w["start"] >= resync_s or w["end"] <= min(hit) - 3 / FPS]
    assert len([w for w in predicted if w["start"] >= resync_s]) >= 2
    classes = json.loads((trained["shards"] / "classes.json").read_text())
    for w in predicted:
        assert "error" not in w and w["views"] == 1 and len(w["top"]) == 3, w
        scores = [t["score"] for t in w["top"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        assert all(t["class"] == classes[t["index"]] for t in w["top"])


def test_windows_are_predicted_as_predict_predicts_their_frames(trained, tmp_path):
    """A clean stream's windows of 32 frames against ``Predictor`` on the segments of 32 frames
    that ``extract run`` would cut from the same bytes as a file (the earlier I-frame carried)."""
    from mvmae.eval.predict import PredictConfig
    from mvmae.eval.predict_stream import StreamConfig, StreamPredictor
    from mvmae.extract.video import iter_segments
    from mvmae.shards.encoded import SAMPLE_KEY
    from mvmae.shards.sample import encode_sample

    ts = live_media.make_ts_stream(num_frames=3 * WINDOW_FRAMES, fps=FPS, gop=40)
    stream = StreamPredictor(PredictConfig(str(trained["ckpt"]), workers=0, device="cpu"),
                             StreamConfig(format="mpegts"), io.BytesIO(ts))
    try:
        windows = list(stream.predictions())
    finally:
        stream.close()
    assert [(w.window.start_s, w.window.partial, w.error) for w in windows] == [
        (pytest.approx(k * WINDOW_S), False, None) for k in range(3)]
    path = tmp_path / "stream.ts"
    path.write_bytes(ts)
    segments = list(iter_segments(path, stream.predictor.extract, max_frames=WINDOW_FRAMES))
    assert [s.iframe_index.tolist() for s in segments] == [[0], [-32, 8], [-24, 16]]  # I-frames at 0, 40, 80
    for w, segment in zip(windows, segments):
        np.testing.assert_array_equal(w.window.fields.mv, segment.mv)
        reference = stream.predictor.predict(str(path), encode_sample(SAMPLE_KEY, segment, 0, "", str(path)))
        np.testing.assert_allclose(w.prediction.scores, reference.scores, atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["-", "clip.mp4"], "comes alone"),
    (["-", "--out", "p.jsonl"], "without --out"),
    (["clip.mp4", "--window-s", "2"], "apply to a stream on stdin"),
])
def test_stream_options_are_checked(cli_runner, tmp_path, args, message):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"")
    result = cli_runner.invoke(main, ["predict", "--ckpt", str(ckpt), *args])
    assert result.exit_code == 2 and message in result.stderr
