"""``mvmae check``: a pre-flight over a real list mixing good libx264 clips with every problem kind."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import threading
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import pytest

from mvmae.cli import main
from mvmae.extract.video import iter_segments
from mvmae.shards.check import CODES, ERROR, WARNING, CheckConfig, check_dataset, load_class_list
from mvmae.shards.videolist import VideoListError
from mvmae.synth import x264_options

try:
    import media
except ImportError:
    from tests import media

GIVEN_CLASSES = ["dance", "jump", "run", "wave"]  # a previous job's classes.json: 'dance' sorts first

# (name, label, codes without --classes, extra codes with --classes GIVEN_CLASSES)
CASES = [
    ("good_a", "jump", [], []),
    ("good_b", "jump", [], []),
    ("good_c", "run", [], []),
    ("good_d", "run", [], []),
    ("good_e", "wave", [], []),
    ("empty", "wave", ["empty"], []),
    ("truncated", "run", ["not_video"], []),
    ("random_bytes", "jump", ["not_video"], []),
    ("text", "wave", ["not_video"], []),
    ("audio_only", "jump", ["no_video_stream"], []),
    ("hevc", "run", ["unsupported_codec"], []),
    ("mpeg4", "wave", ["unsupported_codec"], []),
    ("unknown_codec", "jump", ["unsupported_codec"], []),
    ("header_only", "run", ["no_frames"], []),
    ("missing", "wave", ["missing"], []),
    ("folder", "jump", ["unreadable"], []),
    ("single_frame", "run", ["too_short", "all_intra"], []),
    ("all_intra", "wave", ["too_short", "all_intra"], []),
    ("short", "jump", ["too_short"], []),
    ("odd_size", "jump", ["odd_size"], []),
    ("corrupted_middle", "run", ["frames_declared_mismatch"], []),
    ("truncated_faststart", "wave", ["frames_declared_mismatch"], []),
    ("damaged_slice", "wave", ["frames_declared_mismatch", "damaged_packets"], []),
    ("vfr", "jump", ["variable_fps"], []),
    ("good_a_again", "jump", ["duplicate_path"], []),
    ("good_a_link", "run", ["duplicate_path"], []),
    ("good_b_copy", "run", ["duplicate_content"], []),
    ("good_swim", "swim", [], ["label_unknown"]),
]
NAMES = [name for name, *_ in CASES]


def make_vfr_clip(path: Path) -> Path:
    """libx264 pan whose frames alternate 40 and 80 ms apart (24 frames, variable frame rate)."""
    frames = media.render_pan(vx=2, vy=1, num_frames=24, size=(64, 96))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 64, 96, "yuv420p"
        stream.options = x264_options(2, 3, 24, 18)
        stream.time_base = Fraction(1, 1000)
        t = 0
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", threads=1)
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += 40 if i % 2 == 0 else 80
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def check_media(edge_media, pan_clip_factory, tmp_path_factory) -> dict[str, Path]:
    """Every case's file by name (about 2 s beyond edge_media)."""
    d = tmp_path_factory.mktemp("check_media")
    good = {f"good_{k}": pan_clip_factory(vx=vx, vy=1, num_frames=20, size=(64, 96))
            for k, vx in zip("abcde", (1, 2, 3, -1, -2))}
    files = {**good, **{name: edge_media[name] for name in NAMES if name in edge_media}}
    files["good_swim"] = pan_clip_factory(vx=0, vy=2, num_frames=20, size=(64, 96))
    files["folder"] = d / "folder.mp4"
    files["folder"].mkdir()
    files["short"] = pan_clip_factory(vx=1, vy=1, num_frames=10, size=(64, 96))
    files["vfr"] = make_vfr_clip(d / "vfr.mp4")
    files["damaged_slice"] = media.make_damaged_slice_file(edge_media["pan"], d / "damaged.mp4", packet_index=10)
    files["good_a_again"] = good["good_a"]
    files["good_a_link"] = d / "link_to_a.mp4"
    os.symlink(good["good_a"], files["good_a_link"])
    files["good_b_copy"] = Path(shutil.copyfile(good["good_b"], d / "copy_of_b.mp4"))
    return files


def write_list(path: Path, files: dict[str, Path], cases=CASES) -> Path:
    path.write_text("# path label\n" + "".join(f"{files[name]} {label}\n" for name, label, *_ in cases))
    return path


@pytest.fixture(scope="module")
def check_list(check_media, tmp_path_factory) -> Path:
    return write_list(tmp_path_factory.mktemp("check_list") / "train.txt", check_media)


@pytest.fixture(scope="module")
def classes_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("classes") / "classes.json"
    path.write_text(json.dumps(GIVEN_CLASSES))
    return path


@pytest.fixture(scope="module")
def checked(check_list, classes_json, cli_runner, tmp_path_factory) -> dict:
    """``mvmae check`` of the list with --classes, --report .jsonl and .json (two CLI runs)."""
    d = tmp_path_factory.mktemp("check_reports")
    runs = {}
    for suffix in ("jsonl", "json"):
        report = d / f"report.{suffix}"
        result = cli_runner.invoke(main, ["check", str(check_list), "--classes", str(classes_json),
                                          "--report", str(report)])
        runs[suffix] = (result, report)
    return runs


def _records(report: Path) -> tuple[list[dict], dict]:
    if report.suffix == ".jsonl":
        rows = [json.loads(line) for line in report.read_text().splitlines()]
        return rows[:-1], rows[-1]
    data = json.loads(report.read_text())
    return data["videos"], data["summary"]


def test_every_video_gets_exactly_its_codes(checked) -> None:
    result, report = checked["jsonl"]
    assert result.exit_code == 1, result.output
    videos, _ = _records(report)
    assert [v["index"] for v in videos] == list(range(len(CASES)))
    for video, (name, label, codes, with_classes) in zip(videos, CASES):
        assert video["codes"] == codes + with_classes, name
        severities = {CODES[c][0] for c in video["codes"]}
        assert video["status"] == (ERROR if ERROR in severities else WARNING if severities else "ok"), name
        assert [p["severity"] for p in video["problems"]] == [CODES[c][0] for c in video["codes"]]


def test_messages_name_the_reason(checked) -> None:
    videos, _ = _records(checked["jsonl"][1])
    by_name = {name: video for (name, *_), video in zip(CASES, videos)}
    message = {name: " ".join(p["message"] for p in v["problems"]) for name, v in by_name.items()}
    assert "codec is hevc" in message["hevc"] and "codec is mpeg4" in message["mpeg4"]
    assert "unknown to ffmpeg" in message["unknown_codec"].lower()
    assert "found: audio" in message["audio_only"]
    assert "10 frames" in message["short"] and "needs 16" in message["short"]
    assert "declares 48 frames, the bitstream holds 24" in message["truncated_faststart"]
    assert "40 to 80 ms" in message["vfr"]
    assert "holds 47" in message["damaged_slice"] and "1 packets with unreadable headers" in message["damaged_slice"]
    assert "177x145" in message["odd_size"]
    assert "a folder" in message["folder"]
    assert str(by_name["good_a"]["source"]) in message["good_a_link"]
    assert "labelled 'jump' there" in message["good_b_copy"]
    assert "'swim' is not in the class list" in message["good_swim"]
    first = NAMES.index("good_a")
    assert [by_name[n]["duplicate_of"] for n in ("good_a_again", "good_a_link", "good_b_copy")] == \
        [first, first, NAMES.index("good_b")]


def test_summary_counts_and_class_problems(checked) -> None:
    _, summary = _records(checked["jsonl"][1])
    expected = Counter(code for _, _, codes, extra in CASES for code in codes + extra)
    # with GIVEN_CLASSES, extract run would number jump 0 and run 1 (no 'dance' video), not 1 and 2
    expected.update({"label_index_mismatch": 2, "class_missing": 1})
    assert {code: p["count"] for code, p in summary["problems"].items()} == dict(expected)
    assert {(c["code"], c["class"]) for c in summary["class_problems"]} == {
        ("label_index_mismatch", "jump"), ("label_index_mismatch", "run"), ("class_missing", "dance")}
    statuses = Counter()
    for _, _, codes, extra in CASES:
        severities = {CODES[c][0] for c in codes + extra}
        statuses[ERROR if ERROR in severities else WARNING if severities else "ok"] += 1
    assert (summary["num_ok"], summary["num_warning"], summary["num_error"]) == \
        (statuses["ok"], statuses[WARNING], statuses[ERROR])
    assert summary["num_videos"] == len(CASES) and summary["passed"] is False
    usable = Counter(label for name, label, codes, extra in CASES
                     if not any(CODES[c][0] == ERROR for c in codes + extra))
    assert summary["classes"] == {
        name: {"listed": sum(label == name for _, label, *_ in CASES), "usable": usable[name]}
        for name in GIVEN_CLASSES}
    errors_first = [p["severity"] for p in summary["problems"].values()]
    assert errors_first == sorted(errors_first)  # "error" < "warning": errors listed first
    for code, p in summary["problems"].items():
        assert 1 <= len(p["examples"]) <= 3 and p["severity"] == CODES[code][0]


def test_report_schema_json_and_jsonl_agree(checked) -> None:
    (_, jsonl), (_, as_json) = checked["jsonl"], checked["json"]
    videos_l, summary_l = _records(jsonl)
    videos_j, summary_j = _records(as_json)
    assert videos_l == videos_j
    assert {**summary_l, "seconds": 0} == {**summary_j, "seconds": 0}
    video_keys = {"type", "index", "source", "path", "label", "label_index", "status", "codes",
                  "problems", "duplicate_of", "size_bytes", "content_hash", "stream"}
    for video in videos_l:
        assert set(video) == video_keys and video["type"] == "video"
        for p in video["problems"]:
            assert set(p) == {"code", "severity", "message"} and p["code"] in CODES
    assert summary_l["type"] == "summary" and summary_l["format"] == "mvmae-check" and summary_l["version"] == 1
    for key in ("input", "passed", "num_videos", "num_ok", "num_warning", "num_error", "problems",
                "class_problems", "classes", "class_list", "config", "seconds", "mvmae_version"):
        assert key in summary_l, key
    good = videos_l[NAMES.index("good_a")]
    assert good["stream"]["num_frames"] == 20 and good["stream"]["codec"] == "h264"
    assert good["content_hash"].startswith(f"{good['size_bytes']}:") and good["label_index"] == 1
    assert videos_l[NAMES.index("missing")]["stream"] is None
    assert videos_l[NAMES.index("good_swim")]["label_index"] is None


def test_table_on_stdout(checked, check_list, check_media) -> None:
    result, report = checked["jsonl"]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{check_list}: {len(CASES)} videos, 4 classes")
    rows = {m.group(2): (m.group(1), int(m.group(3)), m.group(4))
            for m in (re.match(r"^\s+(error|warning)\s+(\w+)\s+(\d+)\s+(.*)$", line) for line in lines) if m}
    _, summary = _records(report)
    assert {code: count for code, (_, count, _) in rows.items()} == \
        {code: p["count"] for code, p in summary["problems"].items()}
    assert rows["unsupported_codec"][2] == ", ".join(str(check_media[n]) for n in ("hevc", "mpeg4", "unknown_codec"))
    assert rows["not_video"][0] == "error" and rows["odd_size"][0] == "warning"
    assert lines[-2].startswith("FAILED") and lines[-1] == f"report -> {report}"


def test_without_classes_reports_the_histogram(check_list) -> None:
    report = check_dataset(CheckConfig(input=check_list))
    codes = [v["codes"] for v in report.videos]
    assert codes == [c for _, _, c, _ in CASES]  # no label problems without a class list
    s = report.summary
    assert list(s["classes"]) == ["jump", "run", "swim", "wave"]
    assert s["classes"]["swim"] == {"listed": 1, "usable": 1}
    assert {name: c["usable"] for name, c in s["classes"].items()} == {"jump": 4, "run": 3, "swim": 1, "wave": 3}
    # median usable 3 -> threshold max(2, ceil(0.3)) = 2: only swim is small
    assert s["class_problems"] == [{"code": "class_small", "severity": WARNING, "class": "swim",
                                    "message": "1 usable of 1 listed videos, fewer than 2"}]


def test_workers_2_gives_the_same_report(check_list, classes_json) -> None:
    """Two supervised probing processes report exactly what probing in this process does."""
    one = check_dataset(CheckConfig(input=check_list, classes=classes_json, workers=0))
    two = check_dataset(CheckConfig(input=check_list, classes=classes_json, workers=2))
    assert one.videos == two.videos
    drop = {"seconds": 0, "config": None}
    assert {**one.summary, **drop} == {**two.summary, **drop}
    assert two.summary["config"]["workers"] == 2


def remux_repeated(src: Path, dst: Path, times: int) -> Path:
    """``src``'s packets muxed ``times`` times back to back: a long, valid video made in a blink
    whose probe (every packet demuxed, slice headers parsed) takes a while."""
    with av.open(str(src)) as inp:
        template = inp.streams.video[0]
        packets = [p for p in inp.demux(template) if p.size]
        step = max(p.pts for p in packets) + 1000
        with av.open(str(dst), "w") as out:
            stream = out.add_stream_from_template(template)
            for k in range(times):
                for p in packets:
                    q = av.Packet(bytes(p))
                    q.pts, q.dts, q.time_base, q.is_keyframe = p.pts + k * step, p.dts + k * step, p.time_base, p.is_keyframe
                    q.stream = stream
                    out.mux(q)
    return dst


def _signal_probers_of(path: Path, sig: int, hit: list[int], stop: threading.Event) -> None:
    """Send ``sig`` once to the first worker process seen with ``path`` open: SIGKILL is what a
    file whose probe crashes FFmpeg (or the OOM killer) does to it, SIGSTOP what a hang looks
    like from outside."""
    target = str(path.resolve())
    while not hit and not stop.is_set():
        for child in multiprocessing.active_children():
            try:
                fds = os.listdir(f"/proc/{child.pid}/fd")
                held = any(os.readlink(f"/proc/{child.pid}/fd/{fd}") == target for fd in fds)
            except OSError:  # the process or one of its descriptors went away meanwhile
                continue
            if held:
                os.kill(child.pid, sig)
                hit.append(child.pid)
                break
        time.sleep(0.002)


@pytest.fixture(scope="module")
def batched_list(check_media, tmp_path_factory) -> tuple[Path, Path]:
    """40 distinct paths (hard links to a few cases), so that 2 workers get batches of 2 files,
    with a slow file (30000 frames: its probe takes a while) first in the second batch."""
    d = tmp_path_factory.mktemp("batched")
    slow = remux_repeated(check_media["good_c"], d / "long.mp4", 1500)
    names = ["good_a", "good_b", "good_d", "truncated", "odd_size"]
    files, cases = {"long": slow}, []
    for k in range(39):
        name = names[k % len(names)]
        files[f"{name}_{k}"] = d / f"{name}_{k}.mp4"
        os.link(check_media[name], files[f"{name}_{k}"])
        cases.append((f"{name}_{k}", "run"))
    listing = write_list(d / "list.txt", files, cases[:2] + [("long", "run")] + cases[2:])
    return listing, slow


def _check_signalling_the_slow_file(batched_list, sig: int) -> tuple[dict, dict, Path]:
    """The report of a 2-worker run whose slow file's worker gets ``sig``, of a run in one
    process, and the slow file; checks that exactly one worker got it and was reaped."""
    listing, slow = batched_list
    expected = check_dataset(CheckConfig(input=listing))
    hit: list[int] = []
    stop = threading.Event()
    signaller = threading.Thread(target=_signal_probers_of, args=(slow, sig, hit, stop), daemon=True)
    signaller.start()
    try:
        report = check_dataset(CheckConfig(input=listing, workers=2, timeout=3.0))
    finally:
        stop.set()
        signaller.join()
    assert len(hit) == 1 and not Path(f"/proc/{hit[0]}").exists()  # killed and reaped
    assert [v["path"] for v in report.videos] == [v["path"] for v in expected.videos]
    return report, expected, slow


def _only_the_slow_file_differs(report, expected, slow: Path, code: str, message: str) -> None:
    for got, want in zip(report.videos, expected.videos):
        if got["path"] == str(slow):
            assert got["codes"] == [code] and code not in want["codes"]
            assert message in got["problems"][0]["message"]
        else:
            assert got == want


def test_a_dead_worker_loses_no_other_file(batched_list) -> None:
    """The worker probing one file is killed (as an FFmpeg crash or the OOM killer would): that
    file is 'unreadable' with the reason; every other one, the next file of its batch included,
    is reported as in a run in one process."""
    report, expected, slow = _check_signalling_the_slow_file(batched_list, signal.SIGKILL)
    _only_the_slow_file_differs(report, expected, slow, "unreadable",
                                "probing process died on this file (killed by SIGKILL")


def test_a_hung_worker_loses_no_other_file(batched_list) -> None:
    """The worker probing one file freezes (SIGSTOP: a hang, seen from outside): --timeout
    later it is killed and that file reported 'timeout'; every other file as in one process."""
    report, expected, slow = _check_signalling_the_slow_file(batched_list, signal.SIGSTOP)
    _only_the_slow_file_differs(report, expected, slow, "timeout",
                                "still probing after 3 s (--timeout): its process was killed")


def test_progress_counts_each_file_once(check_list) -> None:
    calls = []
    check_dataset(CheckConfig(input=check_list), lambda done, total: calls.append((done, total)))
    num_files = len(CASES) - 1  # good_a is listed twice under the same path
    assert calls == [(k, num_files) for k in range(1, num_files + 1)]


CLEAN = [("good_a", "jump"), ("good_c", "run"), ("odd_size", "run"), ("vfr", "jump")]


def test_warnings_alone_pass_and_strict_fails(check_media, cli_runner, tmp_path) -> None:
    path = write_list(tmp_path / "clean.txt", check_media, CLEAN)
    result = cli_runner.invoke(main, ["check", str(path), "--min-class-videos", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "passed: no errors"
    strict = cli_runner.invoke(main, ["check", str(path), "--min-class-videos", "1", "--strict", "--json"])
    assert strict.exit_code == 1
    report = json.loads(strict.stdout)
    assert {code: p["severity"] for code, p in report["summary"]["problems"].items()} == \
        {"odd_size": ERROR, "variable_fps": ERROR}


def test_allow_demotes_an_error(check_media, cli_runner, tmp_path) -> None:
    path = write_list(tmp_path / "short.txt", check_media, CLEAN + [("short", "run")])
    args = ["check", str(path), "--min-class-videos", "1", "--json"]
    assert cli_runner.invoke(main, args).exit_code == 1
    result = cli_runner.invoke(main, args + ["--allow", "too_short"])
    assert result.exit_code == 0, result.output
    short = json.loads(result.stdout)["videos"][-1]
    assert short["status"] == WARNING and short["problems"][0]["severity"] == WARNING


@pytest.mark.parametrize(("args", "short_ones"), [
    ([], {"short"}),  # 16 frames needed: the 10-frame clip
    (["--clip-frames", "8", "--stride", "2"], {"short"}),  # (8 - 1) * 2 + 1 = 15
    (["--clip-frames", "8", "--stride", "3"], {"short", "good_a", "good_c"}),  # 22 > 20
    (["--min-frames", "10"], set()),
    (["--min-frames", "11"], {"short"}),
])
def test_clip_length_sets_too_short(check_media, cli_runner, tmp_path, args, short_ones) -> None:
    cases = [("good_a", "jump"), ("good_c", "run"), ("short", "run")]
    path = write_list(tmp_path / "list.txt", check_media, cases)
    result = cli_runner.invoke(main, ["check", str(path), "--json", "--min-class-videos", "1", *args])
    videos = json.loads(result.stdout)["videos"]
    assert {name for (name, _), v in zip(cases, videos) if "too_short" in v["codes"]} == short_ones
    assert result.exit_code == (1 if short_ones else 0)


def test_long_video_matches_extract_run_segments(edge_media, tmp_path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(f"{edge_media['pan']} jump\n")  # 48 frames at 25 fps: 1.92 s
    for max_seconds, segments in [(1.0, 2), (0.5, 4), (2.0, 1), (0.0, 1)]:
        report = check_dataset(CheckConfig(input=path, max_seconds=max_seconds, min_class_videos=1))
        video = report.videos[0]
        assert video["codes"] == (["long_video"] if segments > 1 else []), max_seconds
        if segments > 1:
            assert f"makes {segments} samples" in video["problems"][0]["message"]
        assert len(list(iter_segments(edge_media["pan"], max_seconds=max_seconds))) == segments


def test_folder_input_and_integer_labels(check_media, edge_media, tmp_path) -> None:
    root = tmp_path / "by_class"
    for cls, names in {"jump": ["good_a", "hevc"], "run": ["good_c", "good_a_copy"]}.items():
        (root / cls).mkdir(parents=True)
        for name in names:
            src = check_media["good_a"] if name == "good_a_copy" else check_media[name]
            shutil.copyfile(src, root / cls / f"{name}.mp4")
    report = check_dataset(CheckConfig(input=root, min_class_videos=1))
    assert [(v["source"], v["codes"]) for v in report.videos] == [
        ("jump/good_a.mp4", []), ("jump/hevc.mp4", ["unsupported_codec"]),
        ("run/good_a_copy.mp4", ["duplicate_content"]), ("run/good_c.mp4", [])]
    listing = tmp_path / "ints.txt"
    listing.write_text(f"{check_media['good_a']} 0\n{check_media['good_c']} 3\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("jump\nrun\nwave\n")
    report = check_dataset(CheckConfig(input=listing, classes=classes, min_class_videos=1))
    assert [v["codes"] for v in report.videos] == [[], ["label_unknown"]]
    assert [v["label"] for v in report.videos] == ["jump", "3"]
    assert "index 3" in report.videos[1]["problems"][0]["message"]
    assert {(c["code"], c["class"]) for c in report.summary["class_problems"]} == {
        ("class_missing", "run"), ("class_missing", "wave")}  # indices keep their meaning: no mismatch


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "no such list file or folder"),
    ("clip.mp4\n", "expected 'path label'"),
    ("", "no videos listed"),
    ("a.mp4 1\nb.mp4 run\n", "mix class indices and class names"),
])
def test_bad_list_is_a_one_line_error(cli_runner, tmp_path, content, fragment) -> None:
    path = tmp_path / "list.txt"
    if content is not None:
        path.write_text(content)
    result = cli_runner.invoke(main, ["check", str(path)])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:"), result.stderr
    assert fragment in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(("name", "text", "fragment"), [
    ("classes.json", "{\"jump\": 0}", "expected a non-empty list"),
    ("classes.json", "[\"jump\", ", "not JSON"),
    ("classes.json", "[\"jump\", \"jump\"]", "listed twice"),
    ("classes.txt", "\n\n", "expected a non-empty list"),
    ("absent.json", None, "cannot read"),
])
def test_bad_class_list_is_a_one_line_error(check_media, cli_runner, tmp_path, name, text, fragment) -> None:
    listing = write_list(tmp_path / "list.txt", check_media, [("good_a", "jump")])
    classes = tmp_path / name
    if text is not None:
        classes.write_text(text)
    with pytest.raises(VideoListError, match=fragment):
        load_class_list(classes)
    result = cli_runner.invoke(main, ["check", str(listing), "--classes", str(classes)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [result.stderr.strip()] and str(classes) in result.stderr


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"clip_frames": 0}, "clip_frames"), ({"stride": 0}, "stride"), ({"workers": -1}, "workers"),
    ({"min_frames": -1}, "min_frames"), ({"max_seconds": -1.0}, "max_seconds"),
    ({"allow": ("odd_size",)}, "allow takes error codes"), ({"allow": ("nonsense",)}, "nonsense"),
])
def test_config_validation(kwargs, fragment) -> None:
    with pytest.raises(ValueError, match=fragment):
        CheckConfig(input=Path("list.txt"), **kwargs)


def test_cli_usage_errors(check_media, cli_runner, tmp_path) -> None:
    listing = write_list(tmp_path / "list.txt", check_media, [("good_a", "jump")])
    for args, fragment in [(["--allow", "odd_size"], "allow takes error codes"),
                           (["--report", str(tmp_path / "r.txt")], ".json or .jsonl")]:
        result = cli_runner.invoke(main, ["check", str(listing), *args])
        assert result.exit_code == 2 and fragment in result.stderr, result.output
    assert not (tmp_path / "r.txt").exists()


def test_help_documents_every_code_and_the_defaults(cli_runner) -> None:
    text = cli_runner.invoke(main, ["check", "--help"]).stdout
    errors_part, warnings_part = text.split("Warnings (")
    for code, (severity, meaning) in CODES.items():
        part = errors_part if severity == ERROR else warnings_part
        assert re.search(rf"^\s+{code}\s", part, re.MULTILINE), code
        assert f"{code} {meaning}" in " ".join(part.split()), code  # the table's words, not a copy
    defaults = CheckConfig(input=Path("x"))
    for option, value in [("--clip-frames", defaults.clip_frames), ("--stride", defaults.stride),
                          ("--max-seconds", defaults.max_seconds), ("--workers", defaults.workers),
                          ("--examples", defaults.max_examples)]:
        segment = text.split(f"  {option} ", 1)[1].split("\n  -", 1)[0]
        assert f"[default: {value:g}" in " ".join(segment.split()), option
    assert (defaults.clip_frames, defaults.stride, defaults.required_frames) == (16, 1, 16)
