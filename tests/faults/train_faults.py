"""Fault injection for ``mvmae pretrain`` and ``mvmae train`` (used by ``test_train_kill.py`` and
``test_train_disk.py``): tiny real runs as child processes in their own process group, a watcher
that checks the output folder while they run, and the comparison with an uninterrupted run.

The data (``synth_data``'s synthetic dataset in real shards and its codebook, shared with the
training tests) and the uninterrupted reference runs are built once per session under the
session's temporary folder and shared by both modules.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

import synth_data
from processes import kill_tree
from mvmae.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]
KINDS = ("pretrain", "train")

# The smallest runs that still have something to lose: 6 epochs of 3 steps (12 train clips in
# batches of 4), a checkpoint per epoch with 2 rolling epoch files (so files rotate away while
# the watcher reads), per-step records (pretrain), EMA, dropout and random flips drawing from the
# RNG state that a resume restores (train), deterministic algorithms, no DataLoader workers.
PRETRAIN = {"model_size": "micro", "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
            "masking": "mgm", "batch_size": 4, "workers": 0, "epochs": 6, "warmup_epochs": 1,
            "lr": 3e-4, "log_every": 1, "keep_last": 2, "seed": 0}
# Phase 1 = epochs 0-2 (the Motion encoder frozen), phase 2 = epochs 3-5 (its top block trains).
# The motion path only: resnet18 on the I-frames would quadruple the training time.
TRAIN = {"model": {"inputs": "mv", "motion_size": "micro", "num_segments": 2, "dim": 32,
                   "temporal_heads": 4},
         "tokens": {"num_frames": 16, "mv_size": 8, "iframe_size": 64, "tubelet_frames": 4},
         "epochs": 6, "phase1_epochs": 3, "unfreeze_blocks": 1, "batch_size": 4, "val_batch_size": 8,
         "workers": 0, "lr": 1e-3, "warmup_epochs": 1, "label_smoothing": 0.0, "flip_prob": 0.5,
         "crop_area": [0.8, 1.0], "ema": 0.9, "keep_last": 2, "seed": 0}
CONFIGS = {"pretrain": PRETRAIN, "train": TRAIN}
RUN_TIMEOUT_S = 300

_FINAL_CHECKPOINT = re.compile(r"^(last|best|epoch_\d{4})\.pt$")
_OTHER_FINAL = {"config.yaml", "metrics.jsonl", "tensorboard", ".lock"}
TEMPORARY = re.compile(r"^\..+\.tmp-.+-\d+-[0-9a-f]{8}$")  # atomic writes': .<name>.tmp-<host>-<pid>-<tag>
_TIMING_FIELDS = ("time", "tokens_per_s")  # differ from run to run by nature


# --- data and commands --------------------------------------------------------------------------


def build_fault_data(tmp_path_factory) -> dict:
    """``synth_data``'s shards (4 classes; 12 train clips in 3 shards, 4 val clips) and 32-code
    codebook, and the two run configs: ``{"train", "val", "codebook", "pretrain_yaml",
    "train_yaml"}``. Built once per session; read-only for tests."""
    shards = synth_data.synth_shards(tmp_path_factory)
    data = {"train": shards["train"], "val": shards["val"],
            "codebook": str(synth_data.synth_codebook(tmp_path_factory))}
    root = tmp_path_factory.getbasetemp() / "train_faults_configs"
    root.mkdir(exist_ok=True)
    for kind, values in CONFIGS.items():
        path = root / f"{kind}.yaml"
        text = yaml.safe_dump({**values, "deterministic": True} if kind == "train" else values)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        data[f"{kind}_yaml"] = str(path)
    return data


def command(kind: str, data: dict, out: Path, *flags: str) -> list[str]:
    """``python -m mvmae.cli KIND`` on the fault data into ``out`` (train: ``--deterministic`` is in
    its YAML)."""
    inputs = ["--codebook", data["codebook"]] if kind == "pretrain" else ["--val", data["val"]]
    return [sys.executable, "-m", "mvmae.cli", "-v", kind, "--config", data[f"{kind}_yaml"],
            "--train", data["train"], *inputs, "--out", str(out), *flags]


def job(kind: str, data: dict, out: Path, *flags: str) -> list[str]:
    """``command`` for 'pretrain' and 'train'; 'torchrun': pretrain under a 2-process torchrun
    (gloo on CPU; the 3 train shards split 2 + 1, so 1 step per epoch)."""
    if kind != "torchrun":
        return command(kind, data, out, *flags)
    cmd = command("pretrain", data, out, *flags)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]]


def child_env() -> dict:
    """This checkout first, no GPU, one intra-op thread (the reference and every rerun reduce
    floats in the same order)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


# --- running and watching -----------------------------------------------------------------------


class FolderWatch:
    """Polls a run's output folder while it runs. Every version of a checkpoint that is visible
    under its final name must load (``torch.load`` here, from one open file, so a concurrent
    replace cannot mix versions); every name must be a final one or a hidden temporary one.
    Breaches go to ``problems``; ``temporaries`` are the temporary names seen."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.problems: list[str] = []
        self.temporaries: set[str] = set()
        self._verified: set[tuple] = set()
        self.num_loaded = 0

    def check(self) -> None:
        """No breach so far, and checkpoints were indeed loaded (the check was not vacuous)."""
        assert not self.problems, self.problems
        assert self.num_loaded > 0, f"no checkpoint in {self.out} was ever loaded"

    def poll(self, verify: bool = True) -> list[str]:
        try:
            names = os.listdir(self.out)
        except FileNotFoundError:
            return []
        for name in names:
            if TEMPORARY.match(name):
                self.temporaries.add(name)
            elif _FINAL_CHECKPOINT.match(name):
                if verify:
                    self._verify(self.out / name)
            elif name not in _OTHER_FINAL:
                self.problems.append(f"unexpected file {name}")
        return names

    def _verify(self, path: Path) -> None:
        try:
            fh = open(path, "rb")
        except FileNotFoundError:  # rotated away between listing and opening
            return
        with fh:
            st = os.fstat(fh.fileno())
            version = (st.st_ino, st.st_size, st.st_mtime_ns)
            if version in self._verified:
                return
            try:
                state = torch.load(fh, weights_only=True)
                assert isinstance(state, dict) and state[ckpt.VERSION] == ckpt.CHECKPOINT_VERSION
            except Exception as exc:  # any failure to read is the breach being looked for
                self.problems.append(f"{path.name} ({st.st_size} bytes) is not loadable: {exc!r}")
            self._verified.add(version)
            self.num_loaded += 1


@dataclass
class Child:
    """A command in its own session (process group), output in ``log``. ``sh`` with SIGXFSZ
    ignored runs it, so a file-size limit makes writes fail with EFBIG instead of killing it;
    ``file_size_limit`` (bytes, a multiple of 512) sets one from the start. Its output goes
    through a pipe that this process copies to ``log``: a limit on the child's file sizes does
    not reach its log (its last line is the error a test reads)."""

    cmd: list[str]
    log: Path
    file_size_limit: int | None = None
    proc: subprocess.Popen = field(init=False)
    started: float = field(init=False)
    _copier: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        limit = f"ulimit -f {self.file_size_limit // 512}; " if self.file_size_limit is not None else ""
        self.proc = subprocess.Popen(["sh", "-c", f'trap "" XFSZ; {limit}exec "$@"', "sh", *self.cmd],
                                     env=child_env(), cwd=self.log.parent, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._copier = threading.Thread(target=self._copy_output, name="child-output", daemon=True)
        self._copier.start()
        self.started = time.monotonic()

    def _copy_output(self) -> None:
        with self.proc.stdout as pipe, open(self.log, "ab") as fh:
            while chunk := pipe.read1(1 << 16):
                fh.write(chunk)
                fh.flush()

    def kill(self) -> None:
        """SIGKILL to the child's whole process tree, then wait until none of it runs any more."""
        kill_tree(self.proc.pid)
        self.proc.wait()

    def output(self) -> str:
        """The log; once the child has exited, all of it (the pipe is drained to its end)."""
        if self.proc.poll() is not None:
            self._copier.join(timeout=60)
        return self.log.read_text(errors="replace")


@dataclass
class Outcome:
    returncode: int
    killed: bool
    output: str
    seconds: float


def drive(child: Child, watch: FolderWatch, act: Callable[[Child, list[str], float], bool] | None = None,
          fast: bool = False) -> Outcome:
    """Poll ``watch`` until the child exits. After each poll ``act(child, names, seconds)`` may
    inject a fault (it may SIGSTOP the group, break the folder and SIGCONT it) and returns True
    to SIGKILL the group there. ``fast``: poll every 0.5 ms without loading checkpoints (to catch
    a write of a few ms), verifying only once the run is over. When anything fails here (an
    assertion of ``watch`` or ``act``, the time limit), the child's processes are killed before
    the error goes on: the run must not outlive its test."""
    killed = False
    try:
        while child.proc.poll() is None:
            names = watch.poll(verify=not fast)
            now = time.monotonic() - child.started
            if act is not None and act(child, names, now):
                child.kill()
                killed = True
                break
            assert now < RUN_TIMEOUT_S, f"{child.cmd[:5]} still running after {RUN_TIMEOUT_S} s"
            time.sleep(0.0005 if fast else 0.005)
    except BaseException:
        child.kill()
        raise
    watch.poll()  # the folder as the run left it
    return Outcome(child.proc.wait(), killed, child.output(), time.monotonic() - child.started)


def run(cmd: list[str], out: Path, log: Path, watch: FolderWatch | None = None, **kwargs) -> Outcome:
    """Start ``cmd`` (writing into ``out``) and ``drive`` it."""
    return drive(Child(cmd, log), watch or FolderWatch(out), **kwargs)


def ok(outcome: Outcome) -> None:
    assert outcome.returncode == 0 and not outcome.killed, outcome.output[-4000:]


# --- comparing with the reference ---------------------------------------------------------------


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(repr(obj).encode())


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a checkpoint's content except its config (which names the run's own --out and
    --resume): weights, optimizer moments, EMA, step, epoch, phase, trainable, best, RNG state."""
    state = ckpt.load_checkpoint(path)
    state.pop(ckpt.CONFIG)
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def records(out: Path) -> list[dict]:
    """metrics.jsonl without the timing fields; every line must be a complete JSON record."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in _TIMING_FIELDS} for line in lines]


def summary(out: Path) -> dict:
    """What a finished run is compared by: the folder's file names, every checkpoint's digest,
    the metric records."""
    names = sorted(p.name for p in out.iterdir() if p.name != "tensorboard")
    return {"names": names, "digests": {p.name: checkpoint_digest(p) for p in sorted(out.glob("*.pt"))},
            "records": records(out)}


def assert_same_run(out: Path, reference: dict) -> None:
    """``out`` finished exactly as the uninterrupted reference: same files (no temporary left),
    bit-identical checkpoints, and the same metric records in the same order (each epoch and
    step once, the same learning rate at every logged step, the same losses and val metrics)."""
    got = summary(out)
    assert got["names"] == reference["names"]
    got_records, expected = got["records"], reference["records"]
    assert [(r["split"], r["epoch"], r["step"]) for r in got_records] == \
        [(r["split"], r["epoch"], r["step"]) for r in expected]
    for a, b in zip(got_records, expected):
        assert a == b, (a, b)
    assert got["digests"] == reference["digests"]


@dataclass
class Reference:
    """An uninterrupted run: ``summary`` of its folder; ``window``: seconds from its config.yaml
    appearing (set-up done, epoch 0 begins) to its last checkpoint (after it the run only
    exits); ``record_times``: when each metrics record was written, in seconds into the window;
    ``first_checkpoint``: the share of the window at which epoch 0's last record was written
    (its checkpoint follows at once)."""

    out: Path
    summary: dict
    window: float
    record_times: list[float]
    first_checkpoint: float

    def moment(self, fraction: float) -> tuple[int, float]:
        """The moment ``fraction`` of the window as progress: (records written by then, seconds
        after the last of them, or after config.yaml when none). A run under other load reaches
        the same point of training by waiting for that many records, then that long."""
        at = fraction * self.window
        done = [t for t in self.record_times if t <= at]
        return len(done), at - (done[-1] if done else 0.0)


def reference_runs(fault_data: dict, tmp_path_factory) -> Callable[[str], Reference]:
    """``references(kind) -> Reference`` of ``job(kind, ...)``, run once per session (also when
    several modules ask; cached under the session's temporary folder)."""
    root = tmp_path_factory.getbasetemp() / "train_faults_references"

    def get(kind: str) -> Reference:
        out, meta = root / kind / "run", root / kind / "timeline.json"
        if not meta.exists():
            ok(run(job(kind, fault_data, out), out, root / kind / "run.log"))
            began = (out / "config.yaml").stat().st_mtime
            lines = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
            window = (out / "last.pt").stat().st_mtime - began
            first = max(r["time"] for r in lines if r["epoch"] == 0) - began
            meta.write_text(json.dumps({"window": window, "first_checkpoint": first / window,
                                        "record_times": [r["time"] - began for r in lines]}))
        timeline = json.loads(meta.read_text())
        return Reference(out, summary(out), timeline["window"], timeline["record_times"],
                         timeline["first_checkpoint"])

    return get


def error_line(output: str) -> str:
    """The CLI's one-line error: the last line of output that starts with 'error: '."""
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert lines, output[-3000:]
    return lines[-1]


def saved_epoch(out: Path) -> int | None:
    """The epoch of ``out/last.pt``, None when there is none."""
    path = out / "last.pt"
    return ckpt.load_checkpoint(path)[ckpt.EPOCH] if path.exists() else None
