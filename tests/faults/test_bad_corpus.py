"""A batch job over real clips mixed with every kind of bad or odd video of ``edge_media`` (empty,
truncated, random bytes, text, audio only, HEVC, MPEG-4 Part 2, header only, missing, one frame,
all-intra, odd size, bytes overwritten mid-stream, a cut faststart file): the job completes, each
bad file is recorded with its code and reason (the same as ``extract_video`` raises for it), the
odd-but-valid ones are extracted with their warnings, and the good videos' samples are byte for
byte those of a job over the good ones alone.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from extract_faults import good_clips
from job_outputs import read_manifest, read_samples
from mvmae.cli import main
from mvmae.extract import errors
from mvmae.extract.video import extract_video
from mvmae.job.job import JobConfig, run_job

# edge_media name -> the VideoError class its failure belongs to (its code or a subclass's).
FAILING = {
    "empty": errors.EmptyFileError,
    "truncated": errors.NotAVideoError,
    "random_bytes": errors.NotAVideoError,
    "text": errors.NotAVideoError,
    "audio_only": errors.NotAVideoError,
    "hevc": errors.UnsupportedCodecError,
    "mpeg4": errors.UnsupportedCodecError,
    "header_only": errors.NoFramesError,
    "missing": errors.MissingFileError,
}
# edge_media name -> a fragment of the warning its sample's record must carry ("" for none).
WORKING = {"pan": "", "odd_size": "", "single_frame": "no motion vectors", "all_intra": "intra",
           "corrupted_middle": "lost", "truncated_faststart": "lost"}


def codes_of(error: type) -> set[str]:
    """The code of a VideoError class and of its subclasses (finer kinds of the same failure)."""
    return {error.code} | {c for sub in error.__subclasses__() for c in codes_of(sub)}


def expected_outcome(path) -> tuple[str, str]:
    """(code, reason) of ``extract_video`` on the file: ('', '') when it extracts."""
    try:
        extract_video(path)
    except errors.VideoError as exc:
        return exc.code, exc.reason
    return "", ""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, edge_media) -> dict:
    """List files: ``mixed`` (the 6 clips, and every edge_media file after every clip or two),
    ``clean`` (the inputs of ``mixed`` that extract, in the same order)."""
    d = tmp_path_factory.mktemp("bad_corpus")
    clips = [(path, cls) for path, cls in good_clips(d / "clips")]
    edge = sorted(edge_media.items())
    mixed, k = [], 0
    for i, (path, cls) in enumerate(clips):
        mixed.append((str(path), cls))
        for _ in range(2 if i % 2 else 3):
            if k < len(edge):
                mixed.append((str(edge[k][1]), "odd"))
                k += 1
    mixed += [(str(path), "odd") for _, path in edge[k:]]
    outcomes = {str(path): expected_outcome(path) for _, path in edge}
    clean = [(p, c) for p, c in mixed if not outcomes.get(p, ("",))[0]]
    lists = {}
    for name, rows in [("mixed", mixed), ("clean", clean)]:
        lists[name] = d / f"{name}.txt"
        lists[name].write_text("".join(f"{p} {c}\n" for p, c in rows))
    return {"lists": lists, "outcomes": outcomes, "names": {str(p): n for n, p in edge},
            "dir": d}


def test_bad_videos_are_recorded_and_the_good_ones_extracted(corpus, cli_runner, tmp_path) -> None:
    out = tmp_path / "mixed"
    result = cli_runner.invoke(main, ["extract", "run", str(corpus["lists"]["mixed"]), str(out),
                                      "--workers", "2", "--shard-size", "4"])
    assert result.exit_code == 0, result.stderr
    manifest = read_manifest(out)
    by_source = {v["source"]: v for v in manifest}
    assert len(by_source) == len(manifest) == 6 + len(corpus["outcomes"])
    names = corpus["names"]
    for source, (code, reason) in corpus["outcomes"].items():
        v, name = by_source[source], names[source]
        if name in FAILING:
            assert code in codes_of(FAILING[name]), (name, code)
        elif name in WORKING:
            assert code == "", (name, reason)
        assert (v["code"], v["reason"]) == (code, reason), name
        assert v["status"] == ("failed" if code else "ok"), name
        assert bool(v["keys"]) != bool(code) and (not code or reason), name
    assert {names[s] for s, (code, _) in corpus["outcomes"].items() if code} >= set(FAILING)
    # The shards' stats files and the summary count the failures by code.
    expected = Counter(code for code, _ in corpus["outcomes"].values() if code)
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("train-[0-9]*.json"))]
    assert sum((Counter(s["failures_by_code"]) for s in stats), Counter()) == expected
    assert [v for s in stats for v in s["videos"]] == manifest
    reported = {c: int(n) for n, c in re.findall(r"failed:\s+(\d+)\s+(\w+)", result.stdout)}
    assert reported == expected
    num_ok = 6 + sum(not code for code, _ in corpus["outcomes"].values())
    assert f"{len(manifest)} videos: {num_ok} ok, {sum(expected.values())} failed" in result.stdout
    # The odd but valid files: extracted, with the warning that says what is odd about them.
    samples = read_samples(out)
    for source, v in by_source.items():
        name = names.get(source)
        if name in WORKING and WORKING[name]:
            (key,) = v["keys"]
            warnings = json.loads(samples[key]["json"])["extraction"]["warnings"]
            assert any(WORKING[name] in w for w in warnings), (name, warnings)
    # The good videos' samples are exactly those of a job without the bad ones.
    run_job(JobConfig(input=corpus["lists"]["clean"], out_dir=tmp_path / "clean", shard_size=4,
                      workers=0))
    assert samples == read_samples(tmp_path / "clean")
