"""Damaged shards: flipped bytes in each member kind and in a tar header, tars cut mid-member and
mid-header, a member missing, an empty file, zeroed blocks. ``mvmae shards verify`` names the
shard, the key and the member (local and HTTP URLs), ``mvmae shards inspect`` fails cleanly, and
the train reader skips and counts what is damaged and delivers every other sample exactly once.

Members are named through ``sample.py``'s constants (MEMBERS), so the cases follow the format.
"""

from __future__ import annotations

import collections
import gzip
import json
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from mvmae.cli import main
from mvmae.shards.clips import ClipConfig
from mvmae.shards.inspect import Problem, verify_shards
from mvmae.shards.reader import SkipCounter, build_eval_pipeline, build_train_pipeline
from mvmae.shards.sample import MEMBERS, RECORD
from mvmae.shards.stream import ReadConfig, ShardReadError, read_shards

import shard_faults as sf

DAMAGED = 1  # index of the damaged shard (its second sample is the one hit)
CLIP = ClipConfig(num_frames=8, mv_size=7, iframe_size=64)
CLIP_CENTER = ClipConfig(mode="center", num_frames=8, mv_size=7, iframe_size=64)
HTTP_FLAGS = ["--retries", "1", "--retry-delay", "0.01", "--stall-timeout", "2", "--connect-timeout", "2"]


@dataclass
class Damage:
    """What a case did and what must follow. key: the sample the problem names (None: '-');
    reason: the exact reason (tar damage) or, for a damaged sample, the member it must name;
    lost: keys the reader cannot deliver; sample_skips / shard_skips: what SkipCounter counts;
    resynced: a damaged header read past (reported once the shard is read, never retried)."""

    key: str | None
    reason: str
    lost: set[str]
    sample_skips: int = 0
    shard_skips: int = 0
    exact: bool = True
    resynced: bool = False


def _members(tar: Path, key: str) -> list[tuple[str, tuple[int, int, int]]]:
    """(member name, (header, data, size)) of one sample, in tar order."""
    return [(n, o) for n, o in sf.member_offsets(tar).items() if n.split(".", 1)[0] == key]


def flipped_member(member: str) -> Callable[[Path, list[str]], Damage]:
    def damage(tar: Path, keys: list[str]) -> Damage:
        sf.flip_member_data(tar, f"{keys[1]}.{member}")
        return Damage(keys[1], member, {keys[1]}, sample_skips=1, exact=False)
    return damage


def missing_member(member: str) -> Callable[[Path, list[str]], Damage]:
    def damage(tar: Path, keys: list[str]) -> Damage:
        sf.drop_member(tar, f"{keys[1]}.{member}")
        return Damage(keys[1], member, {keys[1]}, sample_skips=1, exact=False)
    return damage


def zeroed_data(tar: Path, keys: list[str]) -> Damage:
    """A 512-byte block of zeros inside the data of the sample's largest member."""
    name, (_, data, size) = max(_members(tar, keys[1]), key=lambda m: m[1][2])
    assert size >= 2048
    sf.zero_block(tar, data + size // 2 // 512 * 512)
    return Damage(keys[1], name.split(".", 1)[1], {keys[1]}, sample_skips=1, exact=False)


def _resynced(lost: str, reason: str, resumed: int) -> Damage:
    """A damaged header read past: only ``lost`` is missing, the shard reported once read."""
    return Damage(lost, f"tar damaged: {reason}; resynced at byte {resumed}; 1 sample(s) lost: {lost}", {lost},
                  shard_skips=1, resynced=True)


def flipped_header(tar: Path, keys: list[str]) -> Damage:
    (first, _), (second, (header, _, _)), (_, (resumed, _, _)) = _members(tar, keys[1])[:3]
    sf.flip_member_header(tar, second)
    return _resynced(keys[1], f"invalid tar header at byte {header} (bad checksum), after member {first}", resumed)


def flipped_first_header(tar: Path, keys: list[str]) -> Damage:
    (first, _), (_, (resumed, _, _)) = _members(tar, keys[0])[:2]
    sf.flip_member_header(tar, first)
    return _resynced(keys[0], "invalid tar header at byte 0 (bad checksum)", resumed)


def garbage_header(tar: Path, keys: list[str]) -> Damage:
    (first, _), (_, (header, _, _)), (_, (resumed, _, _)) = _members(tar, keys[1])[:3]
    data = bytearray(tar.read_bytes())
    data[header:header + 512] = np.random.default_rng(0).integers(0, 256, 512, np.uint8).tobytes()
    tar.write_bytes(bytes(data))
    return _resynced(keys[1], f"invalid tar header at byte {header} (invalid header), after member {first}",
                     resumed)


def last_header(tar: Path, keys: list[str]) -> Damage:
    """The header of a sample's last member: the next sample is whole and delivered."""
    *_, (before, _), (last, (header, _, _)) = _members(tar, keys[1])
    resumed = _members(tar, keys[2])[0][1][0]
    sf.flip_member_header(tar, last)
    return _resynced(keys[1], f"invalid tar header at byte {header} (bad checksum), after member {before}",
                     resumed)


def cut_mid_member(tar: Path, keys: list[str]) -> Damage:
    name, (_, data, size) = max(_members(tar, keys[1]), key=lambda m: m[1][2])
    sf.cut(tar, data + size // 2)
    return Damage(keys[0], f"tar unreadable after this sample: truncated tar: the data of member {name} "
                           f"ends {size - size // 2} bytes short", {keys[1], keys[2]}, shard_skips=1)


def cut_mid_header(tar: Path, keys: list[str]) -> Damage:
    (first, _), (_, (header, _, _)) = _members(tar, keys[1])[:2]
    sf.cut(tar, header + 100)
    return Damage(keys[0], f"tar unreadable after this sample: truncated tar: a header is cut at byte "
                           f"{header + 100}, after member {first}", {keys[1], keys[2]}, shard_skips=1)


def cut_between_samples(tar: Path, keys: list[str]) -> Damage:
    last = _members(tar, keys[0])[-1][0]
    header = _members(tar, keys[1])[0][1][0]
    sf.cut(tar, header)
    return Damage(keys[0], f"tar unreadable after this sample: truncated tar: no end-of-archive block "
                           f"at byte {header}, after member {last}", {keys[1], keys[2]}, shard_skips=1)


def cut_end_of_archive(tar: Path, keys: list[str]) -> Damage:
    """Only the end-of-archive blocks are gone: every sample is whole, the shard still damaged."""
    last, (_, data, size) = _members(tar, keys[2])[-1]
    end = data + -(-size // 512) * 512
    sf.cut(tar, end)
    return Damage(keys[2], f"tar unreadable after this sample: truncated tar: no end-of-archive block "
                           f"at byte {end}, after member {last}", set(), shard_skips=1)


def zeroed_header(tar: Path, keys: list[str]) -> Damage:
    (first, _), (_, (header, _, _)), (_, (resumed, _, _)) = _members(tar, keys[1])[:3]
    sf.zero_block(tar, header)
    return _resynced(keys[1], f"a zeroed block at byte {header} where a header should be, after member {first}",
                     resumed)


def concatenated(tar: Path, keys: list[str]) -> Damage:
    """Another tar after the end-of-archive blocks: not resynced (the shard is not what was written)."""
    last, (_, data, size) = _members(tar, keys[2])[-1]
    end = data + -(-size // 512) * 512
    tar.write_bytes(tar.read_bytes() + tar.read_bytes())
    return Damage(keys[2], f"tar unreadable after this sample: data after the end-of-archive block at byte {end} "
                           f"(tars concatenated?), after member {last}", set(), shard_skips=1)


def emptied(tar: Path, keys: list[str]) -> Damage:
    sf.cut(tar, 0)
    return Damage(None, "tar unreadable: empty file (not a tar)", set(keys), shard_skips=1)


CASES = {
    **{f"flip_{m}": flipped_member(m) for m in MEMBERS},
    **{f"missing_{m}": missing_member(m) for m in MEMBERS},
    "zeroed_data": zeroed_data, "flip_header": flipped_header, "flip_first_header": flipped_first_header,
    "garbage_header": garbage_header, "cut_mid_member": cut_mid_member, "cut_mid_header": cut_mid_header,
    "cut_between_samples": cut_between_samples, "cut_end_of_archive": cut_end_of_archive,
    "zeroed_header": zeroed_header, "empty": emptied, "last_header": last_header, "concatenated": concatenated,
}

# The cases `shards inspect` must fail (exit status 1): tar damage and a damaged or missing record.
INSPECT_FAILS = frozenset({
    "concatenated", "cut_between_samples", "cut_end_of_archive", "cut_mid_header", "cut_mid_member", "empty",
    "flip_first_header", "flip_header", "garbage_header", "last_header", "zeroed_header",
    f"flip_{RECORD}", f"missing_{RECORD}",
})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    return sf.fault_dataset(tmp_path_factory)


@pytest.fixture(params=list(CASES))
def damaged(request, dataset, tmp_path) -> dict:
    """A copy of the shards with one damaged by the case: ``{"tars", "shard", "damage"}``."""
    tars = sf.copy_shards(dataset, tmp_path / "shards")
    shard = tars[DAMAGED]
    damage = CASES[request.param](shard, dataset["keys"][shard.name])
    return {"tars": tars, "shard": shard, "damage": damage, "folder": tmp_path / "shards", "case": request.param}


def check_problems(problems: list[Problem], url: str, damage: Damage, suffix: str = "") -> None:
    """The damage is reported on its shard and key; any other problem is the shard's stats file."""
    assert problems and {p.shard for p in problems} == {url}, problems
    found = [p for p in problems if p.key == damage.key and (
        p.reason == damage.reason + suffix if damage.exact else damage.reason in p.reason)]
    assert len(found) == 1, problems
    others = [p for p in problems if p is not found[0]]
    assert all(p.key is None and "train-000001.json says" in p.reason for p in others), others


def test_verify_names_shard_key_and_member(damaged, cli_runner) -> None:
    url, damage = str(damaged["shard"]), damaged["damage"]
    problems = verify_shards([str(t) for t in damaged["tars"]])
    check_problems(problems, url, damage)
    result = cli_runner.invoke(main, ["shards", "verify", sf.brace(damaged["folder"])])
    assert result.exit_code == 1, result.output
    *lines, summary = result.stdout.splitlines()
    assert lines == [str(p) for p in problems]
    assert summary.endswith(f"{len(problems)} problem(s) in 1 shard(s)")


def test_verify_over_http_names_the_url(damaged, cli_runner) -> None:
    """Over HTTP (a remote shard: tar damage is retried once, then reported; a resynced header,
    damage in the stored bytes, is reported without a retry)."""
    sf.require_curl()
    damage = damaged["damage"]
    with sf.fault_server(damaged["folder"]) as server:
        urls = [server.url(t.name) for t in damaged["tars"]]
        result = sf.bounded(lambda: cli_runner.invoke(main, ["shards", "verify", *urls, *HTTP_FLAGS]), 60)
    assert result.exit_code == 1, result.output
    *lines, summary = result.stdout.splitlines()
    url = server.url(damaged["shard"].name)
    check_problems([Problem(*_parse(line, url)) for line in lines], url, damage,
                   " (2 attempts)" if damage.shard_skips and not damage.resynced else "")
    assert summary.endswith(f"{len(lines)} problem(s) in 1 shard(s)")


def _parse(line: str, url: str) -> tuple[str, str | None, str]:
    """A problem line 'URL KEY: reason' back into (shard, key, reason)."""
    assert line.startswith(f"{url} "), line
    key, reason = line[len(url) + 1:].split(": ", 1)
    return url, None if key == "-" else key, reason


def test_train_reader_skips_and_counts(damaged, dataset) -> None:
    """Every sample not lost to the damage exactly once; the damaged sample or shard counted."""
    damage = damaged["damage"]
    pipeline = build_train_pipeline([str(t) for t in damaged["tars"]], CLIP, 1)
    keys = [k for batch in pipeline for k in batch["key"]]
    expected = collections.Counter(set(sf.all_keys(dataset)) - damage.lost)
    assert collections.Counter(keys) == expected
    summary = pipeline.skips.summary()
    assert (summary["skipped"], summary["shards_skipped"]) == (damage.sample_skips, damage.shard_skips)
    assert (summary["shards_seen"], summary["shard_retries"]) == (sf.NUM_SHARDS, 0)  # local: never retried
    assert summary["seen"] == len(keys) + damage.sample_skips


def test_inspect_fails_cleanly(damaged, dataset, cli_runner) -> None:
    """`shards inspect` reads records only. Tar damage, or a damaged or missing record (the
    ``json`` member), is exit status 1 and one exact error line naming the shard and the key;
    damage inside any other member is for verify to find: exit status 0, every record counted."""
    damage, shard = damaged["damage"], damaged["shard"]
    result = cli_runner.invoke(main, ["shards", "inspect", sf.brace(damaged["folder"]), "--json"])
    record_hit = damage.sample_skips and damage.reason == RECORD
    assert bool(damage.shard_skips or record_hit) == (damaged["case"] in INSPECT_FAILS)  # the cases, pinned
    if damaged["case"] in INSPECT_FAILS:
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        (line,) = result.stderr.splitlines()
        prefix = f"error: {shard} {damage.key or '-'}: "
        if damage.shard_skips:
            assert line == prefix + damage.reason
        elif f"{damage.key}.{RECORD}" in sf.member_offsets(shard):  # flipped bytes: not UTF-8 JSON
            assert line.startswith(prefix + f"unreadable record, member {RECORD} ("), line
        else:
            assert line == prefix + f"no {RECORD} member"
    else:
        assert result.exit_code == 0 and result.exception is None, result.output + result.stderr
        assert result.stderr == ""
        total = json.loads(result.stdout)["total"]
        assert (total["num_shards"], total["num_samples"]) == (sf.NUM_SHARDS, len(sf.all_keys(dataset)))


def test_eval_reader_is_loud_naming_the_shard(damaged, dataset) -> None:
    """Loud by default, naming the shard; with a SkipCounter, the same samples as in training."""
    damage = damaged["damage"]
    with pytest.raises((ValueError, OSError)) as info:
        [k for batch in build_eval_pipeline([str(t) for t in damaged["tars"]], CLIP_CENTER, 4) for k in batch["key"]]
    assert str(damaged["shard"]) in "".join([str(info.value), *getattr(info.value, "__notes__", [])])
    skips = SkipCounter()
    keys = [k for batch in build_eval_pipeline([str(t) for t in damaged["tars"]], CLIP_CENTER, 4, handler=skips)
            for k in batch["key"]]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == len(sf.all_keys(dataset)) - len(damage.lost)


@pytest.mark.parametrize("bad_url", ["pipe:cat /nonexistent/train-000009.tar", "/nonexistent/train-000009.tar"])
def test_unopenable_shard_skipped_and_counted(dataset, bad_url) -> None:
    """A shard that cannot be opened (a missing file; a pipe: command that fails): skipped and
    counted by the train reader, loud in eval."""
    urls = [str(dataset["tars"][3]), bad_url]
    read = ReadConfig(retries=1, retry_delay_s=0.01)
    pipeline = build_train_pipeline(urls, CLIP, 1, read=read)
    keys = [k for batch in pipeline for k in batch["key"]]
    assert sorted(keys) == sorted(dataset["keys"][dataset["tars"][3].name])
    retries = 0 if bad_url.startswith("/") else 1  # a local file is read once
    assert pipeline.skips.summary()["shards_skipped"] == 1 and pipeline.skips.shard_retries == retries
    with pytest.raises(OSError, match="nonexistent"):
        [k for batch in build_eval_pipeline(urls, CLIP_CENTER, 2, read=read) for k in batch["key"]]


@pytest.mark.parametrize("suffix,compress", [("gz", gzip.compress), ("xz", lzma.compress)])
def test_compressed_shard_read_and_cut(dataset, tmp_path, suffix, compress) -> None:
    """A compressed tar reads the same samples; cut short, the samples before the cut arrive and
    the shard is reported damaged."""
    tar = dataset["tars"][DAMAGED]
    packed = tmp_path / f"{tar.name}.{suffix}"
    packed.write_bytes(compress(tar.read_bytes()))
    assert [s["__key__"] for s in read_shards([{"url": str(packed)}])] == dataset["keys"][tar.name]
    packed.write_bytes(packed.read_bytes()[:packed.stat().st_size * 2 // 3])
    got = []
    with pytest.raises(ShardReadError, match=f"{packed} .*: tar unreadable"):
        got.extend(s["__key__"] for s in read_shards([{"url": str(packed)}]))
    assert got == dataset["keys"][tar.name][:len(got)]
