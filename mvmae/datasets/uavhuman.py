"""UAV-Human (Li et al., CVPR 2021): cross-subject splits CSv1 and CSv2 from the file names.

A video's name says who and what, e.g. ``P070S01G10B00H10UC102000LC092000A031R0_09131758.avi``:
``P070`` the main subject (person ID), ``A031`` the action (0-based, 155 actions), the rest the
setup, clothing, replicate and a capture timestamp. The training subjects of both protocols are
copied from the dataset's own README, section "Action Recognition Evaluation Protocols"
(https://github.com/sutdcv/UAV-Human, README.md at commit 01ce7233f2e5ff46c28fbffd94dec8d03a2ece50):
"we split 119 subjects into training and testing groups. The IDs of training subjects are ...;
the remaining subjects are for testing." The README publishes no action names, so the classes
are named by their codes, ``A000`` ... ``A154``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from mvmae.datasets.lists import ListEntry, SplitSet, find_videos

log = logging.getLogger(__name__)

NUM_SUBJECTS = 119  # person IDs 0..118
NUM_ACTIONS = 155   # action labels 0..154
CLASSES = [f"A{a:03d}" for a in range(NUM_ACTIONS)]

# Training subject IDs, verbatim from the UAV-Human README (see the module docstring).
CSV1_TRAIN_SUBJECTS = frozenset({
    0, 2, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 25, 26, 27, 28, 29, 30, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 55, 56, 57, 59, 61,
    62, 63, 64, 65, 67, 68, 69, 70, 71, 73, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89,
    90, 98, 100, 102, 103, 105, 106, 110, 111, 112, 114, 115, 116, 117, 118})
CSV2_TRAIN_SUBJECTS = frozenset({
    0, 3, 4, 5, 6, 8, 10, 11, 12, 14, 16, 18, 19, 20, 21, 22, 24, 26, 29, 30, 31, 32, 35, 36, 37, 38,
    39, 40, 43, 44, 45, 46, 47, 49, 52, 54, 56, 57, 59, 60, 61, 62, 63, 64, 66, 67, 69, 70, 71, 72,
    73, 74, 75, 77, 78, 79, 80, 81, 83, 84, 86, 87, 88, 89, 91, 92, 93, 94, 95, 96, 97, 99, 100,
    101, 102, 103, 104, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 117, 118})
PROTOCOLS = {"csv1": CSV1_TRAIN_SUBJECTS, "csv2": CSV2_TRAIN_SUBJECTS}

NAME_PATTERN = re.compile(
    r"P(?P<subject>\d{3})S(?P<setup>\d{2})G\d{2}B\d{2}H\d{2}UC\d{6}LC\d{6}"
    r"A(?P<action>\d{3})R(?P<replicate>\d)_(?P<timestamp>\d{8})")


@dataclass(frozen=True)
class UavHumanName:
    """What a UAV-Human file name says: main subject (person ID), setup, action, replicate."""

    subject: int
    setup: int
    action: int
    replicate: int


class UavHumanNameError(ValueError):
    """A file name that is not a UAV-Human video name (the reason in the message)."""


def parse_name(path: Path) -> UavHumanName:
    """The fields of ``path``'s stem; raises ``UavHumanNameError`` naming what does not fit."""
    match = NAME_PATTERN.fullmatch(path.stem)
    if match is None:
        raise UavHumanNameError("not a UAV-Human name (P###S##G##B##H##UC######LC######A###R#_########)")
    name = UavHumanName(int(match["subject"]), int(match["setup"]), int(match["action"]),
                        int(match["replicate"]))
    if name.subject >= NUM_SUBJECTS:
        raise UavHumanNameError(f"subject P{name.subject:03d} outside the dataset's 0..{NUM_SUBJECTS - 1}")
    if name.action >= NUM_ACTIONS:
        raise UavHumanNameError(f"action A{name.action:03d} outside the dataset's 0..{NUM_ACTIONS - 1}")
    return name


def build_splits(root: Path) -> tuple[dict[str, SplitSet], list[str]]:
    """CSv1 and CSv2 (``{"csv1": SplitSet(train, test), "csv2": ...}``) from the videos under
    ``root``, and the files skipped (``"path: reason"``; never fatal). Label = action index."""
    parsed: list[tuple[Path, UavHumanName]] = []
    problems = []
    for path in find_videos(root):
        try:
            parsed.append((path.resolve(), parse_name(path)))
        except UavHumanNameError as exc:
            problems.append(f"{path}: {exc}")
    log.info(f"{len(problems)} file(s) under {root} skipped: names that do not parse")
    result = {}
    for protocol, train_subjects in PROTOCOLS.items():
        splits: dict[str, list[ListEntry]] = {"train": [], "test": []}
        for path, name in parsed:
            split = "train" if name.subject in train_subjects else "test"
            splits[split].append(ListEntry(path, name.action))
        result[protocol] = SplitSet(splits, CLASSES, problems)
    return result, problems


def subjects_of(entries: list[ListEntry]) -> set[int]:
    """The subject IDs of listed UAV-Human videos (from their names)."""
    return {parse_name(e.path).subject for e in entries}
