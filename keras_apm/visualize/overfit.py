"""Overfit an APM on one image (or a few) and watch its islands form.

The paper's islands-over-iterations figure: a fresh APM is distilled on one
image's teacher grid (and, with an RGB head, on the image's patch colours),
and its grid is coloured every few steps with one colouring fitted on the
teacher's grid, so the student's colours converge to the teacher's.

Training is `keras_apm.APMDistiller` with `fit` (the project's distillation
recipe, on every backend), with the teacher's grids given as cached targets.
"""

import numpy as np

from keras_apm.utils.validation import check_number
from keras_apm.utils.validation import check_positive_int
from keras_apm.visualize import images as images_lib
from keras_apm.visualize import islands as islands_lib


def teacher_grids(teacher, views, grid_shape):
    """The teacher's `(B, h, w, D)` grids of images at the student's size.

    Args:
        teacher: a `keras_apm.teachers.Teacher` (takes RGB in `[0, 255]`).
        views: `(B, H, W, 3)` images in `[0, 255]` from `prepare_images`, so
            teacher and student see the same picture.
        grid_shape: the student's `(h, w)`; the teacher's grid must match
            (load it with `resize_to_grid=grid_shape` otherwise).
    """
    teacher.check_grid(tuple(grid_shape))
    return images_lib.to_numpy(teacher(np.asarray(views, "float32"))["grid"])


def overfit(
    model,
    views,
    targets,
    converter=None,
    steps=200,
    every=20,
    learning_rate=1e-3,
    rgb_weight=None,
):
    """Distils `model` on a few images for `steps` steps, with snapshots.

    Each step is one Adam step of `keras_apm.APMDistiller` on all the images
    at once, with the teacher's grids given (cached targets): `MSE(features,
    grid) + rgb_weight * MSE(rgb, patch colours)`. The model trains in place
    from its current weights: build a fresh one for the paper's figure. A
    global head, if any, gets no loss and is frozen meanwhile.

    Args:
        model: a `keras_apm.APM`.
        views: `(B, H, W, 3)` images in `[0, 255]` at the model's size (see
            `prepare_images`).
        targets: `(B, h, w, D)` teacher grids of `views`.
        converter: the model's `APMImageConverter`; default `1 / 255`
            scaling. Min-max converters get min-max RGB targets.
        steps: optimizer steps.
        every: steps between snapshots.
        learning_rate: Adam's learning rate.
        rgb_weight: weight of the RGB loss; default 1 with an RGB head.

    Returns:
        Snapshots at steps `0, every, 2 * every, ...` and `steps`, each a
        dict of `"step"`, `"loss"` (total), `"features_loss"`, `"rgb_loss"`
        (or None), `"features"` `(B, h, w, D)` and `"rgb"` `(B, h, w, 3)` (or
        None) NumPy arrays, computed after that step.

    Example:
    ```python
    model = keras_apm.APM(image_shape=(64, 64, 3), patch_size=8,
                          trunk_widths=(256, 256), feature_dim=teacher_dim)
    snapshots = overfit(model, views, teacher_grid, steps=100, every=20)
    [s["loss"] for s in snapshots]  # falling
    ```
    """
    import keras

    from keras_apm.distill import APMDistiller
    from keras_apm.models.apm.apm_image_converter import APMImageConverter

    steps = check_positive_int(steps, "steps")
    every = check_positive_int(every, "every")
    check_number(learning_rate, "`learning_rate`", low=0, low_open=True)
    if converter is None:
        converter = APMImageConverter(model.image_shape[:2], scaling="unit")
    data = {
        "images": images_lib.to_numpy(views),
        "grid": images_lib.to_numpy(targets),
    }
    distiller = APMDistiller(
        model,
        rgb_weight=rgb_weight,
        global_weight=0,
        image_converter=converter,
        rgb_scaling="minmax" if converter.scaling == "minmax" else "unit",
    )
    snapshots = []

    def snapshot(step):
        results = distiller(data)
        total, terms = distiller.compute_losses(results)
        out = {k: images_lib.to_numpy(v) for k, v in results["outputs"].items()}

        def number(x):
            # Through NumPy: on torch `float()` of a tensor that requires
            # grad warns (and a snapshot needs no gradient).
            return float(images_lib.to_numpy(x))

        snapshots.append(
            {
                "step": step,
                "loss": number(total),
                "features_loss": number(terms["grid_loss"]),
                "rgb_loss": (
                    number(terms["rgb_loss"]) if "rgb_loss" in terms else None
                ),
                "features": out["features"],
                "rgb": out.get("rgb") if "rgb_loss" in terms else None,
            }
        )

    def on_epoch_end(epoch, logs=None):
        # One epoch is one step: all the images in one batch.
        if (epoch + 1) % every == 0 or epoch + 1 == steps:
            snapshot(epoch + 1)

    pool = model.global_pool
    pool_trainable = pool is not None and pool.trainable
    if pool is not None:
        pool.trainable = False
    try:
        distiller.compile(optimizer=keras.optimizers.Adam(learning_rate))
        snapshot(0)
        distiller.fit(
            data,
            batch_size=len(data["images"]),
            epochs=steps,
            shuffle=False,
            verbose=0,
            callbacks=[
                keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)
            ],
        )
    finally:
        if pool is not None:
            pool.trainable = pool_trainable
    return snapshots


def overfit_frames(
    snapshots,
    targets,
    views=None,
    method="pca",
    converter=None,
    num_clusters=8,
    seed=0,
):
    """Panels of an overfitting run: islands (and RGB decode) per snapshot.

    The colouring is fitted on the teacher's grids, so the student's colours
    converge to the teacher's (t-SNE embeds everything together).

    Args:
        snapshots: what `overfit` returns.
        targets: `(B, h, w, D)` teacher grids.
        views: optional `(B, H, W, 3)` inputs in `[0, 255]`, shown under the
            teacher's islands in the last frame.
        method, num_clusters, seed: see `islands.island_colors`.
        converter: the `APMImageConverter` of the inputs (to show the RGB).

    Returns:
        Frames for `figures.save_strip`: one per snapshot (islands over RGB
        decode for each image), then the teacher's islands (over the input).
    """
    targets = list(images_lib.to_numpy(targets))
    count = len(targets)
    grids = [s["features"][i] for s in snapshots for i in range(count)]
    # One colouring for student and teacher, fitted on the teacher (t-SNE,
    # which cannot colour new points, embeds them all together).
    colors = islands_lib.island_colors(
        grids + targets,
        method=method,
        reference=None if method == "tsne" else targets,
        num_clusters=num_clusters,
        seed=seed,
    )
    colors, target_colors = colors[: len(grids)], colors[len(grids) :]
    frames = []
    for k, s in enumerate(snapshots):
        frame = []
        for i in range(count):
            frame.append(
                (
                    colors[k * count + i],
                    f"step {s['step']}, loss {s['loss']:.3g}",
                )
            )
            if s["rgb"] is not None:
                frame.append(
                    (
                        images_lib.to_display(s["rgb"][i], converter),
                        "RGB decode",
                    )
                )
        frames.append(frame)
    last = []
    for i in range(count):
        last.append((target_colors[i], "teacher"))
        if views is not None:
            last.append((np.asarray(views[i]) / 255.0, "input"))
    frames.append(last)
    return frames
