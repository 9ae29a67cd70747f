"""Features at any resolution: evaluate the field between patch centres.

The position code is defined at fractional `(y, x)`, so an APM can be asked
for features on a grid `r` times denser than its patch grid, a chunk of
locations at a time. At integer positions this is exactly the patch grid; in
between it is what the MLP makes of positions it never saw in training, which
the figure compares with bilinear upsampling of the patch grid.
"""

import numpy as np

from keras_apm.utils.optional import require
from keras_apm.utils.validation import check_positive_int
from keras_apm.visualize import images as images_lib
from keras_apm.visualize import islands as islands_lib


def dense_shape(grid_shape, factor):
    """`((h - 1) r + 1, (w - 1) r + 1)`: the dense grid over the patch centres.

    It spans the patch centres `[0, h - 1] x [0, w - 1]` in steps of `1 / r`,
    so every `r`-th point is a patch centre.
    """
    factor = check_positive_int(factor, "factor")
    return tuple((int(n) - 1) * factor + 1 for n in grid_shape)


def dense_locations(grid_shape, factor):
    """`(L, 2)` float32 `(y, x)` locations in steps of `1 / factor`, row-major.

    Example:
    >>> dense_locations((2, 2), 2)[:3]
    array([[0. , 0. ], [0. , 0.5], [0. , 1. ]], dtype=float32)
    """
    rows, cols = dense_shape(grid_shape, factor)
    yy, xx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return (np.stack([yy.ravel(), xx.ravel()], axis=-1) / factor).astype(
        "float32"
    )


def evaluate_dense(model, inputs, factor, chunk_size=1024):
    """Evaluates an APM on a grid `factor` times denser than its patch grid.

    Args:
        model: a `keras_apm.APM`.
        inputs: `(B, H, W, C)` model inputs.
        factor: int >= 1.
        chunk_size: locations per MLP call (memory stays flat however dense
            the grid), or None for all at once.

    Returns:
        dict of NumPy arrays `"features"` `(B, H', W', D)` and, with an RGB
        head, `"rgb"` `(B, H', W', 3)`; `(H', W') = dense_shape(...)`.

    Example:
    ```python
    dense = evaluate_dense(model, x, factor=4)
    np.allclose(dense["features"][:, ::4, ::4], model(x)["features"])
    ```
    """
    rows, cols = dense_shape(model.grid_shape, factor)
    out = model.evaluate_locations(
        images=images_lib.to_numpy(inputs),
        locations=dense_locations(model.grid_shape, factor),
        chunk_size=chunk_size,
    )
    result = {}
    for key in ("features", "rgb"):
        if key in out:
            value = images_lib.to_numpy(out[key])
            result[key] = value.reshape(
                value.shape[0], rows, cols, value.shape[-1]
            )
    return result


def bilinear_upsample(grid, factor):
    """Bilinear interpolation of an `(h, w, C)` grid at the dense locations.

    The patch centres stay where they are (`scipy.ndimage.zoom` with
    `grid_mode=False`), so `bilinear_upsample(g, r)[::r, ::r] == g`.

    Example:
    >>> bilinear_upsample(np.zeros((4, 4, 8)), 3).shape
    (10, 10, 8)
    """
    ndimage = require("scipy.ndimage", extra="visualize")

    g = images_lib.to_numpy(grid)
    if g.ndim != 3:
        raise ValueError(
            f"Expected an (h, w, C) grid. Received shape {g.shape}."
        )
    rows, cols = dense_shape(g.shape[:2], factor)
    zoom = (rows / g.shape[0], cols / g.shape[1], 1.0)
    return ndimage.zoom(g, zoom, order=1, grid_mode=False, mode="nearest")


def upsample_rows(
    patch,
    dense,
    factor,
    views=None,
    method="pca",
    converter=None,
    num_clusters=8,
    seed=0,
):
    """Figure rows comparing bilinear upsampling with the APM field.

    Per image, an RGB row (input, patch-grid decode, bilinear x r, APM x r)
    if the model has an RGB head, and an islands row (patch grid, bilinear
    x r, APM x r) coloured with one colouring fitted on the patch grid.

    Args:
        patch: dict with `"features"` `(B, h, w, D)` (and `"rgb"`): the
            model's output on its own grid.
        dense: what `evaluate_dense` returns.
        factor: the density factor `r`.
        views: optional `(B, H, W, 3)` inputs in `[0, 255]`.
        method, num_clusters, seed: see `islands.island_colors`.
        converter: the `APMImageConverter` of the inputs (to show the RGB).

    Returns:
        `(rows, rms)`: panel rows for `figures.panel_figure`, and per image
        the RMS difference between the APM field's features and the
        bilinear upsampling of the patch grid (0: the field adds nothing).
    """
    features = images_lib.to_numpy(patch["features"])
    h, w = features.shape[1:3]
    rows, rms = [], []
    for i, grid in enumerate(features):
        smooth = bilinear_upsample(grid, factor)
        field = dense["features"][i]
        rms.append(float(np.sqrt(np.mean((field - smooth) ** 2))))
        colors = islands_lib.island_colors(
            [grid, smooth, field],
            method=method,
            reference=None if method == "tsne" else grid,
            num_clusters=num_clusters,
            seed=seed,
        )
        size = f"{field.shape[0]}x{field.shape[1]}"
        view = None if views is None else np.asarray(views[i]) / 255.0
        if "rgb" in patch and "rgb" in dense:
            rgb = images_lib.to_display(patch["rgb"][i], converter)
            rows.append(
                [
                    (view, "input"),
                    (rgb, f"RGB decode {h}x{w}"),
                    (bilinear_upsample(rgb, factor), f"bilinear {size}"),
                    (
                        images_lib.to_display(dense["rgb"][i], converter),
                        f"APM field {size}",
                    ),
                ]
            )
            view = None
        rows.append(
            [
                (view, "input"),
                (colors[0], f"islands {h}x{w}"),
                (colors[1], f"bilinear {size}"),
                (colors[2], f"APM field {size}"),
            ]
        )
    return rows, rms
