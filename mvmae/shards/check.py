"""``mvmae check``: a pre-flight over a whole dataset list before a long extraction job.

Every listed video is stat-ed, fingerprinted (size + SHA-1 of its first and last MiB) and probed
from the bitstream (:func:`mvmae.extract.probe.probe_video`: the whole file demuxed, headers and
slice types read, no decoding: 100-300 MB/s, 3 ms for a 10 s 640x272 clip), in supervised
processes if asked (:func:`mvmae.shards.check_files.inspect_all`). The listing as a whole
is then checked for duplicates, labels outside the class list and thin classes. Each problem has a
stable code (:data:`CODES`) and a severity:

- **error**: the video fails extraction, would be trained on under a wrong or unknown label, or
  would be counted twice; a gate (``mvmae check LIST && sbatch ...``) should stop.
- **warning**: the video extracts and trains, but something about it is worth knowing.

``allow`` demotes chosen error codes to warnings; ``strict`` makes every warning an error.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from mvmae import __version__
from mvmae.shards.check_codes import CODES, ERROR, WARNING
from mvmae.shards.check_files import inspect_all, stream_problems
from mvmae.shards.clips import ClipConfig
from mvmae.job.job import JobConfig
from mvmae.shards.videolist import VideoEntry, VideoListError, read_inputs
from mvmae.shards.writer import atomic_write_bytes

REPORT_FORMAT, REPORT_VERSION = "mvmae-check", 1


@dataclass
class CheckConfig:
    """Options of one ``mvmae check`` run.

    input: a ``path label`` list file or a folder of class subfolders (as ``extract run``).
    classes: an existing class list (JSON list of names, e.g. a previous job's classes.json, or a
    text file of one name per line); labels outside it are errors. clip_frames, stride: the clip
    the reader will cut (``ClipConfig`` defaults); a video needs ``(clip_frames - 1) * stride + 1``
    frames, or ``min_frames`` when given (> 0). max_seconds: ``extract run``'s segment length.
    min_class_videos: a class with fewer usable videos is ``class_small`` (0: a tenth of the
    median class size, at least 2). workers: supervised probing processes (0: probe in this
    process, with no time limit and nothing isolating a crash, as ``extract run --workers 0``).
    timeout: seconds one file's probe may take in a worker process (then it is killed: code
    ``timeout``).
    hash_bytes: bytes hashed at each end of a file.
    allow: error codes reported as warnings; strict: every warning is an error.
    max_examples: example paths per code in the summary.
    """

    input: Path
    classes: Path | None = None
    clip_frames: int = ClipConfig.num_frames
    stride: int = ClipConfig.stride
    min_frames: int = 0
    max_seconds: float = JobConfig.max_seconds
    min_class_videos: int = 0
    workers: int = 1
    timeout: float = 300.0
    hash_bytes: int = 1 << 20
    allow: tuple[str, ...] = ()
    strict: bool = False
    max_examples: int = 3

    def __post_init__(self) -> None:
        self.input = Path(self.input)
        self.classes = Path(self.classes) if self.classes is not None else None
        self.allow = tuple(self.allow)
        for name in ("clip_frames", "stride", "hash_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 s, got {self.timeout}")
        for name in ("min_frames", "max_seconds", "min_class_videos", "max_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        unknown = [c for c in self.allow if CODES.get(c, (None,))[0] != ERROR]
        if unknown:
            raise ValueError(f"allow takes error codes ({', '.join(c for c in CODES if CODES[c][0] == ERROR)}),"
                             f" got {', '.join(unknown)}")

    @property
    def required_frames(self) -> int:
        """Frames a video needs for one clip without repeating frames."""
        return self.min_frames or (self.clip_frames - 1) * self.stride + 1

    def severity(self, code: str) -> str:
        default = CODES[code][0]
        if default == WARNING:
            return ERROR if self.strict else WARNING
        return WARNING if code in self.allow else ERROR


@dataclass
class CheckReport:
    """One record per listed video (input order) and a summary; see :func:`check_dataset`."""

    videos: list[dict]
    summary: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.summary["passed"]

    def to_json(self) -> dict:
        return {"summary": self.summary, "videos": self.videos}

    def write(self, path: str | Path) -> Path:
        """Write atomically: ``.jsonl`` (a line per video, then the summary) or ``.json``."""
        path = Path(path)
        if path.suffix == ".jsonl":
            text = "".join(json.dumps(r) + "\n" for r in [*self.videos, self.summary])
        elif path.suffix == ".json":
            text = json.dumps(self.to_json(), indent=1) + "\n"
        else:
            raise ValueError(f"{path}: a report is .json or .jsonl")
        atomic_write_bytes(path, text.encode())
        return path


# ----------------------------------------------------------------------------- the listing


def load_class_list(path: Path) -> list[str]:
    """Class names by index from a JSON list (``classes.json``) or a text file (a name per line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VideoListError(f"{path}: cannot read the class list ({exc.strerror or exc})") from None
    if path.suffix == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VideoListError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise VideoListError(f"{path}: expected a non-empty list of class names")
    if len(set(names)) != len(names):
        dup = next(n for n, k in Counter(names).items() if k > 1)
        raise VideoListError(f"{path}: class {dup!r} is listed twice")
    return names


def _uses_indices(entries: list[VideoEntry]) -> bool:
    """Whether labels are class indices (videolist names such classes by their number)."""
    return all(e.class_name == str(e.label) for e in entries)


def label_problems(entries: list[VideoEntry], list_classes: list[str], given: list[str] | None
                   ) -> tuple[list[str | None], dict[int, tuple[str, str]], list[tuple[str, str, str]]]:
    """Each entry's class name in the class list used (None: unknown), per-entry label problems
    and dataset-level (code, class, message) about the numbering."""
    if given is None:
        return [e.class_name for e in entries], {}, []
    names: list[str | None] = []
    per_entry: dict[int, tuple[str, str]] = {}
    indices = _uses_indices(entries)
    for i, e in enumerate(entries):
        if indices:
            known = e.label < len(given)
            names.append(given[e.label] if known else None)
            why = f"class index {e.label}, the class list has {len(given)} classes"
        else:
            known = e.class_name in given
            names.append(e.class_name if known else None)
            why = f"class {e.class_name!r} is not in the class list"
        if not known:
            per_entry[i] = ("label_unknown", why)
    numbering = [] if indices else [
        ("label_index_mismatch", name, f"extract run numbers this list's classes by sorted name: "
                                       f"{name!r} gets {k} here, {given.index(name)} in the class list")
        for k, name in enumerate(list_classes) if name in given and given.index(name) != k]
    return names, per_entry, numbering


def duplicate_problems(entries: list[VideoEntry], facts: list[dict]) -> dict[int, tuple[str, str, int]]:
    """Later entries that repeat an earlier one: index -> (code, message, index of the first)."""
    first_path: dict[str, int] = {}
    first_hash: dict[str, int] = {}
    found = {}
    for i, (e, f) in enumerate(zip(entries, facts)):
        resolved = f["resolved"]
        if resolved in first_path:
            j = first_path[resolved]
            found[i] = ("duplicate_path", f"the same file as {entries[j].source} (listed earlier)", j)
            continue
        first_path[resolved] = i
        h = f["content_hash"]
        if h is None:
            continue
        if h in first_hash:
            j = first_hash[h]
            same = "" if entries[j].class_name == e.class_name else f", labelled {entries[j].class_name!r} there"
            found[i] = ("duplicate_content", f"the same content (size, SHA-1 of both ends) as "
                                             f"{entries[j].source}{same}", j)
        else:
            first_hash[h] = i
    return found


def class_problems(counts: dict[str, list[int]], config: CheckConfig) -> list[tuple[str, str, str]]:
    """(code, class, message) for classes without videos or with few usable ones.

    counts: class name -> [listed, usable] in class-list order.
    """
    usable = [u for listed, u in counts.values() if listed]
    threshold = config.min_class_videos or max(2, math.ceil(0.1 * statistics.median(usable or [0])))
    found = []
    for name, (listed, ok) in counts.items():
        if not listed:
            found.append(("class_missing", name, "no video of this class in the list"))
        elif ok < threshold:
            found.append(("class_small", name, f"{ok} usable of {listed} listed videos, fewer than {threshold}"))
    return found


# ----------------------------------------------------------------------------- the report


def check_dataset(config: CheckConfig, progress: Callable[[int, int], None] | None = None) -> CheckReport:
    """Check every video of ``config.input`` and the listing as a whole.

    progress(done, total) is called after each probed file. Raises VideoListError for a list or
    class list that cannot be used; problems of single videos are recorded, never raised.
    """
    t0 = time.monotonic()
    entries, list_classes = read_inputs(config.input)
    given = load_class_list(config.classes) if config.classes else None
    paths = list(dict.fromkeys(str(e.path) for e in entries))  # each file is probed once
    by_path = dict(zip(paths, inspect_all(paths, config, progress)))
    facts = [by_path[str(e.path)] for e in entries]
    names, labels, numbering = label_problems(entries, list_classes, given)
    duplicates = duplicate_problems(entries, facts)
    class_list = given or list_classes
    index = {name: k for k, name in enumerate(class_list)}
    videos = []
    for i, (entry, fact) in enumerate(zip(entries, facts)):
        found = [tuple(fact["error"])] if fact["error"] else stream_problems(fact["stream"], config)
        if i in duplicates:
            found.append(duplicates[i][:2])
        if i in labels:
            found.append(labels[i])
        videos.append(_video_record(i, entry, fact, names[i], index, found,
                                    duplicates.get(i, (None, None, None))[2], config))
    counts = {name: [0, 0] for name in class_list}
    for record in videos:
        if record["label_index"] is not None:
            counts[record["label"]][0] += 1
            counts[record["label"]][1] += record["status"] != ERROR
    dataset = numbering + class_problems(counts, config)
    summary = _summary(videos, dataset, counts, config, time.monotonic() - t0)
    return CheckReport(videos=videos, summary=summary)


def _video_record(i: int, entry: VideoEntry, fact: dict, name: str | None, index: dict[str, int],
                  found: list[tuple[str, str]], duplicate_of: int | None, config: CheckConfig) -> dict:
    problems = [{"code": code, "severity": config.severity(code), "message": message}
                for code, message in found]
    severities = {p["severity"] for p in problems}
    status = ERROR if ERROR in severities else WARNING if severities else "ok"
    return {"type": "video", "index": i, "source": entry.source, "path": str(entry.path),
            "label": entry.class_name if name is None else name,
            "label_index": None if name is None else index[name],
            "status": status, "codes": [p["code"] for p in problems], "problems": problems,
            "duplicate_of": duplicate_of, "size_bytes": fact["size_bytes"],
            "content_hash": fact["content_hash"], "stream": fact["stream"]}


def _summary(videos: list[dict], dataset: list[tuple[str, str, str]], counts: dict[str, list[int]],
             config: CheckConfig, seconds: float) -> dict:
    class_findings = [{"code": code, "severity": config.severity(code), "class": name, "message": message}
                      for code, name, message in dataset]
    found = [(p, record["source"]) for record in videos for p in record["problems"]]
    problems: dict[str, dict] = {}
    for finding, example in found + [(f, f["class"]) for f in class_findings]:
        entry = problems.setdefault(finding["code"], {"severity": finding["severity"], "count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < config.max_examples:
            entry["examples"].append(example)
    order = sorted(problems, key=lambda c: (problems[c]["severity"] != ERROR, -problems[c]["count"], c))
    status = Counter(r["status"] for r in videos)
    return {"type": "summary", "format": REPORT_FORMAT, "version": REPORT_VERSION,
            "mvmae_version": __version__, "input": str(config.input),
            "passed": all(p["severity"] != ERROR for p in problems.values()),
            "num_videos": len(videos), "num_ok": status["ok"], "num_warning": status[WARNING],
            "num_error": status[ERROR], "problems": {c: problems[c] for c in order},
            "class_problems": class_findings,
            "classes": {name: {"listed": n, "usable": ok} for name, (n, ok) in counts.items()},
            "class_list": str(config.classes) if config.classes else None,
            "config": _config_dict(config), "seconds": round(seconds, 3)}


def _config_dict(config: CheckConfig) -> dict:
    d = asdict(config)
    d.update(input=str(config.input), classes=str(config.classes) if config.classes else None,
             allow=list(config.allow), required_frames=config.required_frames)
    return d


def format_summary(summary: dict) -> list[str]:
    """The summary as text lines: a headline, a table of problems (code -> count, examples), classes."""
    s = summary
    per_class = [c["usable"] for c in s["classes"].values()]
    lines = [f"{s['input']}: {s['num_videos']} videos, {len(per_class)} classes: {s['num_ok']} ok, "
             f"{s['num_warning']} with warnings, {s['num_error']} with errors ({s['seconds']:.1f} s)"]
    if s["problems"]:
        lines.append(f"  {'severity':<8}  {'problem':<24} {'count':>6}  examples")
    for code, p in s["problems"].items():
        more = f" (+{p['count'] - len(p['examples'])})" if p["count"] > len(p["examples"]) else ""
        lines.append(f"  {p['severity']:<8}  {code:<24} {p['count']:>6}  {', '.join(p['examples'])}{more}")
    if per_class:
        lines.append(f"  usable videos per class: {min(per_class)} to {max(per_class)}, "
                     f"median {statistics.median(per_class):g}")
    lines.append("passed: no errors" if s["passed"] else "FAILED: fix the errors, or --allow CODE")
    return lines
