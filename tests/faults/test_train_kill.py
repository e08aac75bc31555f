"""``kill -9`` of ``mvmae pretrain``, ``mvmae train`` (deterministic) and a 2-process torchrun
pretraining, then the same command with ``--resume`` (in one trial killed again, in the middle
of a checkpoint write): every resumed run ends bit-identical to the uninterrupted reference
(checkpoints, metric records, the learning rate at every step, phases), and while each run goes
no checkpoint that does not load is ever visible under its final name.

Per command: three kills at seeded random moments, one at the start of a checkpoint write, one
before the first checkpoint (pretrain) or in phase 2 (train). The random moments: the reference's
training window (from its config.yaml appearing, set-up done and epoch 0 beginning, to its last
checkpoint) from its first checkpoint (the moments before it have their own test) to its
``LATEST`` share is cut into ``NUM_STRATA`` equal strata, and each trial draws its moment
uniformly in its own stratum, so together they cover the run. A moment is reached as progress,
not as wall time (``Reference.moment``: after the records the reference had written by then,
plus the rest of the gap, and never before the run's first checkpoint), so a load spike on the
shared machine shifts where the kill lands by a fraction of an epoch at most.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import sys
from pathlib import Path

import pytest
import torch

from mvmae.eval.report import plot_training_curves
from train_faults import (
    CONFIGS, KINDS, TEMPORARY, Child, FolderWatch, assert_same_run, drive, job, ok,
    run, saved_epoch)

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

SEED = 7
NUM_STRATA, LATEST = 3, 0.9


def kill_fraction(kind: str, stratum: int, num_strata: int = NUM_STRATA, start: float = 0.0) -> float:
    """A share of the training window, uniform in stratum ``stratum`` of ``num_strata`` equal
    strata of [start, LATEST] (seeded)."""
    rng = random.Random(f"{SEED}/{kind}/{stratum}")
    return start + (LATEST - start) * (stratum + rng.random()) / num_strata


def kill_at(num_records: int, seconds: float, out: Path, after_checkpoint: bool = False):
    """A ``drive`` action: SIGKILL ``seconds`` after the run has written ``num_records`` metrics
    records (0: after its config.yaml appears); ``after_checkpoint``: and not before its first
    checkpoint (it follows the last record of epoch 0 by the time of a save)."""
    reached: dict[str, float] = {}

    def act(child, names, now) -> bool:
        if not reached and "config.yaml" in names and (not after_checkpoint or "last.pt" in names) and (
                num_records == 0 or (out / "metrics.jsonl").read_bytes().count(b"\n") >= num_records):
            reached["at"] = now
        return bool(reached) and now - reached["at"] >= seconds

    return act


def kill_in_epoch(epoch: int, share: float):
    """A ``drive`` action: SIGKILL ``share`` of an epoch into epoch ``epoch``, the epoch's length
    taken from this very run (between the checkpoints of the two epochs before it), so that the
    kill lands in that epoch however loaded the machine is."""
    seen: dict[str, float] = {}
    before, start = f"epoch_{epoch - 2:04d}.pt", f"epoch_{epoch - 1:04d}.pt"

    def act(child, names, now) -> bool:
        for name in (before, start):
            if name in names:
                seen.setdefault(name, now)
        if len(seen) < 2:
            return False
        return now - seen[start] >= share * (seen[start] - seen[before])

    return act


def kill_at_random(kind: str, fraction: float, data: dict, reference, out: Path, watch: FolderWatch,
                   act=None) -> int | None:
    """Run ``kind`` into ``out`` and SIGKILL it at ``fraction`` of the reference's training
    window, not before the run's first checkpoint when the reference had written it by then (or
    when ``act`` says); returns the epoch it had checkpointed (None: none yet)."""
    after_checkpoint = fraction >= reference.first_checkpoint
    killed = run(job(kind, data, out), out, out.parent / "killed.log", watch,
                 act=act or kill_at(*reference.moment(fraction), out, after_checkpoint))
    assert killed.killed, f"ended before its kill at {fraction:.2f}: {killed.output[-3000:]}"
    epoch = saved_epoch(out)
    log.info(f"{kind} killed at {fraction:.3f} (of the {reference.window:.2f} s training window, or of an "
             f"epoch); checkpointed epoch {epoch}")
    return epoch


def resume(kind: str, data: dict, out: Path, watch: FolderWatch, name: str = "resumed", **kwargs):
    return run(job(kind, data, out, "--resume"), out, out.parent / f"{name}.log", watch, **kwargs)


def folder_digest(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind,phase", [("pretrain", None), ("train", None), ("train", 2)],
                         ids=["pretrain", "train", "train-in-phase2"])
def test_killed_at_a_random_moment_resumes_exactly(kind, phase, fault_data, references, tmp_path):
    """A kill in the first stratum (after the first checkpoint); for ``train`` also one at a
    random moment of the first phase-2 epoch (timed by this run's own epochs: on a loaded machine
    the strata, timed by the reference, can all land in phase 1)."""
    reference = references(kind)
    out, watch = tmp_path / "run", FolderWatch(tmp_path / "run")
    if phase is None:
        epoch = kill_at_random(kind, kill_fraction(kind, 0, start=reference.first_checkpoint), fault_data,
                               reference, out, watch)
    else:
        first = CONFIGS[kind]["phase1_epochs"]
        share = kill_fraction("train-in-phase2", 0, 1) / LATEST
        epoch = kill_at_random(kind, share, fault_data, reference, out, watch,
                               act=kill_in_epoch(first, share))
        assert epoch in (first - 1, first), "the kill missed the first phase-2 epoch"
    assert epoch is not None, "the kill came before the first checkpoint"
    resumed = resume(kind, fault_data, out, watch)
    ok(resumed)
    assert f"resumed from {out / 'last.pt'}: epoch {epoch + 1}" in resumed.output
    if phase is not None:
        assert f"(phase {phase})" in resumed.output
    watch.check()
    assert_same_run(out, reference.summary)


@pytest.mark.parametrize("kind", KINDS)
def test_killed_again_while_writing_a_checkpoint(kind, fault_data, references, tmp_path):
    """A random kill, then the resumed run is killed in the middle of writing a checkpoint:
    stopped (SIGSTOP) the moment the temporary file of last.pt appears, killed if it is still
    there (else let go on to its next save). The half-written file stays behind under its
    temporary name and last.pt still loads; the next resume removes the leftover and ends like
    the reference."""
    reference = references(kind)
    out, watch = tmp_path / "run", FolderWatch(tmp_path / "run")
    kill_at_random(kind, kill_fraction(kind, 1, start=reference.first_checkpoint), fault_data, reference,
                   out, watch)

    def writing(names) -> bool:
        return any(TEMPORARY.match(n) and n.startswith(".last.pt.") for n in names)

    def writing_last(child, names, now) -> bool:
        if not writing(names):
            return False
        os.killpg(child.proc.pid, signal.SIGSTOP)  # the write stops where it is, then is looked at
        if writing(os.listdir(out)):
            return True  # drive SIGKILLs the stopped group
        os.killpg(child.proc.pid, signal.SIGCONT)  # the save had finished: wait for the next one
        return False

    second = resume(kind, fault_data, out, watch, "killed-again", act=writing_last, fast=True)
    assert second.killed, second.output[-3000:]
    leftovers = [n for n in os.listdir(out) if TEMPORARY.match(n)]
    assert any(n.startswith(".last.pt.") for n in leftovers), f"the kill came after the write: {leftovers}"
    assert saved_epoch(out) is not None
    watch.check()
    third = resume(kind, fault_data, out, watch)
    ok(third)
    assert "temporary file(s) of interrupted writes" in third.output
    watch.check()
    assert_same_run(out, reference.summary)  # the same file names: no temporary left


def refused_resume(kind: str, data: dict, out: Path, cli_runner, *flags: str):
    """``mvmae KIND ... --resume FLAGS`` in this process (it stops before training)."""
    from mvmae.cli import main

    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return cli_runner.invoke(main, job(kind, data, out, "--resume", *flags)[3:])
    finally:
        torch.use_deterministic_algorithms(deterministic)


@pytest.mark.parametrize("kind", KINDS)
def test_changed_config_is_refused_and_a_torn_record_is_dropped(kind, fault_data, references, tmp_path,
                                                               cli_runner):
    """After a random kill: a resume with another learning rate is refused with a message naming
    the field and both values, and touches nothing. Then the metrics file gets the torn line a
    kill in the middle of a write leaves (the first half of the record the run was about to
    write): the metrics report still plots the file, and the resume drops the torn line."""
    reference = references(kind)
    out, watch = tmp_path / "run", FolderWatch(tmp_path / "run")
    kill_at_random(kind, kill_fraction(kind, 2, start=reference.first_checkpoint), fault_data, reference,
                   out, watch)
    assert saved_epoch(out) is not None
    before = folder_digest(out)
    refused = refused_resume(kind, fault_data, out, cli_runner, "--lr", "0.01")
    assert refused.exit_code == 1
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"error: ResumeError: {out / 'last.pt'}: cannot resume with a different configuration "
        f"(lr {CONFIGS[kind]['lr']!r} -> 0.01)"), refused.stderr
    assert folder_digest(out) == before

    metrics = out / "metrics.jsonl"
    written = metrics.read_text().splitlines()
    upcoming = (reference.out / "metrics.jsonl").read_text().splitlines()[len(written)]
    with open(metrics, "a") as fh:
        fh.write(upcoming[:len(upcoming) // 2])
    assert plot_training_curves(metrics, tmp_path / "torn.png").is_file()
    resumed = resume(kind, fault_data, out, watch)
    ok(resumed)
    assert "record(s) written after the checkpoint" in resumed.output
    watch.check()
    assert_same_run(out, reference.summary)
    assert plot_training_curves(metrics, tmp_path / "curves.png").is_file()


def test_killed_before_the_first_checkpoint_starts_cleanly(fault_data, references, tmp_path):
    """Pretraining killed once its first step record is written, before any checkpoint:
    ``--resume`` finds none, starts from the beginning (dropping the early records) and ends
    exactly like the reference. (``train`` starts through the same code, ``resume``.)"""
    kind = "pretrain"
    reference = references(kind)
    out, watch = tmp_path / "run", FolderWatch(tmp_path / "run")
    metrics = out / "metrics.jsonl"

    def training_began(child, names, now) -> bool:
        assert "last.pt" not in names, "a checkpoint came before the kill"
        return "metrics.jsonl" in names and metrics.read_bytes().count(b"\n") >= 1

    killed = run(job(kind, fault_data, out), out, tmp_path / "killed.log", watch, act=training_began)
    assert killed.killed and saved_epoch(out) is None and metrics.read_text()
    resumed = resume(kind, fault_data, out, watch)
    ok(resumed)
    assert f"--resume: no checkpoint in {out} yet; starting from the beginning" in resumed.output
    watch.check()
    assert_same_run(out, reference.summary)


def test_torchrun_killed_and_resumed(fault_data, references, tmp_path):
    """2-process torchrun (gloo): the launcher and both workers killed at a random moment, then
    torchrun with ``--resume``: ends exactly like an uninterrupted torchrun run."""
    reference = references("torchrun")
    out, watch = tmp_path / "run", FolderWatch(tmp_path / "run")
    kill_at_random("torchrun", kill_fraction("torchrun", 0, 1), fault_data, reference, out, watch)
    ok(resume("torchrun", fault_data, out, watch))
    watch.check()
    assert_same_run(out, reference.summary)


def test_a_failure_while_driving_kills_the_run(tmp_path):
    """An assertion of the watcher or of an action (here: a timeout) must not leave the run
    going on in its own session after its test: drive kills the child's processes first."""
    child = Child([sys.executable, "-c", "import time; time.sleep(300)"], tmp_path / "sleeper.log")

    def times_out(child, names, now) -> bool:
        raise AssertionError("gave up waiting")

    with pytest.raises(AssertionError, match="gave up waiting"):
        drive(child, FolderWatch(tmp_path / "run"), act=times_out)
    assert child.proc.poll() == -signal.SIGKILL
