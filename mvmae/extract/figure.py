"""A picture of one video's motion fields (``mvmae shards show``, ``mvmae extract video --show``).

Three panels side by side: the first I-frame with the field of the frame after it drawn over it,
then the field of one P-frame and of one B-frame over their latest I-frame (dimmed). Each valid
cell's vector (dx, dy) px per frame is an arrow from the cell's centre, coloured by its length on
one scale for all panels; each panel's arrows are lengthened by a factor (in its title) so that
its longest ones span about a cell. Cells without a vector (intra blocks) are shaded grey. The P-
and B-frame shown are the ones with the most moving cells (> 0.5 px/frame) of their type.

Matplotlib's Agg canvas is used directly (no pyplot state, no display needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvmae.extract.video import VideoFields
from mvmae.files import atomic_open

MOVING_PX_PER_FRAME = 0.5  # a cell moves when its vector is longer (choosing the P/B frame shown)
MAX_ARROWS_PER_ROW = 32  # denser fields are drawn on every k-th cell
ARROW_CELLS = 1.2  # the longest arrows of a panel span about this many cells
MAX_GAIN = 10.0  # arrows are lengthened at most this much
PANEL_IN = 4.0  # panel width, inches (100 dpi)


@dataclass(frozen=True)
class Panel:
    """One panel: the field of display frame ``frame`` (None: none of that type) drawn over
    I-frame ``iframe`` (an index into ``fields.iframes``; None: no I-frame), and its title."""

    title: str
    frame: int | None
    iframe: int | None
    dim: bool


def _moving_cells(fields: VideoFields, t: int) -> int:
    length = np.hypot(fields.mv[t, 0], fields.mv[t, 1])  # (h, w) px per frame
    return int((fields.valid[t] & (length > MOVING_PX_PER_FRAME)).sum())


def _latest_iframe(fields: VideoFields, t: int) -> int | None:
    """Index into ``fields.iframes`` of the latest I-frame shown at or before frame ``t``."""
    if not len(fields.iframe_index):
        return None
    before = [k for k, i in enumerate(fields.iframe_index) if i <= t]
    return before[-1] if before else 0


def choose_panels(fields: VideoFields) -> list[Panel]:
    """The I-frame panel and the P- and B-frame panels of ``fields`` (see the module doc)."""
    types = bytes(fields.frame_types).decode("ascii")
    shown = [k for k, i in enumerate(fields.iframe_index) if 0 <= i < len(types)]
    k = shown[0] if shown else (0 if len(fields.iframe_index) else None)
    start = int(fields.iframe_index[k]) if k is not None else -1
    after = start + 1 if 0 <= start + 1 < len(types) and types[start + 1] != "I" else None
    title = (f"I-frame {start}" if k is not None else "no I-frame") + (
        f" + field of frame {after} ({types[after]})" if after is not None else "")
    panels = [Panel(title, after, k, dim=False)]
    for kind in "PB":
        frames = [t for t, c in enumerate(types) if c == kind]
        if not frames:
            panels.append(Panel(f"no {kind}-frame in this clip", None, None, dim=True))
            continue
        t = max(frames, key=lambda f: (_moving_cells(fields, f), -f))
        k = _latest_iframe(fields, t)
        under = f" over I-frame {int(fields.iframe_index[k])}" if k is not None else ""
        panels.append(Panel(f"{kind}-frame {t}{under}", t, k, dim=True))
    return panels


def _lengths(fields: VideoFields, t: int) -> np.ndarray:
    """Vector lengths of frame ``t``'s valid cells, px per frame (1-d)."""
    return np.hypot(fields.mv[t, 0], fields.mv[t, 1])[fields.valid[t]]


def _gain(lengths: np.ndarray, cell: float) -> float:
    """Arrow lengthening for one panel: its longest arrows (99th percentile) span about
    ``ARROW_CELLS`` cells (``cell`` px of the drawing), at least x1 and at most x``MAX_GAIN``
    (a near-static field stays small)."""
    longest = float(np.percentile(lengths, 99)) if lengths.size else 0.0
    return 1.0 if longest <= 0 else float(np.clip(ARROW_CELLS * cell / longest, 1.0, MAX_GAIN))


def _drawing_scale(fields: VideoFields) -> tuple[float, tuple[int, int]]:
    """(drawing px per source px, drawing (height, width) px): the I-frames' size, else the source's."""
    if len(fields.iframes):
        return fields.iframes.shape[2] / fields.size[1], fields.iframes.shape[1:3]
    return 1.0, tuple(fields.size)


def _draw_panel(ax, fields: VideoFields, panel: Panel, norm) -> object | None:
    """Draw one panel on ``ax``; returns its arrows (for the colour bar) or None."""
    h, w = fields.valid.shape[1:]
    px, (height, width) = _drawing_scale(fields)
    cell = fields.grid * px  # drawing px per cell
    gain = _gain(_lengths(fields, panel.frame), cell) if panel.frame is not None else 1.0
    ax.set_title(panel.title + (f", arrows x{gain:.1f}" if panel.frame is not None else ""), fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if panel.iframe is not None:
        image = fields.iframes[panel.iframe]
        ax.imshow(image.mean(-1) if panel.dim else image, cmap="gray", alpha=0.55 if panel.dim else 1.0,
                  extent=(0, width, height, 0), interpolation="bilinear")
    else:
        ax.imshow(np.full((1, 1), 0.9), cmap="gray", vmin=0, vmax=1, extent=(0, width, height, 0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    if panel.frame is None:
        return None
    invalid = np.zeros((h, w, 4), np.float32)
    invalid[~fields.valid[panel.frame]] = (0.5, 0.5, 0.5, 0.55)  # grey: no vector
    ax.imshow(invalid, extent=(0, w * cell, h * cell, 0), interpolation="nearest")
    step = max(1, math.ceil(w / MAX_ARROWS_PER_ROW))
    rows, cols = np.nonzero(fields.valid[panel.frame][::step, ::step])
    rows, cols = rows * step, cols * step
    dx, dy = fields.mv[panel.frame, 0, rows, cols], fields.mv[panel.frame, 1, rows, cols]  # px per frame
    # Arrows in I-frame px along (dx, dy): x right, y down (the image's axes), lengthened by gain.
    return ax.quiver((cols + 0.5) * cell, (rows + 0.5) * cell, dx * px * gain, dy * px * gain, np.hypot(dx, dy),
                     cmap="plasma", norm=norm, angles="xy", scale_units="xy", scale=1, width=0.004,
                     headwidth=3.5, headlength=4, headaxislength=3.5, edgecolor="black", linewidth=0.3)


def motion_figure(fields: VideoFields, title: str = ""):
    """The three-panel matplotlib ``Figure`` of ``fields`` (an Agg canvas; axes in panel order).

    fields: one video's (or shard sample's) export-schema fields: mv float32 (T, 2, h, w) px per
    frame, valid bool (T, h, w), iframes uint8 (K, H', W', 3). title: the figure's first line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    panels = choose_panels(fields)
    lengths = np.concatenate([_lengths(fields, p.frame) for p in panels if p.frame is not None] or [np.zeros(0)])
    top = max(float(np.percentile(lengths, 99)), 1e-3) if lengths.size else 1.0  # colour scale, px/frame
    _, (height, width) = _drawing_scale(fields)
    fig = Figure(figsize=(3 * PANEL_IN + 0.9, PANEL_IN * height / width + 0.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    norm = Normalize(0.0, top)
    arrows = [a for ax, p in zip(axes, panels) if (a := _draw_panel(ax, fields, p, norm)) is not None]
    if arrows:
        bar = fig.colorbar(arrows[0], ax=list(axes), fraction=0.02, pad=0.01)
        bar.set_label("px per frame", fontsize=8)
    types = bytes(fields.frame_types).decode("ascii")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.supxlabel(f"{fields.num_frames} frames ({types.count('I')} I, {types.count('P')} P, "
                         f"{types.count('B')} B), grid {fields.grid} px; grey cells: no vector (intra)",
                  fontsize=8)
    return fig


def plot_motion(fields: VideoFields, out_png: str | Path, title: str = "") -> Path:
    """Write ``motion_figure(fields, title)`` to ``out_png`` (atomically, 100 dpi); returns the path."""
    out_png = Path(out_png)
    with atomic_open(out_png, "wb") as fh:
        motion_figure(fields, title).savefig(fh, format="png", dpi=100)
    return out_png
