"""What a new user meets first, run for real on the synthetic shards: ``mvmae pretrain --epochs 1``
under the 20-epoch default warm-up (cut to a tenth of the run, with a note), shard URLs after one
flag as a shell glob gives them (and the repeated flag as before), and ``mvmae train
--pretrained`` after ``mvmae pretrain --model-size tiny`` (the encoder's architecture and tokens
come from the checkpoint; a flag that says otherwise is a one-line error naming both values)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
import torch
import yaml
from click.testing import CliRunner

from mvmae.cli.base import UrlsOption
from mvmae.train import checkpoint as ckpt
from mvmae.train.finetune import load_classifier
from mvmae.train.schedule import SHORT_RUN_WARMUP_RATIO, lr_at, warmup_steps
from mvmae.train.tokenizer import TokenSpec

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py

LR = 3e-4  # PretrainConfig's default


def ok(result) -> None:
    assert result.exit_code == 0, f"{result.output}\n{result.stderr}\n{result.exception!r}"


def records(out: Path, split: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def globbed(shards: dict, split: str) -> list[str]:
    """What the shell makes of ``shards/<split>-*.tar``."""
    return sorted(str(p) for p in Path(shards["shards"]).glob(f"{split}-*.tar"))


@pytest.fixture(scope="module")
def tiny_pretrain(synth_shards, synth_codebook, cli_runner, tmp_path_factory):
    """(result, out) of ``mvmae pretrain --train <3 globbed shards> --model-size tiny --epochs 1``
    with the default warm-up of 20 epochs (and a small batch, no workers)."""
    from mvmae.cli import main

    out = tmp_path_factory.mktemp("tiny_pretrain") / "pt"
    result = cli_runner.invoke(main, [
        "pretrain", "--train", *globbed(synth_shards, "train"), "--codebook", str(synth_codebook),
        "--model-size", "tiny", "--epochs", "1", "--batch-size", "4", "--workers", "0",
        "--masking", "random", "--out", str(out)])
    return result, out


def test_warmup_steps_of_a_run_shorter_than_the_warmup() -> None:
    assert warmup_steps(20, 400, 50) == (1000, None)
    assert warmup_steps(3, 3, 10) == (30, None)  # as long as the run: kept
    steps, note = warmup_steps(20, 1, 50)
    assert steps == round(SHORT_RUN_WARMUP_RATIO * 50) == 5
    assert note == ("warmup_epochs 20 exceeds the run's 1 epoch(s): warming up over its first 5 of 50 steps "
                    "(10%) instead")
    with pytest.raises(ValueError, match="must be >= 0"):
        warmup_steps(-1, 1, 50)


def test_a_warmup_cut_to_no_step_says_there_is_none() -> None:
    assert warmup_steps(20, 2, 2) == (0, "warmup_epochs 20 exceeds the run's 2 epoch(s): no warm-up (10% of "
                                         "its 4 steps rounds to 0; --warmup-epochs 0 says so without this note)")


def test_pretrain_one_epoch_under_the_default_warmup_runs_with_a_note(tiny_pretrain, synth_shards):
    result, out = tiny_pretrain
    ok(result)
    assert ("warning: warmup_epochs 20 exceeds the run's 1 epoch(s): no warm-up (10% of its 3 steps rounds to 0"
            in result.stderr)
    (first, *_) = records(out, "train")  # logged every 10th step: the first
    assert first["step"] == 1 and first["lr"] == pytest.approx(lr_at(0, LR, 0, 3, 1e-6)) == LR
    (epoch,) = records(out, "epoch")
    assert epoch["step"] == synth_shards["num_train"] // 4  # every train shard was read


def test_several_urls_after_one_flag_are_all_read(tiny_pretrain, synth_shards):
    _, out = tiny_pretrain
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"] == globbed(synth_shards, "train") and len(saved["train"]) == 3


def test_urls_option_takes_both_forms() -> None:
    """Values after one flag up to the next option, the flag repeated, and both mixed."""

    @click.command()
    @click.option("--train", cls=UrlsOption)
    @click.option("--val", cls=UrlsOption)
    @click.option("--epochs", type=int)
    def command(train, val, epochs) -> None:
        click.echo(json.dumps([list(train), list(val), epochs]))

    def parse(*args: str) -> list:
        result = CliRunner().invoke(command, list(args))
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert parse("--train", "a.tar", "b.tar", "--val", "c.tar", "--epochs", "1") == [["a.tar", "b.tar"], ["c.tar"], 1]
    assert parse("--train", "a.tar", "--train", "b.tar") == [["a.tar", "b.tar"], [], None]
    assert parse("--train", "a.tar", "b.tar", "--val", "c.tar", "--train", "d.tar") == [
        ["a.tar", "b.tar", "d.tar"], ["c.tar"], None]
    assert parse("--train=a.tar", "b.tar") == [["a.tar", "b.tar"], [], None]


def test_train_after_a_tiny_pretrain_takes_its_encoder(tiny_pretrain, synth_shards, cli_runner, tmp_path):
    """No --motion-size: the classifier gets the checkpoint's tiny encoder (its weights, frozen in
    phase 1: unchanged after the epoch) and its token spec; --epochs 1 and several URLs after
    --train and --val; then ``mvmae eval --data`` over several URLs after one flag."""
    from mvmae.cli import main

    ok(tiny_pretrain[0])
    pretrained = tiny_pretrain[1] / "last.pt"
    out = tmp_path / "ft"
    result = cli_runner.invoke(main, [
        "train", "--train", *globbed(synth_shards, "train"), "--val", *globbed(synth_shards, "val"),
        "--pretrained", str(pretrained), "--inputs", "mv", "--segments", "2", "--dim", "32",
        "--epochs", "1", "--batch-size", "4", "--workers", "0", "--out", str(out)])
    ok(result)
    state = ckpt.load_checkpoint(pretrained)
    spec = TokenSpec(**state[ckpt.EXTRA]["token_spec"])
    model, classes, cfg = load_classifier(out / "last.pt")
    assert cfg.model.motion_size == "tiny" and cfg.tokens == spec and len(classes) == 4
    assert len(model.motion_encoder.blocks) == 12 and model.motion_encoder.config.dim == 192
    assert cfg.model.motion_embed == model.motion_encoder.config.embed == "conv"  # pretrain's default, carried
    encoder = model.motion_encoder.state_dict()
    for name, value in state[ckpt.MODEL].items():
        if name.startswith("encoder."):
            assert torch.equal(encoder[name[len("encoder."):]], value), name
    (val,) = records(out, "val")
    assert val["num_samples"] == synth_shards["num_val"]
    report = tmp_path / "eval"
    ok(cli_runner.invoke(main, ["eval", "--ckpt", str(out / "last.pt"), "--data", *globbed(synth_shards, "train"),
                                "--workers", "0", "--out", str(report)]))
    assert json.loads((report / "metrics.json").read_text())["num_samples"] == synth_shards["num_train"]


@pytest.mark.parametrize(("flag", "value", "named"), [
    ("--motion-size", "small", "--motion-size small conflicts with --pretrained {ckpt}, whose Motion encoder has "
                               "motion_size tiny"),
    ("--mv-size", "14", "--mv-size 14 conflicts with --pretrained {ckpt}, whose token spec has mv_size 8"),
    ("--segment-frames", "8", "--segment-frames 8 conflicts with --pretrained {ckpt}, whose token spec has "
                              "num_frames 16"),
])
def test_a_flag_against_the_pretrained_checkpoint_is_one_line(tiny_pretrain, synth_shards, cli_runner, tmp_path,
                                                             flag, value, named):
    from mvmae.cli import main

    ok(tiny_pretrain[0])
    pretrained = tiny_pretrain[1] / "last.pt"
    out = tmp_path / "ft"
    result = cli_runner.invoke(main, ["train", "--train", synth_shards["train"], "--pretrained", str(pretrained),
                                      flag, value, "--out", str(out)])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert named.format(ckpt=pretrained) in line and line.startswith("error: ")
    assert not out.exists()
