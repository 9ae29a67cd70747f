"""`APMDistiller`: `model.fit` distillation of an APM student from a teacher."""

import keras
import numpy as np
from keras import ops

from keras_apm.backend import backend_module
from keras_apm.distill import losses
from keras_apm.layers import explicit_weights
from keras_apm.models.apm.apm_student import check_student_teacher
from keras_apm.models.apm.apm_student import load_teacher
from keras_apm.models.apm import apm_outputs
from keras_apm.models.apm.apm_outputs import FEATURES
from keras_apm.models.apm.apm_outputs import GLOBAL
from keras_apm.models.apm.apm_outputs import TEACHER_GLOBAL
from keras_apm.models.apm.apm_outputs import TEACHER_LEVELS
from keras_apm.utils.validation import check_number
from keras_apm.utils.validation import check_pixel_dtype
from keras_apm.utils.validation import check_raw_pixels
from keras_apm.utils.validation import static_shape

GLOBAL_LOSSES = ("cosine", "mse")


def _local_batch_divisor():
    """How many of this process's devices a `keras.distribution` splits
    each batch across (1 without one; TensorFlow strategies handle uneven
    batches themselves)."""
    distribution = keras.distribution.distribution()
    mesh = getattr(distribution, "device_mesh", None)
    batch_axis = getattr(distribution, "batch_dim_name", None)
    if mesh is None or batch_axis not in mesh.axis_names:
        return 1
    devices = mesh.shape[mesh.axis_names.index(batch_axis)]
    # The global batch is split over every process; each feeds its share.
    return max(1, devices // backend_module().process_count())


def _holds_images(element):
    """Whether a (spec of a) dataset element is already a distiller batch
    (a dict with `"images"`, or an `(x, ...)` tuple of one)."""
    if isinstance(element, (tuple, list)) and element:
        element = element[0]
    return isinstance(element, dict) and "images" in element


def _check_weight(value, name):
    return float(check_number(value, f"`{name}`", low=0))


def _head_weight(value, name, has_head, head):
    """None -> the table's weight if the head exists; 0 -> term off; > 0
    needs the head."""
    if value is None:
        return apm_outputs.get_head(head).weight if has_head else None
    value = _check_weight(value, name)
    if value > 0 and not has_head:
        raise ValueError(
            f"`{name}={value}` asks for a {head} loss, but the student has no "
            f"{head} head. Build the APM with `{head}_head=True` or leave "
            f"`{name}` unset."
        )
    return value if value > 0 else None


@keras.saving.register_keras_serializable(package="keras_apm")
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

    with terms for heads the student lacks left out, plus a term for every
    head added to the head table (`apm_outputs.register_head`) that the
    student has. Each term is a `keras.distillation.DistillationLoss`
    (`keras_apm.distill.losses.GridDistillation`, `RGBDistillation`,
    `GlobalDistillation`, `LevelDistillation`, `HeadDistillation`); as
    with `keras.distillation.Distiller`, `distillation_losses=` and
    `distillation_loss_weights=` choose them and their weights (the
    `*_weight` arguments are shorthands for the default terms). `fit` and
    `evaluate` report `loss`, every term (`grid_loss`, `rgb_loss`,
    `global_loss`, `level_{i}_loss`, `{head}_loss`) and the mean cosine
    similarities `grid_cosine` and `global_cosine`, each averaged over the
    examples of the epoch.

    Data: batches of raw RGB images `(B, H, W, 3)` in `[0, 255]` at the
    student's `(H, W)` (a `(images, labels)` tuple is fine; labels are
    ignored), or dicts with `"images"` plus cached targets `"grid"`
    `(B, h, w, D)`, `"global"` `(B, D)` and `"levels"` `(B, L, h, w, D)` as
    the terms need them (the teacher outputs the head table names as
    targets; then no teacher is needed). The student sees
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
        distillation_losses: a `HeadDistillation` or a list of them; None:
            one per head the student has (`losses.default_losses`, from the
            head table).
        distillation_loss_weights: one float per term (a list, as in
            `keras.distillation.Distiller`), or a dict from term name
            (`"grid"`, `"rgb"`, `"global"`, `"level_0"`, an added head's
            name) to weight; a term at weight 0 is left out (the grid term
            is kept). None: the head table's weights.
        grid_weight: float >= 0, weight of the feature-grid MSE (shorthand).
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
        distillation_losses=None,
        distillation_loss_weights=None,
        grid_weight=None,
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
        explicit_weights.check_float_weights(student, "Distillation")
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
        shorthands = {
            "grid_weight": grid_weight,
            "rgb_weight": rgb_weight,
            "global_weight": global_weight,
            "level_weights": level_weights,
        }
        self._shorthands = None
        self._weights_argument = distillation_loss_weights
        if distillation_losses is None:
            terms, weights = self._default_terms(
                student, shorthands, distillation_loss_weights
            )
            self._shorthands = shorthands
        else:
            given = sorted(k for k, v in shorthands.items() if v is not None)
            if given:
                raise ValueError(
                    f"Pass either `distillation_losses` or the shorthands "
                    f"{given}, not both: with explicit terms, set their "
                    "weights with `distillation_loss_weights`."
                )
            terms = self._check_terms(student, distillation_losses)
            weights = self._term_weights(terms, distillation_loss_weights)
        self.distillation_losses = terms
        self.distillation_loss_weights = weights
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
        if teacher is not None:
            teacher = load_teacher(teacher, self.num_level_terms or None)
            self.check_teacher(teacher)
        self.teacher = teacher

        names = ["loss"] + [f"{t.name}_loss" for t in terms]
        names += [f"{t.name}_cosine" for t in terms if t.cosine_metric]
        self._trackers = [keras.metrics.Mean(name=n) for n in names]
        # Student and teacher are built: so is the distiller (fit would
        # otherwise trace it symbolically first).
        self.built = True

    # ------------------------------------------------------------------
    # Configuration: the terms and their weights.

    def _default_terms(self, student, shorthands, weights):
        """The head table's terms for `student`, weighted by the shorthands
        and `distillation_loss_weights` (a dict by term name)."""
        if weights is not None and not isinstance(weights, dict):
            raise ValueError(
                "Without `distillation_losses`, `distillation_loss_weights` "
                "is a dict from term name to weight (the terms come from the "
                f"head table). Received {type(weights).__name__}."
            )
        weights = dict(weights or {})
        terms, values = [], []
        for row in apm_outputs.heads():
            has_head = row.name in student.output
            argument = row.weight_argument
            value = shorthands.get(argument)
            if row.per_level:
                level_terms = self._level_terms(student, value, weights)
                for term, weight in level_terms:
                    terms.append(term)
                    values.append(weight)
                continue
            if row.term_name in weights:
                if value is not None:
                    raise ValueError(
                        f"The weight of {row.term_name!r} is given twice: "
                        f"`{argument}={value}` and in "
                        "`distillation_loss_weights`. Pass one."
                    )
                value = weights.pop(row.term_name)
                argument = f"distillation_loss_weights[{row.term_name!r}]"
            elif argument is None:
                argument = f"distillation_loss_weights[{row.term_name!r}]"
            if row.name == FEATURES:
                # The grid term is always computed (at weight 0, a metric).
                weight = _check_weight(
                    row.weight if value is None else value, argument
                )
            else:
                weight = _head_weight(value, argument, has_head, row.name)
            if weight is None:
                continue
            loss = self.global_loss if row.name == GLOBAL else None
            for term in losses.head_losses(row.name, student, loss):
                terms.append(term)
                values.append(weight)
        if weights:
            raise ValueError(
                f"`distillation_loss_weights` names terms {sorted(weights)} "
                f"that this student does not have. Its terms: "
                f"{[t.name for t in terms]}."
            )
        return terms, values

    @staticmethod
    def _level_terms(student, levels, weights):
        num_levels = student.num_levels
        named = [k for k in weights if k.startswith("level_")]
        if named:
            if levels is not None:
                raise ValueError(
                    "Level weights are given twice: `level_weights` and "
                    f"{named} in `distillation_loss_weights`. Pass one."
                )
            levels = [
                weights.pop(f"level_{i}", 1.0) for i in range(num_levels)
            ]
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
        return [(losses.LevelDistillation(i), w) for i, w in enumerate(levels)]

    @staticmethod
    def _check_terms(student, terms):
        if not isinstance(terms, (list, tuple)):
            terms = [terms]
        terms = list(terms)
        if not terms:
            raise ValueError(
                "`distillation_losses` needs at least one term, e.g. "
                "`[keras_apm.distill.losses.GridDistillation()]`."
            )
        for term in terms:
            if not isinstance(term, losses.HeadDistillation):
                raise ValueError(
                    "Each of `distillation_losses` must be a "
                    "`keras_apm.distill.losses.HeadDistillation` (a "
                    "`keras.distillation.DistillationLoss` that knows its "
                    f"head and target). Received {type(term).__name__}."
                )
            if term.head not in student.output:
                raise ValueError(
                    f"The term {term.name!r} trains the {term.head!r} head, "
                    f"which the student lacks. Its outputs: "
                    f"{sorted(student.output)}."
                )
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(
                f"`distillation_losses` repeats a term: {names}."
            )
        return terms

    @staticmethod
    def _term_weights(terms, weights):
        if weights is None:
            return [apm_outputs.get_head(t.head).weight for t in terms]
        if isinstance(weights, dict):
            unknown = sorted(set(weights) - {t.name for t in terms})
            if unknown:
                raise ValueError(
                    f"`distillation_loss_weights` names {unknown}, which are "
                    f"not among the terms {[t.name for t in terms]}."
                )
            weights = [
                weights.get(t.name, apm_outputs.get_head(t.head).weight)
                for t in terms
            ]
        weights = list(weights)
        if len(weights) != len(terms):
            raise ValueError(
                f"Number of distillation_loss_weights ({len(weights)}) must "
                f"match number of distillation_losses ({len(terms)})."
            )
        return [
            _check_weight(w, f"distillation_loss_weights[{i}]")
            for i, w in enumerate(weights)
        ]

    @property
    def loss_weights(self):
        """`{term name: weight}` of the active terms."""
        return {
            t.name: w
            for t, w in zip(
                self.distillation_losses, self.distillation_loss_weights
            )
        }

    @property
    def num_level_terms(self):
        """How many levels the teacher must give (0 without level terms)."""
        if any(t.target == TEACHER_LEVELS for t in self.distillation_losses):
            return self.student.num_levels
        return 0

    @property
    def needs_global(self):
        return TEACHER_GLOBAL in self._teacher_keys()

    def check_teacher(self, teacher):
        """Checks that a teacher's targets fit the student; raises ValueError.

        Example:
        >>> distiller.check_teacher(Teacher.from_preset(path, layers=[0, -1]))
        """
        check_student_teacher(
            self.student,
            teacher,
            global_dim=teacher.global_dim if self.needs_global else None,
            num_levels=self.num_level_terms,
        )

    # ------------------------------------------------------------------
    # Targets and forward pass.

    def _teacher_keys(self):
        """The teacher outputs the terms read, in term order."""
        keys = []
        for term in self.distillation_losses:
            row = apm_outputs.get_head(term.head)
            if row.source == apm_outputs.TEACHER and term.target not in keys:
                keys.append(term.target)
        return keys

    def _required_keys(self):
        return ["images"] + self._teacher_keys()

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
                f"{width}))`, or pass the `tf.data.Dataset`, Grain dataset "
                "or NumPy array to `fit` as it is (see "
                "`APMDistiller.adapt_dataset`)."
            )
        check_pixel_dtype(images)
        if isinstance(images, np.ndarray):
            # Host arrays only: reading device tensors back every training
            # step would stall it (pipelines assert in `model_inputs`).
            check_raw_pixels(images, "the distiller's images")

    def _cached_targets(self, batch):
        missing = [k for k in self._required_keys() if k not in batch]
        if missing:
            raise ValueError(
                f"A batch of cached targets for this student needs the keys "
                f"{self._required_keys()}; it lacks {missing}. Received keys "
                f"{sorted(batch)}. Rebuild the cache with a teacher that "
                "gives them (e.g. `layers=` for levels)."
            )
        batch_size = static_shape(batch["images"])[0]
        targets = {}
        for key, tail in self._target_shapes().items():
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

    def _target_shapes(self):
        """`{teacher target: shape without the batch}`: a target has the
        shape of the (first) student output that regresses it."""
        shapes = {}
        for term in self.distillation_losses:
            if term.target in self._teacher_keys() and term.target not in shapes:
                output = self.student.output[term.head]
                shapes[term.target] = tuple(output.shape[1:])
        return shapes

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
        targets = {key: out[key] for key in self._teacher_keys()}
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
            if any(key in data for key in self._teacher_keys()):
                targets = self._cached_targets(data)
            else:
                # `model_inputs` resizes the original image to the teacher's
                # size when it differs from the student's.
                teacher_images = data.get("teacher_images", images)
                targets = self._teacher_targets(
                    ops.cast(teacher_images, "float32")
                )
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
        for term in self.distillation_losses:
            row = apm_outputs.get_head(term.head)
            if row.source == apm_outputs.IMAGE and row.target not in targets:
                targets[row.target] = row.image_target(
                    images,
                    self.student.patch_size,
                    self.rgb_scaling,
                    self.image_converter.channel_order,
                )
        return images, targets

    def call(self, data, training=False):
        """Returns `{"outputs": student outputs, "targets": targets}`."""
        images, targets = self.targets(data)
        outputs = self.student(self.image_converter(images), training=training)
        return {"outputs": outputs, "targets": targets}

    # ------------------------------------------------------------------
    # Inputs as users load them: `tf.data` pipelines are adapted before
    # Keras sees them (string fields would fail its data adapter on
    # JAX/torch, and images of varying size must be resized before batching).

    def adapt_dataset(self, dataset, batch_size=None):
        """Maps a user's `tf.data`, Grain or NumPy data to the distiller's
        batches.

        `tfds.load(...)` feature dicts (`"image"`; other fields such as
        string ids are dropped) and `as_supervised=True` tuples, batched or
        not, uint8 or float `[0, 255]` images of any and varying size, become
        batches of `{"images"[, "teacher_images"]}`: raw float32 pixels at
        the student's size (and the original resized to the teacher's size
        when that differs). A `grain.MapDataset`, `grain.IterDataset` or
        `grain.DataLoader` of the same elements is mapped the same way
        (`keras_apm.data.inputs.grain_inputs`), and so is a NumPy array
        `(N, H, W, C)` or a dict `{"image": array, ...}`
        (`keras_apm.data.inputs.array_inputs`; Keras batches it). Data that
        already holds `"images"` (e.g. `keras_apm.data.load_feature_cache`)
        and anything else is returned unchanged. `fit` and `evaluate` call
        this themselves.

        Example:
        >>> ds = tfds.load("cifar10", split="train")  # {"id", "image", ...}
        >>> distiller.fit(ds, epochs=1)  # same as fit(adapt_dataset(ds))
        """
        teacher_size = None
        if self.teacher is not None:
            teacher_size = self.teacher.image_size
        sizes = dict(
            image_size=self.student.image_shape[:2],
            teacher_image_size=teacher_size,
        )
        batch_size = 32 if batch_size is None else batch_size
        module = type(dataset).__module__
        if isinstance(dataset, (np.ndarray, dict)):
            # Checked without importing TensorFlow (NumPy on JAX/torch).
            from keras_apm.data import inputs

            if inputs.is_array_input(dataset):
                return inputs.array_inputs(dataset, **sizes)
            return dataset
        if module.startswith("grain"):
            from keras_apm.data import inputs

            if not inputs.is_grain_input(dataset) or _holds_images(
                next(iter(dataset), None)
            ):
                return dataset
            return inputs.grain_inputs(dataset, batch_size=batch_size, **sizes)
        # Only a `tf.data.Dataset` is adapted; checked by module first so
        # that other inputs do not import TensorFlow on JAX/torch.
        if not module.startswith("tensorflow"):
            return dataset
        from keras_apm.data import inputs

        if not inputs.is_adaptable(dataset):
            return dataset
        if _holds_images(dataset.element_spec):
            return dataset
        return inputs.model_inputs(dataset, batch_size=batch_size, **sizes)

    def _drop_uneven_batches(self, dataset):
        """Under a `keras.distribution` (JAX `DataParallel`), drops the
        `tf.data` batches that do not split evenly over this process's
        devices, e.g. an epoch's last, smaller batch."""
        divisor = _local_batch_divisor()
        if divisor <= 1 or not type(dataset).__module__.startswith("tensorflow"):
            return dataset
        from keras_apm.data import inputs

        if not inputs.is_adaptable(dataset):
            return dataset
        return inputs.drop_uneven_batches(dataset, divisor)

    def _check_host_pixels(self, x):
        # In-memory images are checked once here rather than per step.
        images = x.get("images") if isinstance(x, dict) else x
        if isinstance(images, np.ndarray):
            check_raw_pixels(images, "the distiller's images")

    def _adapt(self, x, batch_size):
        """`(x, batch_size)` for Keras: adapted datasets come batched."""
        adapted = self.adapt_dataset(x, batch_size)
        if adapted is not x and not isinstance(adapted, dict):
            batch_size = None
        return adapted, batch_size

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.fit`, on `tf.data` pipelines as `tfds.load` gives
        them, Grain datasets and NumPy images of any size (see
        `adapt_dataset`; `batch_size` batches unbatched ones)."""
        self._check_host_pixels(x)  # before the cast to float32
        x, batch_size = self._adapt(x, batch_size)
        x = self._drop_uneven_batches(x)
        if kwargs.get("validation_data") is not None:
            kwargs["validation_data"] = self._drop_uneven_batches(
                self.adapt_dataset(kwargs["validation_data"])
            )
        return super().fit(x, y, batch_size=batch_size, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.evaluate`, adapting its input like `fit`."""
        self._check_host_pixels(x)  # before the cast to float32
        x, batch_size = self._adapt(x, batch_size)
        x = self._drop_uneven_batches(x)
        return super().evaluate(x, y, batch_size=batch_size, **kwargs)

    def compute_losses(self, results):
        """`(total_loss, terms)` from `call`'s result; see `losses`."""
        return losses.distillation_terms(
            results["outputs"],
            results["targets"],
            self.distillation_losses,
            self.distillation_loss_weights,
        )

    # ------------------------------------------------------------------
    # Training: Keras' own `train_step`/`test_step` on every backend, with
    # the distiller's loss and metrics through the `compute_loss` hook.

    def compile(self, optimizer="rmsprop", **kwargs):
        """`keras.Model.compile`; only `optimizer` (and e.g. `jit_compile`,
        `steps_per_execution`) matter: the losses are the distiller's.

        A `mixed_float16` student gets its optimizer wrapped in a
        `keras.optimizers.LossScaleOptimizer` (Keras does this for models
        whose own policy is `mixed_float16`; the distiller's is float32).
        """
        optimizer = backend_module().fast_optimizer(
            keras.optimizers.get(optimizer)
        )
        if self.student.dtype_policy.name == "mixed_float16" and not (
            isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        ):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Re-compiles a loaded `.keras` distiller with its saved optimizer.

        Keras skips models whose `compile` is overridden; this one only
        wraps the optimizer, so the saved arguments are replayed (and the
        optimizer built, so that its saved moments load too).
        """
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return list(self._trackers)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """The distillation loss of `call`'s result; updates the trackers.

        Keras' `train_step` and `test_step` call this on every backend (on
        JAX inside its stateless step, with the trackers' variables mapped
        to the step's state). Labels `y` and `sample_weight` are ignored.
        """
        del x, y, sample_weight, training
        total, terms = self.compute_losses(y_pred)
        values = dict(terms, loss=total)
        batch_size = ops.shape(y_pred["outputs"][FEATURES])[0]
        for tracker in self._trackers:
            tracker.update_state(values[tracker.name], sample_weight=batch_size)
        return backend_module().replica_mean_loss(total)

    def _maybe_symbolic_build(self, *args, **kwargs):
        # TensorFlow trainer only; see `distribution.build_without_data`.
        from keras_apm.distill import distribution

        if not distribution.build_without_data(self):
            super()._maybe_symbolic_build(*args, **kwargs)

    # Keras' own steps; under MultiWorkerMirroredStrategy their scalar logs
    # need an axis for Keras' cross-worker reduction (`step_logs`).
    def train_step(self, *args, **kwargs):
        from keras_apm.distill import distribution

        return distribution.step_logs(super().train_step(*args, **kwargs))

    def test_step(self, *args, **kwargs):
        from keras_apm.distill import distribution

        return distribution.step_logs(super().test_step(*args, **kwargs))

    # ------------------------------------------------------------------
    # Saving.

    def get_config(self):
        """The distiller's arguments, student and teacher included.

        The frozen teacher is stored as a nested Keras object (its keras-hub
        backbone's config; its weights go into the `.keras` file): a saved
        distiller reloads with no access to the teacher's preset or hub,
        and resumes with exactly the teacher it was trained against. Terms
        built from the head table are stored as the shorthand weights they
        came from; explicit `distillation_losses` as Keras objects.
        """
        serialize = keras.saving.serialize_keras_object
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": serialize(self.dtype_policy),
            "student": serialize(self.student),
            "teacher": None if self.teacher is None else serialize(self.teacher),
            "distillation_losses": None,
            "distillation_loss_weights": None,
            "grid_weight": None,
            "rgb_weight": None,
            "global_weight": None,
            "global_loss": self.global_loss,
            "level_weights": None,
            "image_converter": serialize(self.image_converter),
            "rgb_scaling": self.rgb_scaling,
        }
        if self._shorthands is None:
            config["distillation_losses"] = [
                serialize(t) for t in self.distillation_losses
            ]
            config["distillation_loss_weights"] = list(
                self.distillation_loss_weights
            )
            return config
        # Resolved weights: None for a term that is off; an existing head
        # whose term was switched off keeps its explicit 0.
        weights = self.loss_weights
        by_dict = dict(self._weights_argument or {})
        for row in apm_outputs.heads():
            argument = row.weight_argument
            if argument is None:
                continue
            if row.per_level:
                levels = [w for t, w in weights.items() if t.startswith("level_")]
                if not any(k.startswith("level_") for k in by_dict):
                    config[argument] = levels or None
                continue
            if row.term_name in by_dict:
                continue
            has_head = row.name in self.student.output
            value = weights.get(row.term_name)
            config[argument] = (0.0 if has_head else None) if value is None else value
        config["distillation_loss_weights"] = self._weights_argument
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("student", "teacher", "image_converter"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        if config.get("distillation_losses"):
            config["distillation_losses"] = [
                keras.saving.deserialize_keras_object(t)
                for t in config["distillation_losses"]
            ]
        return cls(**config)

    def save_student(self, directory):
        """Saves the student and its image converter as a preset, atomically.

        The preset loads with `keras_apm.APM.from_preset(directory)` and
        `keras_apm.APMImageConverter.from_preset(directory)`.

        Example:
        >>> distiller.save_student("apm_distilled")
        """
        from keras_apm.distill.checkpoint import save_student_preset

        save_student_preset(self.student, directory, self.image_converter)
