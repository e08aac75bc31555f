"""Starting a run in its output folder: fresh, or resumed from ``last.pt``, after whatever a
killed or failed run left there.

Read and checked before anything is written (every rank): ``load_resume_state`` refuses to start
afresh over an earlier run's ``last.pt`` (that would silently restart its schedule), and refuses
to resume it with a configuration that changes its course (``check_resume_config``) or with other
inputs than it was trained with (``check_resume_inputs``: the class list, the codebook). Once the
steps of an epoch are counted, ``check_steps_per_epoch`` refuses shards that give another number.
Only then does the main rank, holding the folder's lock (``run_folder``), tidy the folder
(``prepare_folder``): temporary files of interrupted writes go, the copies of the last save are
completed, and ``metrics.jsonl`` loses the records the run is about to write again (epochs after
the checkpoint, a line torn by a kill).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

from mvmae.files import stale_temporaries
from mvmae.train import checkpoint as ckpt
from mvmae.train.config import fill_missing, plain_data
from mvmae.train.logs import METRICS_FILE, truncate_records
from mvmae.train.writes import writing

log = logging.getLogger(__name__)

# Fields a resumed run may change: where it runs and how patiently it reads its shards (a run
# that stalled may come back with longer timeouts), how often it logs and what it keeps, not what
# it computes. A name also frees the fields nested under it, except those in BOUND_FIELDS.
FREE_FIELDS = frozenset({"resume", "out", "log_every", "keep_last", "val_batch_size",
                         "compile", "deterministic", "read", "loader_timeout_s"})
# Free only for runs that draw their shards with replacement (steps_per_epoch > 0): over one pass
# of the shards, each DataLoader worker reads its own share of them, so their number decides the
# batches of an epoch (how many, and in which order).
RESAMPLED_FREE_FIELDS = frozenset({"workers"})
# Nested under a free name, but they change which samples train: a shard read without checking
# the CRCs delivers a damaged member that a check would have skipped.
BOUND_FIELDS = frozenset({"read.check_crc"})
_WHY_BOUND = {"workers": "each DataLoader worker reads its own share of the shards, so their number "
                         "decides an epoch's batches",
              "read.check_crc": "it decides which damaged samples are skipped"}
# Where the inputs are: a moved dataset keeps its content, so a change is only reported.
PATH_FIELDS = frozenset({"train", "val", "codebook", "classes", "pretrained", "init",
                         "model.context_weights"})
LOCK_NAME = ".lock"


class ResumeError(ValueError):
    """The run cannot start or resume in its output folder as asked (names the checkpoint)."""


def _field_pairs(saved: Mapping[str, Any], current: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """(saved, current) value of every field of config dataclass ``current`` that ``saved`` (its
    ``config_to_dict`` in a checkpoint) has too, by dotted name: a nested config dataclass field
    by field, any other value whole (a dict of options, a list). A field on one side only (added
    or removed by another mvmae version) is left out."""
    pairs: dict[str, tuple[Any, Any]] = {}
    for field in dataclasses.fields(current):
        if field.name not in saved:
            continue
        key, value = f"{prefix}{field.name}", getattr(current, field.name)
        if dataclasses.is_dataclass(value) and isinstance(saved[field.name], Mapping):
            pairs.update(_field_pairs(saved[field.name], value, f"{key}."))
        else:
            pairs[key] = (saved[field.name], plain_data(value))
    return pairs


def _is_free(key: str, resampled: bool) -> bool:
    if key in BOUND_FIELDS:
        return False
    names = FREE_FIELDS | RESAMPLED_FREE_FIELDS if resampled else FREE_FIELDS
    return any(key == name or key.startswith(f"{name}.") for name in names)


def check_resume_config(state: Mapping[str, Any], current: Any, path: Path) -> None:
    """Refuse (``ResumeError``) to continue checkpoint ``state`` with configuration ``current``
    (the new run's config dataclass) when a field that shapes training differs: model, data
    augmentation, optimizer, schedule, seed, and the data order (``workers`` unless the shards
    are resampled, ``read.check_crc``). ``epochs`` may grow once the saved run has finished (an
    extension, which replans the LR schedule); moved inputs are logged."""
    saved = fill_missing(state.get(ckpt.CONFIG) or {}, getattr(current, "LEGACY_DEFAULTS", {}))
    resampled = bool(saved.get("steps_per_epoch"))
    changed = {k: pair for k, pair in sorted(_field_pairs(saved, current).items())
               if not _is_free(k, resampled) and pair[0] != pair[1]}
    for key in PATH_FIELDS & changed.keys():
        old, new = changed.pop(key)
        log.warning(f"{path}: resuming with {key} {new!r} instead of {old!r} "
                    f"(assumed to hold the same data)")
    if "epochs" in changed:
        old, new = changed["epochs"]
        if state[ckpt.EPOCH] == old - 1 and new > old:  # the saved run finished: this extends it
            changed.pop("epochs")
            log.warning(f"{path}: extending a finished {old}-epoch run to {new} epochs; the learning-rate "
                        f"schedule is replanned over {new} epochs from here")
    if changed:
        diff = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        why = "".join(f"; {k}: {_WHY_BOUND[k]}" for k in changed if k in _WHY_BOUND)
        raise ResumeError(f"{path}: cannot resume with a different configuration ({diff}): a resumed run "
                          f"continues the saved schedule{why}; rerun with the saved values (--config "
                          f"config.yaml beside it) or start a new run in another --out")


def check_resume_inputs(state: Mapping[str, Any], inputs: Mapping[str, Any], path: Path) -> None:
    """Refuse (``ResumeError``) to continue checkpoint ``state`` when what its run was trained
    with, as recorded under ``EXTRA`` (the class list, the codebook's content), differs from
    ``inputs`` of the new run. Only the content counts: a moved codebook or class list with the
    same content resumes. Keys the checkpoint lacks (an older mvmae) are not compared."""
    saved = state.get(ckpt.EXTRA) or {}
    changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in inputs.items() if k in saved and saved[k] != v]
    if changed:
        raise ResumeError(f"{path}: cannot resume with other inputs ({', '.join(changed)}): the saved run "
                          f"was trained with those; start a new run in another --out")


def load_resume_state(manager: ckpt.CheckpointManager, resume: bool, current: Any, device: Any = "cpu",
                      inputs: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The checkpoint to continue (``last.pt``, checked against the new run's config dataclass
    ``current`` and its ``inputs``), or None to start afresh: not resuming, or resuming where no
    checkpoint was written yet (a run killed before its first save). Raises ``ResumeError`` when
    not resuming over an existing ``last.pt``. Writes nothing."""
    path = manager.last_path
    if not resume:
        if path.exists():
            raise ResumeError(f"{path}: an earlier run's checkpoint is there; pass --resume to continue "
                              f"it, or choose another --out for a new run")
        return None
    if not path.exists():
        log.info(f"--resume: no checkpoint in {manager.out_dir} yet; starting from the beginning")
        return None
    state = ckpt.load_checkpoint(path, map_location=device)
    check_resume_config(state, current, path)
    check_resume_inputs(state, inputs or {}, path)
    return state


def check_steps_per_epoch(state: Mapping[str, Any], steps_per_epoch: int, path: Path) -> None:
    """Refuse a resume whose epochs hold a different number of steps than the saved run's (the
    shards changed): the LR schedule, a function of the step, would no longer line up."""
    saved = state.get(ckpt.STEPS_PER_EPOCH)
    if saved is not None and saved != steps_per_epoch:
        raise ResumeError(f"{path}: the saved run had {saved} steps per epoch, the shards now give "
                          f"{steps_per_epoch}: resuming would shift the schedule; start a new run")


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in ``out_dir`` (never a final
    name). Only call it when no other process writes there (the main rank, at start)."""
    stale = stale_temporaries(out_dir, claimed=lambda name: True)  # every name: the run holds the folder
    for path in stale:
        with writing(path, "temporary file"):
            path.unlink(missing_ok=True)
    if stale:
        log.info(f"removed {len(stale)} temporary file(s) of interrupted writes in {out_dir}")
    return stale


def prepare_folder(manager: ckpt.CheckpointManager, state: Mapping[str, Any] | None) -> None:
    """Main rank, before the first write: tidy ``manager.out_dir`` for a run that starts afresh
    (``state`` None) or continues ``state``: stale temporaries removed, the last save's copies
    completed, and ``metrics.jsonl`` cut back to the records of the checkpointed epochs."""
    out = manager.out_dir
    remove_stale_temporaries(out)
    if state is not None:
        manager.restore(state)
        manager.complete(state)
    dropped = truncate_records(out / METRICS_FILE, state[ckpt.EPOCH] if state is not None else None)
    if dropped:
        log.info(f"{out / METRICS_FILE}: dropped {dropped} record(s) written after the checkpoint "
                 f"(they are written again)")
