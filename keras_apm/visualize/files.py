"""Pictures out: PNG and GIF files, written atomically and kept small.

Each file is written to a temporary name beside its destination and renamed,
so an interrupted run never leaves half a picture. Pillow (a matplotlib
dependency) encodes. PNGs stay lossless RGB: a 256-colour palette shared by
photos and island colours visibly bands and tints both. GIF frames must use a
palette; each frame gets its own adaptive one.
"""

import os

import numpy as np

from keras_apm.utils.files import atomic_write
from keras_apm.utils.optional import require


def figure_to_array(fig):
    """Renders a matplotlib figure to `(H, W, 3)` uint8 RGB."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _to_pil(image, palette=False):
    Image = require("PIL.Image", extra="visualize")

    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.round(np.clip(array, 0.0, 1.0) * 255).astype("uint8")
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"Expected (H, W, 3) RGB. Received shape {array.shape}."
        )
    picture = Image.fromarray(array)
    if palette:
        picture = picture.quantize(256, dither=Image.Dither.NONE)
    return picture


def _write_atomically(path, suffix, write):
    path = os.fspath(path)
    if not path.lower().endswith(suffix):
        raise ValueError(f"Expected a {suffix} file name. Received {path!r}.")
    return atomic_write(path, write)


def save_png(image, path):
    """Writes `(H, W, 3)` RGB (uint8, or float in `[0, 1]`) as a PNG.

    Example:
    ```python
    save_png(figure_to_array(fig), "islands.png")
    ```
    """
    picture = _to_pil(image)
    return _write_atomically(
        path, ".png", lambda tmp: picture.save(tmp, format="PNG", optimize=True)
    )


def save_figure(fig, path):
    """Renders a matplotlib figure and writes it as a PNG."""
    return save_png(figure_to_array(fig), path)


def save_gif(frames, path, duration_ms=600):
    """Writes `(H, W, 3)` RGB frames of one size as a looping GIF.

    Example:
    ```python
    save_gif([figure_to_array(f) for f in figures], "run.gif")
    ```
    """
    if not frames:
        raise ValueError("Expected at least one frame for the GIF.")
    shapes = {np.shape(f) for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"GIF frames must have one shape. Received {shapes}.")
    pictures = [_to_pil(f, palette=True) for f in frames]

    def write(tmp):
        pictures[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=int(duration_ms),
            loop=0,
            optimize=True,
        )

    return _write_atomically(path, ".gif", write)
