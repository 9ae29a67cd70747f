"""Interpolate between two images through their trigger columns.

APM's "the input percept is a field" claim: every location's answer depends
only on the trigger column `T` and the location, so evaluating the field at
`T = (1 - a) T_A + a T_B` morphs image A's features and RGB into image B's.
"""

import numpy as np

from keras_apm.utils.validation import check_number
from keras_apm.visualize import images as images_lib
from keras_apm.visualize import islands as islands_lib


def interpolate(model, inputs, num_frames=8, chunk_size="default"):
    """Evaluates the field along the line between two trigger columns.

    Frame `k` uses `a = k / (num_frames - 1)`: the first frame is exactly
    image A's own output and the last image B's.

    Args:
        model: a `keras_apm.APM`.
        inputs: `(2, H, W, C)` model inputs, images A and B.
        num_frames: int >= 2, frames including both ends.
        chunk_size: locations per MLP call (see `APM.evaluate_locations`).

    Returns:
        dict of NumPy arrays: `"alphas"` `(n,)`, `"features"`
        `(n, h, w, D)` and, with an RGB head, `"rgb"` `(n, h, w, 3)`.

    Example:
    ```python
    out = interpolate(model, x[:2], num_frames=5)
    out["features"].shape  # (5, h, w, D)
    ```
    """
    check_number(num_frames, "`num_frames` (both ends)", low=2, integer=True)
    x = images_lib.to_numpy(inputs)
    if x.shape[:1] != (2,):
        raise ValueError(
            f"Expected inputs of shape (2, H, W, C): images A and B. Received {x.shape}."
        )
    t_a, t_b = images_lib.to_numpy(model.trigger_column(x))
    alphas = np.linspace(0.0, 1.0, int(num_frames), dtype="float32")[:, None]
    # (1 - a) T_A + a T_B rather than T_A + a (T_B - T_A): the ends are then
    # exactly T_A and T_B in floating point.
    trigger = (1.0 - alphas) * t_a + alphas * t_b
    out = model.evaluate_locations(trigger=trigger, chunk_size=chunk_size)
    h, w = model.grid_shape
    result = {"alphas": alphas[:, 0]}
    for key in ("features", "rgb"):
        if key in out:
            value = images_lib.to_numpy(out[key])
            result[key] = value.reshape(len(trigger), h, w, value.shape[-1])
    return result


def interpolation_frames(
    result, views=None, method="pca", converter=None, num_clusters=8, seed=0
):
    """Panels of an interpolation: islands (and RGB decode) per frame.

    The colouring is fitted on both ends' grids, so a colour means the same
    kind of vector in every frame.

    Args:
        result: what `interpolate` returns.
        views: optional `(2, H, W, 3)` images A and B in `[0, 255]`, shown at
            the ends of the strip.
        method, num_clusters, seed: see `islands.island_colors`.
        converter: the `APMImageConverter` of the inputs (to show the RGB).

    Returns:
        `(strip_frames, gif_frames)` for `figures.save_strip`: the GIF's
        frames are the strip's without the input images.
    """
    grids = list(result["features"])
    colors = islands_lib.island_colors(
        grids,
        method=method,
        reference=None if method == "tsne" else [grids[0], grids[-1]],
        num_clusters=num_clusters,
        seed=seed,
    )
    frames = []
    for k, alpha in enumerate(result["alphas"]):
        end = {0: " (A)", len(grids) - 1: " (B)"}.get(k, "")
        frame = [(colors[k], f"a = {alpha:.2f}{end}")]
        if "rgb" in result:
            frame.append(
                (
                    images_lib.to_display(result["rgb"][k], converter),
                    "RGB decode",
                )
            )
        frames.append(frame)
    if views is None:
        return frames, frames
    views = np.asarray(views, "float32") / 255.0
    return [[(views[0], "image A")]] + frames + [
        [(views[1], "image B")]
    ], frames
