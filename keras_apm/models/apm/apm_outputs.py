"""An `APM`'s outputs and their training targets, declared once.

`APM(images)` returns a dict keyed by output names (`FEATURES`, `RGB`,
`GLOBAL`, `LEVELS`; see `keras_apm.APM`). Each output is a *head*, and the
head table (`heads()`) states for every head, in one row (a `Head`), what the rest of
the package needs to know about it: where it is computed, its target (a
teacher output, or computed from the image), its distillation loss and
default weight, whether the feature cache stores its target and whether
test-time training computes it. The backbone, the distiller
(`keras_apm.distill.losses.default_losses`), the feature cache
(`cached_target_keys`), batched TTT and the distillation recipes iterate
over it; nothing else lists the heads by hand.

Adding a head is a layer plus one row (`register_head`): a layer that reads
the feature grid and computes from explicit weights like
`keras_apm.layers.AttentionPoolHead`, and its row. Build the APM with
`extra_heads=("name",)`, and the distiller trains it by default.

Example:
>>> from keras_apm.models.apm import apm_outputs
>>> model(images)[apm_outputs.FEATURES].shape  # (B, h, w, D)
>>> [head.name for head in apm_outputs.heads()]
['features', 'rgb', 'global', 'levels']
"""

import dataclasses

from keras_apm.teachers import teacher_outputs

# --- The student's outputs ----------------------------------------------
# The feature grid `(B, h, w, D)`; with GLOM levels, the top level.
FEATURES = "features"
# The RGB decode `(B, h, w, 3)`, when the model has an RGB head.
RGB = "rgb"
# The global vector `(B, D)`, when the model has a global head.
GLOBAL = "global"
# Every GLOM level `(B, num_levels, h, w, D)`, when `num_levels > 1`.
LEVELS = "levels"

# --- A teacher's outputs (`keras_apm.teachers.teacher_outputs`) -----------
TEACHER_GRID = teacher_outputs.GRID
TEACHER_GLOBAL = teacher_outputs.GLOBAL
TEACHER_LEVELS = teacher_outputs.LEVELS
TEACHER_HEAD_INPUT = teacher_outputs.HEAD_INPUT
TEACHER_LOGITS = teacher_outputs.LOGITS

# Where a head's target comes from.
TEACHER = "teacher"
IMAGE = "image"
SOURCES = (TEACHER, IMAGE)
# Where a head is computed: by the shared MLP at every location
# (`PerceptionMLP`), or by a layer reading another output's grid.
PER_LOCATION = "per_location"
ON_GRID = "on_grid"
# A head's distillation loss: MSE, or `1 - cosine` along the last axis.
HEAD_LOSSES = ("mse", "cosine")

RGB_SCALINGS = ("minmax", "unit")


@dataclasses.dataclass(frozen=True)
class Head:
    """One output head of an `APM` and its training target.

    Args:
        name: the output's key in `APM(images)`.
        target: the key of its target: a teacher output (`TEACHER_GRID`,
            ...) when `source` is `TEACHER`, a name of its own when `IMAGE`.
        source: `TEACHER` (the frozen teacher's output `target`, or the same
            key of a cached batch) or `IMAGE` (`image_target` computes it
            from the raw images).
        loss: `"mse"` or `"cosine"` (`1 - cosine`), the default loss.
        weight: the default loss weight (`APMDistiller`).
        term: the name of its loss term (`"{term}_loss"` in the logs);
            default `name`.
        weight_argument: the `APMDistiller` shorthand that sets the weight
            (`"grid_weight"`), or None.
        per_level: one term per entry of axis 1 (GLOM levels), named
            `"level_{i}"`.
        cosine_metric: also report the mean cosine as `"{term}_cosine"`.
        cached: whether `keras_apm.data.cache_teacher_features` stores the
            target (teacher targets only).
        ttt: whether batched test-time training computes the head.
        where: `PER_LOCATION` (an output of `PerceptionMLP`) or `ON_GRID`.
        layer: for `ON_GRID` heads, `(apm_config) -> keras layer`; the layer
            maps the grid of output `input` to this output, reports its own
            output spec, and has `explicit_weights()` and
            `call_with_weights(weights, grid)` (a leading per-image axis on
            the weights allowed), so that batched TTT runs the same math.
        input: the output an `ON_GRID` head reads (default `FEATURES`).
        enabled: `(apm_config) -> bool` for the built-in heads that an APM
            argument switches on (`global_head`); None: the head exists when
            listed in the APM's `extra_heads`.
        image_target: for `IMAGE` targets, `(images, patch_size, scaling,
            channel_order) -> target` from raw `[0, 255]` images.

    Example:
    ```python
    apm_outputs.register_head(apm_outputs.Head(
        name="mean", target=apm_outputs.TEACHER_GLOBAL, where=apm_outputs.ON_GRID,
        layer=lambda config: MeanHead(name="mean_head"),
    ))
    model = keras_apm.APM(..., extra_heads=("mean",))
    ```
    """

    name: str
    target: str
    source: str = TEACHER
    loss: str = "mse"
    weight: float = 1.0
    term: str = None
    weight_argument: str = None
    per_level: bool = False
    cosine_metric: bool = False
    cached: bool = False
    ttt: bool = False
    where: str = ON_GRID
    layer: object = None
    input: str = FEATURES
    enabled: object = None
    image_target: object = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(
                f"Head {self.name!r}: `source` must be one of {SOURCES}. "
                f"Received {self.source!r}."
            )
        if self.loss not in HEAD_LOSSES:
            raise ValueError(
                f"Head {self.name!r}: `loss` must be one of {HEAD_LOSSES}. "
                f"Received {self.loss!r}."
            )
        if self.where == ON_GRID and not callable(self.layer):
            raise ValueError(
                f"Head {self.name!r} is computed on the grid: give `layer`, "
                "a function `(apm_config) -> keras layer`."
            )
        if self.source == IMAGE and not callable(self.image_target):
            raise ValueError(
                f"Head {self.name!r} has an image target: give "
                "`image_target(images, patch_size, scaling, channel_order)`."
            )
        if self.cached and self.source != TEACHER:
            raise ValueError(
                f"Head {self.name!r}: only teacher targets are cached."
            )

    @property
    def term_name(self):
        return self.term or self.name


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
    from keras import ops

    if scaling not in RGB_SCALINGS:
        raise ValueError(
            f"`rgb_scaling` must be one of {RGB_SCALINGS}. Received {scaling!r}"
        )
    x = ops.cast(images, "float32")
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


def _global_pool(config):
    # Imported here: the layer modules import this table's names.
    from keras_apm.layers.attention_pool import AttentionPoolHead

    return AttentionPoolHead(
        config["global_num_heads"], dtype=config["dtype"], name="global_head"
    )


# The table, in the order of the loss terms in the logs. A row's position
# is also the order of the backbone's grid heads.
_HEADS = {
    FEATURES: Head(
        FEATURES, TEACHER_GRID, term="grid", weight_argument="grid_weight",
        cosine_metric=True, cached=True, ttt=True, where=PER_LOCATION,
    ),
    RGB: Head(
        RGB, RGB, source=IMAGE, weight_argument="rgb_weight",
        where=PER_LOCATION, image_target=patch_rgb_target,
    ),
    GLOBAL: Head(
        GLOBAL, TEACHER_GLOBAL, loss="cosine", weight_argument="global_weight",
        cosine_metric=True, cached=True, ttt=True, layer=_global_pool,
        enabled=lambda config: bool(config["global_head"]),
    ),
    LEVELS: Head(
        LEVELS, TEACHER_LEVELS, weight_argument="level_weights",
        per_level=True, cached=True, where=PER_LOCATION,
    ),
}  # fmt: skip
BUILT_IN = tuple(_HEADS)


def heads():
    """Every registered `Head`, built-in first, in registration order."""
    return tuple(_HEADS.values())


def get_head(name):
    """The `Head` of output `name`; raises a ValueError naming the choices."""
    if name not in _HEADS:
        raise ValueError(
            f"No output head named {name!r}. Registered heads: "
            f"{sorted(_HEADS)}. Add one with "
            "`keras_apm.models.apm.apm_outputs.register_head`."
        )
    return _HEADS[name]


def register_head(head):
    """Adds a `Head` row to the table; returns it.

    Example:
    >>> register_head(Head("mean", TEACHER_GLOBAL, layer=make_mean_head))
    """
    if not isinstance(head, Head):
        raise ValueError(
            f"Expected an `apm_outputs.Head`. Received {type(head).__name__}."
        )
    if head.name in _HEADS:
        raise ValueError(
            f"An output head named {head.name!r} is already registered."
        )
    if head.where != ON_GRID:
        raise ValueError(
            f"Head {head.name!r}: added heads are computed on the grid "
            "(`where=ON_GRID`, with a `layer`); the per-location heads are "
            "the outputs of `PerceptionMLP`."
        )
    _HEADS[head.name] = head
    return head


def unregister_head(name):
    """Removes an added head (tests; built-in heads stay)."""
    if name in BUILT_IN:
        raise ValueError(f"The built-in head {name!r} cannot be removed.")
    _HEADS.pop(name, None)


def grid_heads():
    """The heads computed by a layer on the grid, in table order."""
    return tuple(h for h in _HEADS.values() if h.where == ON_GRID)


def cached_target_keys():
    """The teacher outputs the feature cache stores, in table order.

    Example:
    >>> cached_target_keys()
    ('grid', 'global', 'levels')
    """
    keys = []
    for head in _HEADS.values():
        if head.cached and head.target not in keys:
            keys.append(head.target)
    return tuple(keys)


def ttt_heads():
    """The outputs that batched test-time training computes."""
    return tuple(h.name for h in _HEADS.values() if h.ttt)
