"""Figures of image panels with titles, and strips of them as PNG and GIF.

Figures are `matplotlib.figure.Figure` objects drawn on the Agg canvas, never
through `pyplot`: no global plotting state, no display needed. A *panel* is an
`(image, title)` pair (image `(h, w, 3)` RGB in `[0, 1]`) or None for an empty
cell; a *frame* is a list of panels stacked vertically (one step of a run).
"""

import numpy as np

from keras_apm.utils.optional import require
from keras_apm.visualize import files
from keras_apm.visualize.images import to_numpy

# About 220 pixels a panel: a 32x32 grid and its title stay readable, and a
# strip of eight frames stays under 2000 pixels wide.
PANEL_INCHES = 2.2
DPI = 100


def panel_figure(rows, title=None, panel_inches=PANEL_INCHES, dpi=DPI):
    """A figure with one titled image panel per cell.

    Args:
        rows: list of rows, each a list of panels: `(image, title)` with
            `image` `(h, w, 3)` RGB in `[0, 1]` (clipped), or None. Shorter
            rows are padded with empty cells. Grids are drawn with square
            pixels (nearest), photos smoothly.
        title: optional figure title.
        panel_inches, dpi: size of one panel.

    Returns:
        A `matplotlib.figure.Figure`.

    Example:
    ```python
    fig = panel_figure([[(image, "input"), (islands, "islands")]])
    save_figure(fig, "out.png")
    ```
    """
    backend_agg = require("matplotlib.backends.backend_agg", extra="visualize")
    FigureCanvasAgg = backend_agg.FigureCanvasAgg
    Figure = require("matplotlib.figure", extra="visualize").Figure

    if not rows or not all(isinstance(r, (list, tuple)) and r for r in rows):
        raise ValueError(
            "Expected a non-empty list of non-empty rows of panels."
        )
    ncols = max(len(r) for r in rows)
    fig = Figure(
        figsize=(
            ncols * panel_inches,
            len(rows) * panel_inches + (0.4 if title else 0),
        ),
        dpi=dpi,
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for i, row in enumerate(rows):
        for j, ax in enumerate(axes[i]):
            ax.set_axis_off()
            panel = row[j] if j < len(row) else None
            if panel is None or panel[0] is None:
                continue
            image = to_numpy(panel[0])
            if image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(
                    f"Expected an (h, w, 3) RGB panel at row {i}, column {j}. "
                    f"Received shape {image.shape}."
                )
            small = max(image.shape[:2]) <= 128
            ax.imshow(
                np.clip(image, 0.0, 1.0),
                interpolation="nearest" if small else "antialiased",
            )
            if panel[1]:
                ax.set_title(str(panel[1]), fontsize=9)
    if title:
        fig.suptitle(str(title), fontsize=11)
    return fig


def save_strip(frames, png_path, gif_path=None, title=None, gif_frames=None):
    """Writes frames side by side as a PNG strip, and one by one as a GIF.

    Args:
        frames: list of frames (lists of panels, stacked vertically).
        png_path: the strip (`.png`).
        gif_path: optional `.gif`, one frame at a time with its titles.
        title: title of the strip and of every GIF frame.
        gif_frames: frames for the GIF if not `frames` (e.g. without the
            input images a strip shows at its ends).

    Returns:
        `(png_path, gif_path or None)`.

    Example:
    ```python
    save_strip([[(a, "step 0")], [(b, "step 50")]], "run.png", "run.gif")
    ```
    """
    if not frames:
        raise ValueError("Expected at least one frame.")
    height = max(len(f) for f in frames)
    rows = [
        [f[k] if k < len(f) else None for f in frames] for k in range(height)
    ]
    files.save_figure(panel_figure(rows, title=title), png_path)
    if gif_path is None:
        return png_path, None
    # Every frame figure has the same size, so the rendered arrays match.
    width = max(len(f) for f in gif_frames or frames)
    pictures = [
        files.figure_to_array(
            panel_figure([list(f) + [None] * (width - len(f))], title=title)
        )
        for f in gif_frames or frames
    ]
    files.save_gif(pictures, gif_path)
    return png_path, gif_path


def islands_figure(images, rgb, islands, teacher_islands=None, title=None):
    """The "input | RGB decode | islands (| teacher islands)" figure.

    One row per image.

    Args:
        images: list of `(H, W, 3)` inputs in `[0, 1]`.
        rgb: list of `(h, w, 3)` RGB decodes in `[0, 1]`, or None (no RGB head).
        islands: list of `(h, w, 3)` island colours.
        teacher_islands: optional list of the teacher grids' colours.
        title: optional figure title.

    Returns:
        A `matplotlib.figure.Figure`.

    Example:
    ```python
    fig = islands_figure([view / 255], [rgb], [island_colors(features)])
    save_figure(fig, "islands.png")
    ```
    """
    if rgb is None:
        rgb = [None] * len(images)
    lists = [images, rgb, islands] + (
        [teacher_islands] if teacher_islands else []
    )
    if len({len(x) for x in lists}) != 1:
        raise ValueError(
            "Expected one RGB decode and island map per image. Received "
            f"{[len(x) for x in lists]} (images, rgb, islands, teacher)."
        )
    rows = []
    for i in range(len(images)):
        row = [
            (images[i], "input"),
            (rgb[i], "APM RGB decode"),
            (islands[i], "APM islands"),
        ]
        if teacher_islands:
            row.append((teacher_islands[i], "teacher islands"))
        rows.append(row)
    return panel_figure(rows, title=title)
