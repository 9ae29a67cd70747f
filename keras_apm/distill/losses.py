"""Distillation losses and metrics, written with `keras.ops` (any backend).

Every function reduces to a float32 scalar, whatever the dtype of its inputs
(a `mixed_bfloat16` student's outputs are upcast first, so the reductions
are not done in bfloat16).
"""

from keras import ops

from keras_apm.models.apm.apm_outputs import FEATURES
from keras_apm.models.apm.apm_outputs import GLOBAL
from keras_apm.models.apm.apm_outputs import LEVELS
from keras_apm.models.apm.apm_outputs import RGB

RGB_SCALINGS = ("minmax", "unit")


def _f32(x):
    return ops.cast(x, "float32")


def mean_squared_error(predictions, targets):
    """Mean over every element of `(predictions - targets) ** 2`.

    Example:
    >>> mean_squared_error(np.ones((2, 3)), np.zeros((2, 3)))  # 1.0
    """
    return ops.mean(ops.square(_f32(predictions) - _f32(targets)))


def cosine_similarity(predictions, targets):
    """Cosine similarity along the last axis, one per vector (float32).

    The one cosine of the package: distillation averages it
    (`mean_cosine`), test-time training's `"cosine"` loss is `1 -` it per
    image. A zero vector has cosine 0 with anything (an epsilon in the norm
    keeps the gradient finite).

    Example:
    >>> cosine_similarity(np.eye(3), np.ones((3, 3)))  # 3 x 0.577
    """
    a = ops.normalize(_f32(predictions), axis=-1, epsilon=1e-12)
    b = ops.normalize(_f32(targets), axis=-1, epsilon=1e-12)
    return ops.sum(a * b, axis=-1)


def mean_cosine(predictions, targets):
    """`cosine_similarity` averaged over all other axes.

    Example:
    >>> mean_cosine(np.eye(3), np.eye(3))  # 1.0
    """
    return ops.mean(cosine_similarity(predictions, targets))


def patch_rgb_target(images, patch_size, scaling="minmax", channel_order="rgb"):
    """The RGB head's target: the image average-pooled over each patch.

    The one definition of the target, used by distillation
    (`APMDistiller`) and test-time training (`TestTimeTrainer`): computed
    from raw pixels at the student's input size, not from the converted
    student input, so that it does not depend on the student's converter
    (`"unit"`, `"imagenet"`, `"minmax"`) and TTT regresses exactly what the
    head was distilled to.

    The official COCO recipe scales each image to `[0, 1]` by its own
    minimum and maximum and regresses the pooled input. Because that scaling
    is affine per image, it is applied after the pooling here (same numbers,
    fewer operations). A constant image becomes zeros.

    Args:
        images: `(B, H, W, 3)` RGB pixels in `[0, 255]`.
        patch_size: int, pooling window and stride (the student's patch).
        scaling: `"minmax"` (per image to `[0, 1]`, official) or `"unit"`
            (`x / 255`, keeps absolute brightness).
        channel_order: `"rgb"`, or `"bgr"` for students that read BGR (the
            converted official COCO model): the target's channels follow.

    Returns:
        `(B, H / p, W / p, 3)` float32 target in `[0, 1]`.

    Example:
    >>> patch_rgb_target(images, 4).shape  # images (2, 32, 32, 3)
    (2, 8, 8, 3)
    """
    if scaling not in RGB_SCALINGS:
        raise ValueError(
            f"`rgb_scaling` must be one of {RGB_SCALINGS}. Received {scaling!r}"
        )
    x = _f32(images)
    pooled = ops.average_pool(
        x, pool_size=patch_size, strides=patch_size, padding="valid"
    )
    if scaling == "minmax":
        lo = ops.min(x, axis=(1, 2, 3), keepdims=True)
        hi = ops.max(x, axis=(1, 2, 3), keepdims=True)
        span = hi - lo
        # A constant image has no span: divide by 1 instead, giving zeros.
        pooled = (pooled - lo) / (span + ops.cast(span <= 0, "float32"))
    else:
        pooled = pooled / 255.0
    if channel_order == "bgr":
        pooled = ops.flip(pooled, axis=-1)
    return pooled


def distillation_terms(outputs, targets, weights, global_loss="cosine"):
    """All loss terms and metrics of one batch.

    Args:
        outputs: the student's outputs (`"features"`, and `"rgb"`,
            `"global"`, `"levels"` as the weights ask).
        targets: `"grid"`, and `"rgb"`, `"global"`, `"levels"` likewise.
        weights: dict with `"grid"`, `"rgb"`, `"global"` floats (a term
            whose weight is None is skipped) and `"levels"`, a tuple of one
            weight per level (empty without levels).
        global_loss: `"cosine"` (`1 - cosine`) or `"mse"`.

    Returns:
        `(total, terms)`: the weighted sum, and a dict of float32 scalars:
        `grid_loss`, `grid_cosine`, and where active `rgb_loss`,
        `global_loss`, `global_cosine`, `level_{i}_loss`.
    """
    terms = {}
    features, grid = outputs[FEATURES], targets["grid"]
    terms["grid_loss"] = mean_squared_error(features, grid)
    terms["grid_cosine"] = mean_cosine(features, grid)
    total = weights["grid"] * terms["grid_loss"]
    if weights.get(RGB) is not None:
        terms["rgb_loss"] = mean_squared_error(outputs[RGB], targets[RGB])
        total = total + weights[RGB] * terms["rgb_loss"]
    if weights.get(GLOBAL) is not None:
        cosine = mean_cosine(outputs[GLOBAL], targets[GLOBAL])
        if global_loss == "cosine":
            terms["global_loss"] = 1.0 - cosine
        else:
            terms["global_loss"] = mean_squared_error(
                outputs[GLOBAL], targets[GLOBAL]
            )
        terms["global_cosine"] = cosine
        total = total + weights[GLOBAL] * terms["global_loss"]
    for i, weight in enumerate(weights.get(LEVELS, ())):
        terms[f"level_{i}_loss"] = mean_squared_error(
            outputs[LEVELS][:, i], targets[LEVELS][:, i]
        )
        total = total + weight * terms[f"level_{i}_loss"]
    return total, terms
