"""``mvmae predict`` on raw videos against ``mvmae eval`` on shards of the same videos: the same
top-1 and the same scores over the same views (2 clips x 2 crops, both paths of the classifier);
input forms (list file with labels, folder); damaged and non-H.264 files named, the rest predicted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

try:  # tests/ run as rootdir-relative modules (no tests/__init__.py) ...
    import media
except ImportError:  # ... or as the `tests` package
    from tests import media

from mvmae.cli import main

VIEWS = ["--clips", "2", "--crops", "2"]

# trained: a classifier on the synthetic shards (tests/eval/conftest.py)
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py


def ok(result) -> None:
    assert result.exit_code == 0, f"{result.output}\n{result.stderr}\n{result.exception!r}"


def test_predict_agrees_with_eval_on_shards_of_the_same_videos(trained, cli_runner, tmp_path):
    report = tmp_path / "eval"
    ok(cli_runner.invoke(main, ["eval", "--ckpt", str(trained["ckpt"]), "--data", trained["val"], "--workers", "0",
                                "--out", str(report), *VIEWS]))
    evaluated = {r["key"]: r for r in map(json.loads, (report / "per_video.jsonl").read_text().splitlines())}
    # The dataset's val list ("path label" lines): the labels are ignored.
    out = tmp_path / "predictions.jsonl"
    result = cli_runner.invoke(main, ["predict", "--ckpt", str(trained["ckpt"]), str(trained["dir"] / "val.txt"),
                                      "--top-k", "4", "--json", "--out", str(out), *VIEWS])
    ok(result)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(evaluated) == trained["num_val"]
    for line in lines:
        reference = evaluated[Path(line["video"]).stem]
        assert line["views"] == 4 and line["top"][0]["index"] == reference["pred"]
        for top in line["top"]:
            assert top["score"] == pytest.approx(reference["scores"][top["index"]], abs=1e-5)


def test_the_extraction_options_come_from_the_checkpoint(trained):
    """``mvmae train`` records how its shards were extracted; predict extracts that way, a given
    option overriding the recorded one."""
    from mvmae.eval.predict import PredictConfig, Predictor
    from mvmae.train import checkpoint as ckpt

    recorded = ckpt.load_checkpoint(trained["ckpt"])[ckpt.EXTRA]["extraction"]
    assert recorded == {"grid": 8, "iframe_short_side": 256, "raw": False, "skip_loop_filter": "none"}
    extract = Predictor(PredictConfig(str(trained["ckpt"]), extract={"grid": 16})).extract
    assert (extract.grid, extract.iframe_short_side, extract.raw) == (16, 256, False)


def test_human_output_and_folder_input(trained, cli_runner, tmp_path):
    folder = tmp_path / "new"
    videos = sorted((trained["dir"] / "videos").rglob("*_000.mp4"))[:2]
    folder.mkdir()
    for v in videos:
        shutil.copy(v, folder / v.name)
    result = cli_runner.invoke(main, ["predict", "--ckpt", str(trained["ckpt"]), str(folder), "--top-k", "2",
                                      "--workers", "0"])
    ok(result)
    lines = result.stdout.splitlines()
    expected = sorted(str(folder / v.name) for v in videos)
    assert [line.split(":")[0] for line in lines] == expected
    classes = json.loads((trained["shards"] / "classes.json").read_text())
    for line in lines:
        shown = line.split(": ", 1)[1].split(", ")
        assert len(shown) == 2 and all(s.split()[0] in classes and 0 <= float(s.split()[1]) <= 1 for s in shown)


def test_bad_inputs_are_named_and_the_rest_predicted(trained, cli_runner, tmp_path):
    good = sorted((trained["dir"] / "videos").rglob("*.mp4"))[0]
    hevc = media.make_hevc_clip(tmp_path / "hevc.mp4")
    text = media.make_text_file(tmp_path / "notes.mp4")
    truncated = media.make_truncated_file(good, tmp_path / "truncated.mp4")
    missing = tmp_path / "missing.mp4"
    out = tmp_path / "p.jsonl"
    result = cli_runner.invoke(main, ["predict", "--ckpt", str(trained["ckpt"]), str(hevc), str(good), str(text),
                                      str(truncated), str(missing), "--out", str(out)])
    assert result.exit_code == 1
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [str(good)]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 5 and errors[-1] == "4 of 5 video(s) could not be predicted (named above)"
    for bad, line in zip((hevc, text, truncated, missing), errors):
        assert line.startswith(f"error: {bad}: ")
    assert "hevc" in errors[0].lower()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["video"] for r in records] == [str(p) for p in (hevc, good, text, truncated, missing)]
    assert [("error" in r) for r in records] == [True, False, True, True, True]
