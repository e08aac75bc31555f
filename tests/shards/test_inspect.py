"""``mvmae shards inspect|verify|export`` on real shards: counts, URL forms, duplicate keys and stats
files, export. Damaged shards are in tests/faults/test_corrupt_shards.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mvmae.cli import main
from mvmae.shards.inspect import Problem, inspect_shards, verify_shards
from mvmae.shards.sample import FORMAT_VERSION, RECORD, update_record
from mvmae.shards.stream import ShardReader, expand_urls
from mvmae.shards.writer import ShardFile

PATTERN = "train-{000000..000004}.tar"
NUM_GOOD = 8  # good videos of the job_media fixture (conftest.py), 40 frames each
SAMPLES_PER_SHARD = [2, 1, 2, 1, 2]  # good videos per shard of 3 inputs (bad ones interleaved)


def shard_keys(path: Path) -> list[str]:
    return [s["__key__"] for s in ShardReader(str(path))]


@pytest.fixture
def shards_copy(job_dataset, tmp_path) -> Path:
    """A private copy of the dataset's folder, to damage."""
    return Path(shutil.copytree(job_dataset["out"], tmp_path / "shards"))


@pytest.fixture(scope="module")
def http_root(job_dataset, serve_folder):
    """The dataset's folder served over HTTP on the loopback interface (tests/shards/conftest.py): its base URL."""
    with serve_folder(job_dataset["out"]) as url:
        yield url


def test_inspect_counts(job_dataset, job_media) -> None:
    out = job_dataset["out"]
    report = inspect_shards(str(out / PATTERN))
    total = report["total"]
    assert total["num_shards"] == 5
    assert (total["num_samples"], total["num_videos"]) == (NUM_GOOD, NUM_GOOD)
    assert total["classes"] == {"jump": 3, "run": 3, "wave": 2}
    assert total["num_frames"] == 40 * NUM_GOOD
    assert total["seconds"] == pytest.approx(40 / 25 * NUM_GOOD)
    assert total["bytes"] == sum(p.stat().st_size for p in out.glob("*.tar"))
    assert (total["format_versions"], total["methods"], total["num_clipped"]) == ([FORMAT_VERSION], ["resolved"], 0)
    assert [s["num_samples"] for s in report["shards"]] == SAMPLES_PER_SHARD
    for shard in report["shards"]:
        stats = json.loads(Path(shard["url"]).with_suffix(".json").read_text())
        assert (shard["num_samples"], shard["bytes"], shard["num_frames"]) == \
            (stats["num_samples"], stats["bytes"], stats["num_frames"])


def test_inspect_cli(job_dataset, cli_runner) -> None:
    urls = str(job_dataset["out"] / PATTERN)
    result = cli_runner.invoke(main, ["shards", "inspect", urls, "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(json.dumps(inspect_shards(urls)))
    result = cli_runner.invoke(main, ["shards", "inspect", urls])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + 5 + 1 + 2
    assert lines[6].split()[:5] == ["total:", "5", "shard(s)", "8", "8"]
    assert "samples per class: jump 3, run 3, wave 2" in lines
    assert f"format versions: {FORMAT_VERSION}; extraction: resolved" in lines


@pytest.mark.parametrize("form", ["file", "pipe", "http", "list"])
def test_url_forms_read_the_same_samples(job_dataset, http_root, form) -> None:
    out = job_dataset["out"]
    names = [p.name for p in sorted(out.glob("*.tar"))]
    urls = {
        "file": [f"file://{out / PATTERN}"],
        "pipe": [f"pipe:cat {out / name}" for name in names],
        "http": [f"{http_root}/{PATTERN}"],
        "list": [str(out / name) for name in names],
    }[form]
    assert len(expand_urls(urls)) == 5
    expected = inspect_shards(str(out / PATTERN))["total"]
    assert inspect_shards(urls)["total"] == expected
    assert verify_shards(urls) == []


def test_verify_passes_on_good_shards(job_dataset, cli_runner) -> None:
    urls = str(job_dataset["out"] / PATTERN)
    seen = []
    assert verify_shards(urls, lambda url, n: seen.append(n)) == []
    assert seen == SAMPLES_PER_SHARD
    result = cli_runner.invoke(main, ["shards", "verify", urls])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "5 shard(s), 8 samples: all good\n"


def test_verify_finds_duplicate_keys_and_missing_stats(shards_copy) -> None:
    first, second = (str(shards_copy / f"train-00000{i}.tar") for i in (0, 1))
    (shards_copy / "train-000001.json").unlink()
    problems = verify_shards([first, second, first])
    keys = shard_keys(Path(first))
    assert problems == [
        Problem(second, None, "no stats file train-000001.json beside it (an incomplete shard)"),
        *[Problem(first, k, f"duplicate key (also in {first})") for k in keys],
    ]


def test_export_of_unknown_key_fails_with_one_line(job_dataset, cli_runner, tmp_path) -> None:
    out = tmp_path / "x.npz"
    result = cli_runner.invoke(main, ["shards", "export", str(job_dataset["out"] / PATTERN),
                                      "--key", "no_such_clip", "--out", str(out)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "'no_such_clip'" in lines[0] and "5 shard(s)" in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_carries_source_and_label(job_dataset, job_media, cli_runner, tmp_path) -> None:
    """The npz holds the source as listed and the label; meta the key and class name."""
    from mvmae.extract.export import load_export

    video, cls = job_media["good"][6]
    key = video.stem
    out = tmp_path / f"{key}.npz"
    result = cli_runner.invoke(main, ["shards", "export", str(job_dataset["out"] / PATTERN),
                                      "--key", key, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    fields = load_export(out)
    assert fields.meta["source"] == video.name and fields.meta["label"] == 2
    assert fields.meta["key"] == key and fields.meta["class_name"] == cls == "wave"
    assert fields.mv.shape == (40, 2, 18, 24) and fields.valid.any()


def test_export_refuses_a_sample_that_disagrees_with_its_record(job_dataset, cli_runner, tmp_path) -> None:
    """One more I-frame index than JPEGs: export fails with one line naming the key and the
    reason, writes nothing; verify reports the same reason."""
    raw = next(iter(ShardReader(str(job_dataset["out"] / "train-000000.tar"))))
    key, index = raw["__key__"], json.loads(raw[RECORD])["iframe_index"]
    (tmp_path / "shards").mkdir()
    with ShardFile(tmp_path / "shards" / "train-000000.tar") as shard:
        shard.write(update_record(raw, iframe_index=index + [39]))
        shard.commit()
    out = tmp_path / "x.npz"
    result = cli_runner.invoke(main, ["shards", "export", str(shard.path), "--key", key, "--out", str(out)])
    assert result.exit_code == 1, result.output
    reason = f"{len(index) + 1} I-frame indices for {len(index)} JPEGs"
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {shard.path} {key}: ") and reason in line, line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["shards"]
    assert [(p.key, p.reason) for p in verify_shards(str(shard.path)) if p.key] == [(key, reason)]
