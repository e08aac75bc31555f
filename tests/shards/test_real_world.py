"""Real-world videos through ``mvmae check``, ``extract run`` and the reader: a trimmed mp4 whose
edit list hides its only IDR, a raw stream starting on a non-IDR slice, a phone-style video with
a display rotation and its upright twin. Each is named in check's report and in the manifest;
every sample gives clips with I-frames; the rotated clip's field matches its twin's. And the
``extract run`` progress count only moves forward."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest

from mvmae.cli import main
from mvmae.shards.check import CheckConfig, check_dataset
from mvmae.job.job import JobConfig, run_job
from mvmae.shards.reader import ClipConfig, build_eval_pipeline, eval_skips

from job_outputs import read_manifest

try:
    import media
except ImportError:  # pragma: no cover
    from tests import media

VX, VY = 2.0, -1.0  # the pan on screen, px/frame
EXPECTED = {"trimmed": ["no_iframe"], "mid_stream": ["no_iframe"], "phone": ["rotated"], "twin": []}


@pytest.fixture(scope="module")
def real_world(tmp_path_factory) -> dict:
    """The four videos in a list (two classes) and ``extract run`` over it (2 workers, shards of
    2): ``{"list", "out", "progress": [(done, total), ...], "summary"}``."""
    d = tmp_path_factory.mktemp("real_world")
    media.make_edit_list_clip(d / "trimmed.mp4", vx=VX, vy=VY, num_frames=40)
    media.make_non_idr_start_stream(d / "mid_stream.h264", vx=VX, vy=VY, num_frames=40)
    media.make_rotated_clip(d / "phone.mp4", 90, vx=VX, vy=VY, num_frames=24)
    media.make_pan_clip(d / "twin.mp4", vx=VX, vy=VY, num_frames=24, bframes=2, refs=3, gop=12)
    listing = d / "list.txt"
    listing.write_text("trimmed.mp4 a\nmid_stream.h264 a\nphone.mp4 b\ntwin.mp4 b\n")
    progress: list[tuple[int, int]] = []
    summary = run_job(JobConfig(input=listing, out_dir=d / "shards", shard_size=2, workers=2),
                      lambda done, total: progress.append((done, total)))
    gc.collect()  # no PyAV garbage for forked DataLoader workers (see conftest.reader_dataset)
    return {"list": listing, "out": d / "shards", "progress": progress, "summary": summary}


def test_check_names_them(real_world) -> None:
    """``mvmae check``: warnings (the list passes), each video with its code and reason."""
    report = check_dataset(CheckConfig(input=real_world["list"], clip_frames=16, workers=0, min_class_videos=1))
    codes = {Path(v["source"]).stem: v["codes"] for v in report.videos}
    assert codes == EXPECTED and report.passed
    messages = {Path(v["source"]).stem: v["problems"][0]["message"] for v in report.videos if v["problems"]}
    assert "edit list hides 2 pictures" in messages["trimmed"]
    assert "non-IDR slice" in messages["mid_stream"]
    assert "rotation 90 degrees" in messages["phone"]
    assert report.videos[2]["stream"]["rotation"] == 90


def test_check_cli_table_shows_them(real_world, cli_runner) -> None:
    result = cli_runner.invoke(main, ["check", str(real_world["list"]), "--workers", "0",
                                      "--min-class-videos", "1"])
    assert result.exit_code == 0, result.output
    assert "no_iframe" in result.output and "rotated" in result.output


def test_manifest_names_them(real_world) -> None:
    """Every video ok; the manifest's ``warnings`` and the stats' ``warnings_by_code``."""
    summary = real_world["summary"]
    assert (summary.num_ok, summary.num_failed, summary.shards_redone) == (4, 0, 0)
    assert summary.warnings_by_code == {"no_iframe": 2, "rotated": 1}
    manifest = {Path(v["source"]).stem: v for v in read_manifest(real_world["out"])}
    assert {name: v["warnings"] for name, v in manifest.items()} == EXPECTED
    assert all(v["status"] == "ok" for v in manifest.values())


def test_progress_only_moves_forward(real_world) -> None:
    """The count given to the progress bar never goes back (the old count dropped each shard's
    videos while its tar was written) and ends at every video."""
    done = [d for d, _ in real_world["progress"]]
    assert done == sorted(done) and done[-1] == 4 and {t for _, t in real_world["progress"]} == {4}


def test_every_sample_gives_clips_with_iframes(real_world) -> None:
    """Both I-frame and motion paths serve every sample: the context frame stands in for the
    missing I-frame (at index 0), no sample is skipped."""
    urls = sorted(str(p) for p in real_world["out"].glob("train-*.tar"))
    skips = eval_skips()
    clips = {}
    for batch in build_eval_pipeline(urls, ClipConfig(mode="center", eval_crop="full"), 4, handler=skips):
        for i, key in enumerate(batch["key"]):
            clips[key] = {k: batch[k][i].numpy() for k in ("mv", "valid", "iframes", "iframe_index")}
    assert sorted(clips) == sorted(EXPECTED) and skips.skipped == 0
    assert clips["trimmed"]["iframe_index"].tolist() == [0] == clips["mid_stream"]["iframe_index"].tolist()
    for key in clips:
        assert clips[key]["iframes"].shape == (1, 3, 224, 224) and clips[key]["iframes"].std() > 10


def test_rotated_clip_matches_its_upright_twin(real_world) -> None:
    """The phone video's clip: the same field as its twin's (within coding noise), moving right
    and up on screen; the same I-frame."""
    urls = sorted(str(p) for p in real_world["out"].glob("train-*.tar"))
    clips = {}
    for batch in build_eval_pipeline(urls, ClipConfig(mode="center", eval_crop="full"), 4):
        for i, key in enumerate(batch["key"]):
            clips[key] = {k: batch[k][i].numpy() for k in ("mv", "valid", "iframes")}
    phone, twin = clips["phone"], clips["twin"]
    both = phone["valid"] & twin["valid"]  # (T, m, m)
    assert both.sum() >= 0.95 * twin["valid"].sum()
    scale = 224 / np.array([192, 144])  # source px -> output px, per axis (x, y)
    for c, v in enumerate((VX, VY)):
        assert float(np.median(phone["mv"][:, c][phone["valid"]])) == pytest.approx(v * scale[c], abs=0.15)
    assert np.abs(phone["mv"] - twin["mv"]).transpose(0, 2, 3, 1)[both].mean() < 0.2
    assert np.abs(phone["iframes"].astype(np.int16) - twin["iframes"]).mean() < 3.0
    record = json.loads((real_world["out"] / "train-000001.json").read_text())
    assert record["warnings_by_code"] == {"rotated": 1}


def test_training_with_both_inputs_validates_them(real_world, tmp_path) -> None:
    """What broke first: ``mvmae train --inputs both`` over these videos, validating on them too.
    One epoch of a tiny classifier (resnet18 on 64-px I-frames); validation sees all four, skips
    none."""
    import torch

    from mvmae.eval.metrics import StreamingMetrics
    from mvmae.train.config import load_config
    from mvmae.train.finetune import FinetuneConfig, Finetuner

    urls = sorted(str(p) for p in real_world["out"].glob("train-*.tar"))
    cfg = load_config(FinetuneConfig, None, {
        "model": {"inputs": "both", "motion_size": "micro", "context_model": "resnet18", "num_segments": 2,
                  "dim": 32, "temporal_heads": 4},
        "tokens": {"num_frames": 8, "mv_size": 8, "iframe_size": 64, "tubelet_frames": 4},
        "epochs": 1, "phase1_epochs": 0, "batch_size": 2, "val_batch_size": 4, "workers": 0,
        "flip_prob": 0.0, "train": urls, "val": urls, "out": str(tmp_path / "run")})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = Finetuner(cfg, StreamingMetrics).run()
    finally:
        torch.set_num_threads(threads)
    assert (metrics["num_samples"], metrics["num_samples_skipped"]) == (4, 0)
