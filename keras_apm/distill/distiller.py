"""`APMDistiller`: `model.fit` distillation of an APM student from a teacher."""

import importlib

import keras
from keras import ops

from keras_apm.distill import losses
from keras_apm.teachers.teacher import Teacher
from keras_apm.utils.validation import check_pixel_dtype
from keras_apm.utils.validation import static_shape

GLOBAL_LOSSES = ("cosine", "mse")
# The one backend-specific part of distillation: the training step.
_STEP_MODULES = {
    "jax": "keras_apm.distill.jax_step",
    "tensorflow": "keras_apm.distill.tensorflow_step",
    "torch": "keras_apm.distill.torch_step",
}


def _step_module():
    backend = keras.backend.backend()
    if backend not in _STEP_MODULES:
        raise ValueError(
            "APMDistiller trains on the tensorflow, jax and torch backends. "
            f"Received KERAS_BACKEND={backend!r}."
        )
    return importlib.import_module(_STEP_MODULES[backend])


def _check_weight(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"`{name}` must be a non-negative number. Received {value!r}."
        )
    if not value >= 0:
        raise ValueError(f"`{name}` must be >= 0. Received {value!r}.")
    return float(value)


def _head_weight(value, name, has_head, head):
    """None -> 1.0 if the head exists; 0 -> term off; > 0 needs the head."""
    if value is None:
        return 1.0 if has_head else None
    value = _check_weight(value, name)
    if value > 0 and not has_head:
        raise ValueError(
            f"`{name}={value}` asks for a {head} loss, but the student has no "
            f"{head} head. Build the APM with `{head}_head=True` or leave "
            f"`{name}` unset."
        )
    return value if value > 0 else None


class APMDistiller(keras.Model):
    """Distils a frozen teacher into an APM student with `compile` + `fit`.

    Each training step computes the targets (by running the frozen
    `teacher` on the batch, or by reading them from the batch when they were
    cached with `keras_apm.data.cache_teacher_features`), runs the student on
    the same images and updates the student only. The loss is

    `grid_weight * MSE(features, grid)`
    `+ rgb_weight * MSE(rgb, patch-average-pooled image)`
    `+ global_weight * (1 - cosine(global, teacher global))` (or MSE)
    `+ sum_i level_weights[i] * MSE(levels[:, i], teacher levels[:, i])`

    with terms for heads the student lacks left out. `fit` and `evaluate`
    report `loss`, every term (`grid_loss`, `rgb_loss`, `global_loss`,
    `level_{i}_loss`) and the mean cosine similarities `grid_cosine` and
    `global_cosine`, each averaged over the examples of the epoch.

    Data: batches of raw RGB images `(B, H, W, 3)` in `[0, 255]` at the
    student's `(H, W)` (a `(images, labels)` tuple is fine; labels are
    ignored), or dicts with `"images"` plus cached targets `"grid"`
    `(B, h, w, D)`, `"global"` `(B, D)` and `"levels"` `(B, L, h, w, D)` as
    the student needs them (then no teacher is needed). The student sees
    `image_converter(images)`; the teacher does its own preprocessing.

    RGB target: the image average-pooled over each `patch_size` patch and
    scaled per image to `[0, 1]` by its own min and max (`rgb_scaling=
    "minmax"`, the official COCO recipe, which matches the official head's
    final ReLU), or divided by 255 (`"unit"`). Its channel order follows
    the converter's.

    GLOM levels: a student built with `num_levels=L` learns level `i` from
    teacher level `i` (`Teacher.from_preset(..., layers=[...])` with `L`
    layer indices). The student's top level is also its `"features"`,
    regressed onto the teacher's final grid: end `layers` with `-1` so the
    two targets agree (or set `grid_weight=0`).

    Mixed precision: build the student under
    `keras.mixed_precision.set_global_policy("mixed_bfloat16")` (or with
    `dtype="mixed_bfloat16"`); losses and metrics are computed in float32.

    Args:
        student: a `keras_apm.APM`.
        teacher: a `keras_apm.teachers.Teacher`, a teacher preset (a string
            for `Teacher.from_preset`; levels use evenly spaced layers ending
            with the last), or None to train on cached targets only.
        grid_weight: float >= 0, weight of the feature-grid MSE.
        rgb_weight: float >= 0; default 1.0 if the student has an RGB head.
        global_weight: float >= 0; default 1.0 if the student has a global
            head.
        global_loss: `"cosine"` (`1 - cosine`, default) or `"mse"`.
        level_weights: one float per student level; default all 1.0.
        image_converter: a `keras_apm.APMImageConverter` for the student's
            input; default per-image min-max to `[0, 1]` (official COCO).
        rgb_scaling: `"minmax"` or `"unit"`, see above.
        **kwargs: `keras.Model` arguments (`name`).

    Example:
    ```python
    teacher = keras_apm.teachers.Teacher.from_preset("vit_tiny_digits")
    student = keras_apm.APM(**keras_apm.distill.default_student_config(teacher))
    distiller = keras_apm.APMDistiller(student, teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    distiller.fit(images_ds, validation_data=val_ds, epochs=10)
    distiller.save_student("my_apm")  # APM.from_preset("my_apm")
    ```
    """

    def __init__(
        self,
        student,
        teacher=None,
        grid_weight=1.0,
        rgb_weight=None,
        global_weight=None,
        global_loss="cosine",
        level_weights=None,
        image_converter=None,
        rgb_scaling="minmax",
        **kwargs,
    ):
        from keras_apm.models.apm import APM
        from keras_apm.models.apm import APMImageConverter

        # The distiller only routes tensors: keep its inputs (pixels, cached
        # targets) in float32 whatever the global policy; the student keeps
        # its own (e.g. mixed_bfloat16) policy.
        kwargs.setdefault("dtype", "float32")
        kwargs.setdefault("name", "apm_distiller")
        super().__init__(**kwargs)
        if not isinstance(student, APM):
            raise ValueError(
                "`student` must be a `keras_apm.APM`. Received "
                f"{type(student).__name__}."
            )
        if global_loss not in GLOBAL_LOSSES:
            raise ValueError(
                f"`global_loss` must be one of {GLOBAL_LOSSES}. Received "
                f"{global_loss!r}."
            )
        if rgb_scaling not in losses.RGB_SCALINGS:
            raise ValueError(
                f"`rgb_scaling` must be one of {losses.RGB_SCALINGS}. "
                f"Received {rgb_scaling!r}."
            )
        self.student = student
        self.global_loss = global_loss
        self.rgb_scaling = rgb_scaling
        self.loss_weights = self._resolve_weights(
            student, grid_weight, rgb_weight, global_weight, level_weights
        )
        if image_converter is None:
            image_converter = APMImageConverter(
                image_size=student.image_shape[:2],
                scaling="minmax",
                dtype="float32",
            )
        elif not isinstance(image_converter, APMImageConverter):
            raise ValueError(
                "`image_converter` must be a `keras_apm.APMImageConverter`. "
                f"Received {type(image_converter).__name__}."
            )
        self.image_converter = image_converter
        if isinstance(teacher, str):
            teacher = self._load_teacher(teacher)
        if teacher is not None and not isinstance(teacher, Teacher):
            raise ValueError(
                "`teacher` must be a `keras_apm.teachers.Teacher`, a teacher "
                f"preset or None. Received {type(teacher).__name__}."
            )
        if teacher is not None:
            self.check_teacher(teacher)
        self.teacher = teacher

        names = ["loss", "grid_loss"]
        if self.loss_weights["rgb"] is not None:
            names.append("rgb_loss")
        if self.loss_weights["global"] is not None:
            names.append("global_loss")
        names += [f"level_{i}_loss" for i in range(self.num_level_terms)]
        names.append("grid_cosine")
        if self.loss_weights["global"] is not None:
            names.append("global_cosine")
        self._trackers = [keras.metrics.Mean(name=n) for n in names]
        # Student and teacher are built: so is the distiller (fit would
        # otherwise trace it symbolically first).
        self.built = True

    # ------------------------------------------------------------------
    # Configuration.

    @staticmethod
    def _resolve_weights(student, grid, rgb, global_, levels):
        weights = {
            "grid": _check_weight(grid, "grid_weight"),
            "rgb": _head_weight(rgb, "rgb_weight", student.rgb_head, "rgb"),
            "global": _head_weight(
                global_, "global_weight", student.global_head, "global"
            ),
        }
        num_levels = student.num_levels
        if levels is None:
            levels = (1.0,) * num_levels if num_levels > 1 else ()
        else:
            levels = tuple(levels)
            if num_levels == 1 or len(levels) != num_levels:
                raise ValueError(
                    f"`level_weights` needs one weight per student level; the "
                    f"student has num_levels={num_levels} (levels are trained "
                    f"only when num_levels > 1). Received {levels!r}."
                )
            levels = tuple(
                _check_weight(w, f"level_weights[{i}]")
                for i, w in enumerate(levels)
            )
        weights["levels"] = levels
        return weights

    def _load_teacher(self, preset):
        teacher = Teacher.from_preset(preset)
        if not self.num_level_terms:
            return teacher
        # Same backbone, now also returning evenly spaced levels.
        layers = default_level_layers(teacher.num_layers, self.num_level_terms)
        return type(teacher)(
            teacher.model,
            layers=layers,
            image_converter=teacher.image_converter,
        )

    @property
    def num_level_terms(self):
        """How many level losses the distiller computes (0 without levels)."""
        return len(self.loss_weights["levels"])

    @property
    def needs_global(self):
        return self.loss_weights["global"] is not None

    def check_teacher(self, teacher):
        """Checks that a teacher's targets fit the student; raises ValueError.

        Example:
        >>> distiller.check_teacher(Teacher.from_preset(path, layers=[0, -1]))
        """
        student = self.student
        teacher.check_grid(student.grid_shape)
        if teacher.feature_dim != student.feature_dim:
            raise ValueError(
                f"The teacher's grid has {teacher.feature_dim} channels, the "
                f"student's features {student.feature_dim}. Build the APM "
                f"with feature_dim={teacher.feature_dim}."
            )
        if self.needs_global and teacher.global_dim != student.feature_dim:
            raise ValueError(
                f"The teacher's global embedding has {teacher.global_dim} "
                f"values, the student's global head gives "
                f"{student.feature_dim} (its feature_dim). Use a student with "
                "global_head=False (or global_weight=0), or a teacher whose "
                "global embedding is as wide as its grid."
            )
        if self.num_level_terms and teacher.num_levels != self.num_level_terms:
            example = default_level_layers(
                teacher.num_layers, min(student.num_levels, teacher.num_layers)
            )
            raise ValueError(
                f"The student has {student.num_levels} GLOM levels; the "
                f"teacher gives {teacher.num_levels} (layers="
                f"{teacher.layer_indices}). Build the teacher with "
                f"`layers=` {student.num_levels} block indices, e.g. "
                f"{list(example)}."
            )

    # ------------------------------------------------------------------
    # Targets and forward pass.

    def _required_keys(self):
        keys = ["images", "grid"]
        if self.needs_global:
            keys.append("global")
        if self.num_level_terms:
            keys.append("levels")
        return keys

    def _check_images(self, images):
        shape = static_shape(images)
        height, width, _ = self.student.image_shape
        expected = f"(batch, {height}, {width}, 3)"
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(
                f"Expected a batch of RGB images {expected} with values in "
                f"[0, 255]. Received shape {shape}."
            )
        if any(
            got is not None and got != want
            for got, want in zip(shape[1:3], (height, width))
        ):
            raise ValueError(
                f"Expected images of the student's size {expected}. Received "
                f"shape {shape}. Resize them in the pipeline, e.g. "
                f"`keras_apm.data.image_dataset(..., image_size=({height}, "
                f"{width}))`."
            )
        check_pixel_dtype(images)

    def _cached_targets(self, batch):
        missing = [k for k in self._required_keys() if k not in batch]
        if missing:
            raise ValueError(
                f"A batch of cached targets for this student needs the keys "
                f"{self._required_keys()}; it lacks {missing}. Received keys "
                f"{sorted(batch)}. Rebuild the cache with a teacher that "
                "gives them (e.g. `layers=` for levels)."
            )
        h, w = self.student.grid_shape
        d = self.student.feature_dim
        batch_size = static_shape(batch["images"])[0]
        expected = {"grid": (h, w, d), "global": (d,)}
        if self.num_level_terms:
            expected["levels"] = (self.num_level_terms, h, w, d)
        targets = {}
        for key, tail in expected.items():
            if key == "global" and not self.needs_global:
                continue
            shape = static_shape(batch[key])
            if (
                len(shape) != len(tail) + 1
                or shape[1:] != tail
                or None not in (shape[0], batch_size)
                and shape[0] != batch_size
            ):
                raise ValueError(
                    f"Cached target {key!r} must have shape (batch, "
                    f"{', '.join(map(str, tail))}) to match the student and "
                    f"the images (batch {batch_size}). Received shape {shape}."
                )
            targets[key] = ops.cast(batch[key], "float32")
        return targets

    def _teacher_targets(self, images):
        if self.teacher is None:
            raise ValueError(
                "This distiller has no teacher, so each batch must be a dict "
                f"of cached targets with the keys {self._required_keys()} "
                "(see `keras_apm.data.load_feature_cache`). Received a batch "
                "of images only."
            )
        out = self.teacher(images)
        # The teacher is frozen: its outputs are constants for the student.
        targets = {"grid": out["grid"]}
        if self.needs_global:
            targets["global"] = out["global"]
        if self.num_level_terms:
            targets["levels"] = out["levels"]
        return {
            k: ops.stop_gradient(ops.cast(v, "float32"))
            for k, v in targets.items()
        }

    def targets(self, data):
        """`(images, targets)` of one batch (dict or images; see the class).

        Example:
        >>> images, targets = distiller.targets(batch)
        >>> targets["grid"].shape  # (B, h, w, D)
        """
        if isinstance(data, (tuple, list)):
            data = data[0]  # (x, labels): labels are not used.
        if isinstance(data, dict):
            if "images" not in data:
                raise ValueError(
                    "Expected a batch dict with an 'images' entry (raw RGB "
                    "(batch, H, W, 3) in [0, 255]) and optionally cached "
                    f"targets {self._required_keys()[1:]}. Received keys "
                    f"{sorted(data)}. Build image pipelines with "
                    "`keras_apm.data.image_dataset`."
                )
            images = data["images"]
            self._check_images(images)
            if "grid" in data:
                targets = self._cached_targets(data)
            else:
                targets = self._teacher_targets(ops.cast(images, "float32"))
        else:
            images = data
            if not hasattr(images, "shape"):
                raise ValueError(
                    "Expected a batch of images (batch, H, W, 3), an "
                    "(images, labels) tuple, or a dict of cached targets. "
                    f"Received {type(images).__name__}."
                )
            self._check_images(images)
            targets = self._teacher_targets(ops.cast(images, "float32"))
        images = ops.cast(images, "float32")
        if self.loss_weights["rgb"] is not None:
            targets["rgb"] = losses.patch_rgb_target(
                images,
                self.student.patch_size,
                scaling=self.rgb_scaling,
                channel_order=self.image_converter.channel_order,
            )
        return images, targets

    def call(self, data, training=False):
        """Returns `{"outputs": student outputs, "targets": targets}`."""
        images, targets = self.targets(data)
        outputs = self.student(self.image_converter(images), training=training)
        return {"outputs": outputs, "targets": targets}

    def compute_losses(self, results):
        """`(total_loss, terms)` from `call`'s result; see `losses`."""
        return losses.distillation_terms(
            results["outputs"],
            results["targets"],
            self.loss_weights,
            global_loss=self.global_loss,
        )

    # ------------------------------------------------------------------
    # Training: the steps live in the backend-named modules.

    def compile(self, optimizer="rmsprop", **kwargs):
        """`keras.Model.compile`; only `optimizer` (and e.g. `jit_compile`,
        `steps_per_execution`) matter: the losses are the distiller's.

        A `mixed_float16` student gets its optimizer wrapped in a
        `keras.optimizers.LossScaleOptimizer` (Keras does this for models
        whose own policy is `mixed_float16`; the distiller's is float32).
        """
        optimizer = keras.optimizers.get(optimizer)
        if self.student.dtype_policy.name == "mixed_float16" and not (
            isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        ):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        super().compile(optimizer=optimizer, **kwargs)

    @property
    def metrics(self):
        return list(self._trackers)

    def metric_values(self, total, terms):
        """The value each tracker averages, by tracker name."""
        values = dict(terms)
        values["loss"] = total
        return values

    def update_trackers(self, total, terms, batch_size):
        """Stateful tracker update (TensorFlow, PyTorch steps); returns logs."""
        values = self.metric_values(total, terms)
        for tracker in self._trackers:
            tracker.update_state(values[tracker.name], sample_weight=batch_size)
        return {t.name: t.result() for t in self._trackers}

    def train_step(self, *args):
        # JAX passes (state, data); TensorFlow and PyTorch pass (data).
        return _step_module().train_step(self, *args)

    def test_step(self, *args):
        return _step_module().test_step(self, *args)

    def _maybe_symbolic_build(self, *args, **kwargs):
        # TensorFlow trainer only; see `distribution.build_without_data`.
        from keras_apm.distill import distribution

        if not distribution.build_without_data(self):
            super()._maybe_symbolic_build(*args, **kwargs)

    # ------------------------------------------------------------------
    # Saving.

    def save_student(self, directory):
        """Saves the student and its image converter as a preset, atomically.

        The preset loads with `keras_apm.APM.from_preset(directory)` and
        `keras_apm.APMImageConverter.from_preset(directory)`.

        Example:
        >>> distiller.save_student("apm_distilled")
        """
        from keras_apm.distill.checkpoint import save_student_preset

        save_student_preset(self.student, directory, self.image_converter)


def default_level_layers(num_layers, num_levels):
    """`num_levels` evenly spaced block indices of a teacher, ending at -1.

    Example:
    >>> default_level_layers(12, 3)
    (3, 7, 11)
    """
    num_layers, num_levels = int(num_layers), int(num_levels)
    if not 1 <= num_levels <= num_layers:
        raise ValueError(
            f"Cannot pick {num_levels} levels from a teacher with "
            f"{num_layers} transformer layers."
        )
    return tuple(
        round((i + 1) * num_layers / num_levels) - 1 for i in range(num_levels)
    )


def default_student_config(
    teacher, num_levels=1, trunk_widths=None, rgb_head=True, global_head=None
):
    """An APM config whose outputs match a teacher's targets.

    The student reads images of the teacher's input size with the teacher's
    patch size (so the grids agree), and its features are as wide as the
    teacher's grid. The trunk is `(4m, 2m, m)` wide with `m = max(h * w, D)`
    (the official COCO trunk narrows from 4096 to 1024 the same way). A
    global head is added when the teacher's global embedding is as wide as
    its grid (ViT, DINOv2; not a CLIP projection).
    The RGB head ends in a sigmoid rather than the official ReLU (see the
    comment below; pass `rgb_activation` to `keras_apm.APM` to choose).

    Args:
        teacher: a `keras_apm.teachers.Teacher`.
        num_levels: GLOM levels (the teacher needs as many `layers`).
        trunk_widths: overrides the trunk widths.
        rgb_head: bool.
        global_head: bool or None (automatic, see above).

    Example:
    >>> config = default_student_config(teacher)
    >>> student = keras_apm.APM(**config)
    """
    patch = teacher.patch_size
    if not isinstance(patch, int):
        raise ValueError(
            f"The default student needs a square patch; the teacher's is "
            f"{patch}. Build the APM config yourself."
        )
    h, w = teacher.grid_shape
    if teacher.resize_to_grid is not None:
        raise ValueError(
            "The default student copies the teacher's input size and patch; "
            "a teacher with resize_to_grid needs a hand-built APM config."
        )
    d = int(teacher.feature_dim)
    if global_head is None:
        global_head = teacher.global_dim == d and d % 4 == 0
    m = max(h * w, d)
    heads = next(k for k in (8, 4, 2, 1) if d % k == 0)
    return {
        "image_shape": tuple(teacher.image_size) + (3,),
        "patch_size": int(patch),
        "trunk_widths": tuple(trunk_widths or (4 * m, 2 * m, m)),
        "feature_dim": d,
        "num_levels": int(num_levels),
        "rgb_head": bool(rgb_head),
        # The official head ends in a ReLU (kept for converted checkpoints);
        # a fresh student gets a sigmoid, which matches the [0, 1] target
        # and cannot die: with a ReLU the digits head collapsed to 0 in the
        # first epoch (rgb_loss stuck at 0.194 = predicting black), and 3
        # epochs reached rgb_loss 0.143 vs 0.034 (docs/distillation.md).
        "rgb_activation": "sigmoid",
        "global_head": bool(global_head),
        "global_num_heads": heads,
    }
