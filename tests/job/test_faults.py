"""FaultLog: per-part fault files, each part's records kept, every part's read back."""

from __future__ import annotations

import json
from pathlib import Path

from mvmae.job.faults import CRASHED, TIMEOUT, FaultLog
from mvmae.shards.videolist import VideoEntry


def _entry(key: str) -> VideoEntry:
    return VideoEntry(source=f"{key}.mp4", path=Path(f"/videos/{key}.mp4"), label=0, class_name="jump", key=key)


def test_parts_keep_their_own_records_and_read_every_part(tmp_path) -> None:
    """Two parts recording at once (each from what it read at its start) lose nothing; a later
    run, with the same or another number of parts, excludes the videos of all of them."""
    a, b, c = _entry("a"), _entry("b"), _entry("c")
    part0, part1 = (FaultLog(tmp_path, "train", "job1", i, 2) for i in range(2))
    part0.record_timeout(a, "train-000000", 4.0)
    assert part1.record_death(b, "train-000001", "killed by SIGSEGV") == 1
    part1.record_death(c, "train-000001", "killed by SIGKILL")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-faults-0of2.json", "train-faults-1of2.json"]
    assert list(json.loads((tmp_path / "train-faults-0of2.json").read_text())["videos"]) == ["a"]
    assert list(json.loads((tmp_path / "train-faults-1of2.json").read_text())["videos"]) == ["b", "c"]
    for rerun in (FaultLog(tmp_path, "train", "job1", 1, 2), FaultLog(tmp_path, "train", "job1")):
        excluded = rerun.excluded([a, b, c], retries=0)
        assert {k: code for k, (code, _) in excluded.items()} == {"a": TIMEOUT, "b": CRASHED, "c": CRASHED}
        assert "died 1 times" in excluded["b"][1] and "SIGSEGV" in excluded["b"][1]
    whole = FaultLog(tmp_path, "train", "job1")  # one part now: its own file, the others still read
    assert whole.record_death(b, "train-000001", "killed by SIGSEGV") == 2
    assert json.loads((tmp_path / "train-faults.json").read_text())["videos"]["b"]["deaths"] == 2
    assert FaultLog(tmp_path, "train", "job1", 1, 2).videos["b"]["deaths"] == 2  # the later record wins
    assert FaultLog(tmp_path, "train", "job2").videos == {}  # another job's records do not count
    assert FaultLog(tmp_path, "val", "job1").videos == {}  # nor another split's
