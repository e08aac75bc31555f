"""``mvmae shards show``: a sample's motion fields drawn as arrows, from local and http shards
(a loopback server), on clips of known motion (``reader_dataset``: pans with 2 B-frames)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from mvmae.cli import main
from mvmae.extract.figure import PANEL_IN, choose_panels, motion_figure
from mvmae.shards.inspect import read_sample

KEY = "c1_coffee"  # content moves (-3, +1) px per frame


@pytest.mark.parametrize("form", ["local", "http"])
def test_show_writes_the_picture(reader_dataset, serve_folder, cli_runner, tmp_path, form) -> None:
    out = tmp_path / "show.png"
    if form == "local":
        result = cli_runner.invoke(main, ["shards", "show", reader_dataset["urls"], "--key", KEY, "--out", str(out)])
    else:
        with serve_folder(reader_dataset["shards"]) as base:
            url = f"{base}/train-{{000000..000003}}.tar"
            result = cli_runner.invoke(main, ["shards", "show", url, "--key", KEY, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"{KEY}: 40 frames (4 I, 13 P, 23 B) -> {out}"
    with Image.open(out) as image:
        width, height = image.size
    assert image.format == "PNG" and width == round((3 * PANEL_IN + 0.9) * 100)
    assert height == round((PANEL_IN * 144 / 192 + 0.9) * 100)
    assert not [p for p in tmp_path.iterdir() if p != out]  # no temporary left


def test_arrows_follow_the_motion_and_invalid_cells_are_marked(reader_dataset) -> None:
    """Every panel with a field: arrow colours are the vector lengths (px per frame), arrows
    point along (dx, dy) = the known pan; the grey overlay covers exactly the invalid cells."""
    fields, extra = read_sample(reader_dataset["urls"], KEY)
    vx, vy = reader_dataset["velocity"][KEY]
    panels = choose_panels(fields)
    types = bytes(fields.frame_types).decode()
    assert [p.frame is not None and types[p.frame] for p in panels] == ["B", "P", "B"]
    assert panels[0].frame == 1 and panels[0].title == "I-frame 0 + field of frame 1 (B)"
    fig = motion_figure(fields, title=KEY)
    for ax, panel in zip(fig.axes, panels):
        (arrows,) = ax.collections
        lengths = np.asarray(arrows.get_array())
        assert np.median(lengths) == pytest.approx(math.hypot(vx, vy), abs=0.3)
        u, v = np.median(arrows.U), np.median(arrows.V)
        assert math.atan2(v, u) == pytest.approx(math.atan2(vy, vx), abs=0.1)
        overlay = ax.images[1].get_array()  # (h, w, 4) RGBA over the cells
        assert np.array_equal(overlay[..., 3] > 0, ~fields.valid[panel.frame])


def test_unknown_key_is_one_line(reader_dataset, cli_runner, tmp_path) -> None:
    out = tmp_path / "show.png"
    result = cli_runner.invoke(main, ["shards", "show", reader_dataset["urls"], "--key", "nope", "--out", str(out)])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "'nope'" in line and not out.exists()
