"""Test-time training (TTT): one fresh APM student per test image."""

import time

import keras
import numpy as np
from keras import ops

from keras_apm.models.apm.apm_student import check_student_teacher
from keras_apm.models.apm.apm_student import load_teacher
from keras_apm.models.apm.apm_student import resolve_student
from keras_apm.ttt import recipes
from keras_apm.ttt.batched import BatchedTTT
from keras_apm.ttt.classifiers import Classifier
from keras_apm.ttt.classifiers import LinearHeadClassifier
from keras_apm.ttt.student import INITS
from keras_apm.ttt.student import initialize_student
from keras_apm.ttt.student import student_preprocessor
from keras_apm.utils.validation import check_raw_pixels
from keras_apm.distill.losses import patch_rgb_target
from keras_apm.models.apm.apm_outputs import FEATURES
from keras_apm.models.apm.apm_outputs import GLOBAL
from keras_apm.models.apm.apm_outputs import RGB
from keras_apm.models.apm.apm_outputs import TEACHER_GRID
from keras_apm.utils.validation import check_number

ENGINES = ("batched", "per_image")


class TestTimeTrainer:
    """Test-time training of an APM: one fresh student per test image.

    For every test image: start the student from the same initial weights
    (a seeded initialiser, or a given preset / model), start a fresh
    optimizer and learning-rate schedule, take `steps` steps regressing the
    teacher's embedding of *that image* (optionally also its feature grid
    and the image's colours), then classify the student's global vector.
    Nothing carries over from one image to the next (the official code
    keeps the optimizer's moments and schedule; here they are reset), so an
    image's result depends only on the image, the teacher and the settings.

    The default engine adapts `batch_size` images at once, each with its
    own weights and optimizer state, in one compiled step (`BatchedTTT`);
    `engine="per_image"` adapts one image at a time with Keras'
    `train_on_batch` on the real `APM` (the slow reference).

    Args:
        student: `None` (an APM sized from the teacher by
            `keras_apm.models.apm.apm_student.default_student_config(
            teacher, "ttt")`), an APM config dict or a JSON file
            holding one (seeded fresh weights), an APM preset (its weights
            are the starting point, its image converter the preprocessing),
            or an `APM` (its current weights).
        teacher: a `keras_apm.teachers.Teacher` or a preset to load one.
        classifier: a `keras_apm.ttt.Classifier`; `None` uses the teacher's
            own head (`LinearHeadClassifier`).
        steps: optimizer steps per image.
        optimizer: an optimizer name (`"adam"`, `"sgd"`, ...) or a Keras
            optimizer with an element-wise update (copied for every batch).
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`
            (restarted for every image); `None`: the recipe's, or the given
            optimizer's own.
        loss: `"mse"` or `"cosine"` between the global vector and the target.
        grid_weight: weight of an MSE term on the feature grid against the
            teacher's patch grid (same width and grid needed).
        rgb_weight: weight of an MSE term on the RGB head against the
            student's input average-pooled per patch.
        seed: int, seeds the initial weights (all images share them).
        recipe: `None` / `"default"` (settings measured in docs/ttt.md) or
            `"official"` (Adam 1e-4, x0.1 every 200 steps, MSE, N(0, 0.01)
            init, 20 steps). Explicit arguments override the recipe.
        init: `"keras"` or `"normal"` (see `initialize_student`); ignored
            for a preset or `APM` student.
        init_std: standard deviation of `init="normal"`.
        batch_size: images adapted together by the batched engine.
        preprocessor: callable raw images -> student inputs; default the
            preset's image converter, else resize + ImageNet mean/std.
        jit_compile: compile the steps (JAX, TensorFlow).
        locations_per_step: `None` (the recipe's: every step trains on the
            whole grid) or an int `n`: each step regresses the global
            vector pooled over `n` random grid locations (drawn from
            `seed`, the same for every image; `keras_apm.ttt.subsets`),
            `h * w / n` times less MLP work per step. Batched engine only.

    Example:
    ```python
    trainer = keras_apm.TestTimeTrainer(teacher="vit_tiny_digits", steps=20)
    result = trainer.adapt(images)  # raw RGB, values 0..255
    result["predictions"], result["teacher_predictions"]
    ```
    """

    __test__ = False  # Not a pytest class, despite the name.

    def __init__(
        self,
        student=None,
        teacher=None,
        classifier=None,
        steps=None,
        optimizer=None,
        learning_rate=None,
        loss=None,
        grid_weight=0.0,
        rgb_weight=0.0,
        seed=0,
        recipe=None,
        init=None,
        init_std=0.01,
        batch_size=32,
        preprocessor=None,
        jit_compile=True,
        locations_per_step=None,
    ):
        settings = recipes.recipe_settings(recipe)
        if locations_per_step is None:
            locations_per_step = settings["locations_per_step"]
        if optimizer is None:
            optimizer = settings["optimizer"]
            learning_rate = (
                settings["learning_rate"] if learning_rate is None else learning_rate
            )
        elif isinstance(optimizer, str) and learning_rate is None:
            learning_rate = settings["learning_rate"]
        steps = settings["steps"] if steps is None else steps
        loss = settings["loss"] if loss is None else loss
        init = settings["init"] if init is None else init
        check_number(batch_size, "`batch_size`", low=1, integer=True)
        check_number(seed, "`seed`", low=0, integer=True)
        if init not in INITS:
            raise ValueError(f"`init` must be one of {INITS}. Received {init!r}")
        if isinstance(learning_rate, (int, float, np.number)):
            check_number(learning_rate, "`learning_rate`", low=0, low_open=True)

        teacher = load_teacher(teacher)
        if classifier is None:
            if not teacher.has_classifier:
                raise ValueError(
                    "The teacher has no classifier head: pass a classifier "
                    "(`CLIPZeroShotClassifier`, `EmbeddingClassifier`)."
                )
            classifier = LinearHeadClassifier(teacher)
        if not isinstance(classifier, Classifier):
            raise ValueError(
                "Expected a `keras_apm.ttt.Classifier`. Received "
                f"{type(classifier).__name__}."
            )
        classifier.check_teacher(teacher)

        model, preset, seeded = resolve_student(
            student,
            teacher,
            sizing="ttt",
            feature_dim=classifier.target_dim,
            rgb_head=rgb_weight > 0,
        )
        check_student_teacher(
            model,
            teacher,
            grid=grid_weight > 0,
            global_dim=classifier.target_dim if model.global_head else None,
            global_source="the classifier's target",
        )
        if seeded:
            initialize_student(model, seed, init, init_std)

        self.teacher = teacher
        self.classifier = classifier
        self.student = model
        self.student_preset = preset
        self.preprocessor = preprocessor or student_preprocessor(model, preset)
        self.optimizer = recipes.make_optimizer(optimizer, learning_rate)
        self.recipe = "default" if recipe is None else recipe
        self.seed = int(seed)
        self.init = init if seeded else "given"
        self.init_std = float(init_std)
        self.batch_size = int(batch_size)
        self.jit_compile = bool(jit_compile)
        self.loss = loss
        self.engine = BatchedTTT(
            model,
            steps,
            self.optimizer,
            loss,
            grid_weight,
            rgb_weight,
            jit_compile,
            locations_per_step=locations_per_step,
            seed=seed,
        )
        self.locations_per_step = self.engine.locations_per_step
        self.steps = self.engine.steps
        self.grid_weight = self.engine.grid_weight
        self.rgb_weight = self.engine.rgb_weight
        self._reference = None

    def settings(self):
        """The settings, JSON-serialisable (what `keras-apm ttt` records)."""
        return _jsonable(
            {
                "recipe": self.recipe,
                "steps": self.steps,
                "optimizer": keras.optimizers.serialize(self.optimizer),
                "loss": self.loss,
                "grid_weight": self.grid_weight,
                "rgb_weight": self.rgb_weight,
                "seed": self.seed,
                "init": self.init,
                "init_std": self.init_std if self.init == "normal" else None,
                "batch_size": self.batch_size,
                "locations_per_step": self.locations_per_step,
                "student": self.student.get_config(),
                "student_preset": self.student_preset,
                "classifier": self.classifier.get_config(),
                "backend": keras.backend.backend(),
            }
        )

    def adapt(self, images, batch_size=None, engine="batched", callback=None):
        """Test-time-trains one student per image and classifies.

        Args:
            images: `(N, H, W, 3)` raw RGB images, values in `[0, 255]` (the
                teacher and the student preprocess them their own way).
            batch_size: images per batched step (default: the trainer's).
                A last, smaller batch is padded with copies of its last
                image so the compiled step keeps one shape; the copies are
                dropped (each image is independent, so they change nothing).
            engine: `"batched"` (default) or `"per_image"` (one image at a
                time with `train_on_batch`, the reference).
            callback: optional `callback(num_done)` after each batch.

        Returns:
            dict of NumPy arrays: `"predictions"` `(N,)` (students),
            `"teacher_predictions"` `(N,)`, `"scores"` and
            `"teacher_scores"` `(N, C)`, `"global"` `(N, D)` (adapted
            students' vectors), `"target"` `(N, D)`, `"loss"` `(N, steps)`
            (each image's loss before each step), and `"seconds"` (wall
            time, teacher included).
        """
        if engine not in ENGINES:
            raise ValueError(f"`engine` must be one of {ENGINES}. Received {engine!r}")
        if engine == "per_image" and self.locations_per_step is not None:
            raise ValueError(
                "`engine='per_image'` (Keras' train_on_batch) trains on the "
                "whole grid; use the batched engine with "
                f"locations_per_step={self.locations_per_step}."
            )
        images = _check_raw_images(images)
        batch_size = self.batch_size if batch_size is None else batch_size
        check_number(batch_size, "`batch_size`", low=1, integer=True)
        batch_size = min(int(batch_size), len(images))
        start = time.perf_counter()
        parts = []
        for first in range(0, len(images), batch_size):
            chunk = images[first : first + batch_size]
            real = len(chunk)
            if real < batch_size:
                pad = np.repeat(chunk[-1:], batch_size - real, axis=0)
                chunk = np.concatenate([chunk, pad], axis=0)
            part = self._adapt_chunk(chunk, engine)
            parts.append({k: v[:real] for k, v in part.items()})
            if callback is not None:
                callback(first + real)
        result = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        result["predictions"] = np.argmax(result["scores"], axis=-1)
        result["teacher_predictions"] = np.argmax(result["teacher_scores"], axis=-1)
        result["seconds"] = time.perf_counter() - start
        return result

    def predict(self, images, batch_size=None):
        """`(N,)` class indices of the test-time-trained students."""
        return self.adapt(images, batch_size=batch_size)["predictions"]

    def _adapt_chunk(self, images, engine):
        outputs = self.teacher(images)
        target = self.classifier.target(outputs)
        grid = outputs[TEACHER_GRID] if self.grid_weight > 0 else None
        inputs = ops.cast(self.preprocessor(images), "float32")
        rgb = None
        if self.rgb_weight > 0:
            # The RGB head's target as distillation defines it (one function:
            # the raw pixels at the student's size, per-patch mean, per-image
            # min-max), so TTT regresses what the head learned.
            rgb = patch_rgb_target(
                self._student_sized(images),
                self.student.patch_size,
                channel_order=getattr(self.preprocessor, "channel_order", "rgb"),
            )
        if engine == "batched":
            out = self.engine.adapt(inputs, target, grid=grid, rgb=rgb)
        else:
            out = self._adapt_per_image(inputs, target, grid, rgb)
        vectors = np.asarray(ops.convert_to_numpy(out[GLOBAL]), "float32")
        return {
            GLOBAL: vectors,
            "target": np.asarray(target, "float32"),
            "loss": np.asarray(ops.convert_to_numpy(out["loss"]), "float32"),
            "scores": self.classifier.scores(vectors),
            "teacher_scores": self.classifier.teacher_scores(outputs),
        }

    def _student_sized(self, images):
        """Raw images resized as the student's converter resizes them."""
        resizing = getattr(self.preprocessor, "resizing", None)
        x = ops.cast(images, "float32")
        if resizing is not None and getattr(resizing, "height", None):
            return resizing(x)
        return ops.image.resize(x, self.student.image_shape[:2])

    def _adapt_per_image(self, inputs, target, grid, rgb):
        """The reference: Keras' own training step, one image at a time."""
        from keras_apm.models.apm import APM

        if self._reference is None:
            model = APM.from_config(self.student.get_config())
            model.set_weights(self.student.get_weights())
            optimizer = recipes.fresh_optimizer(self.optimizer)
            global_loss = (
                keras.losses.MeanSquaredError()
                if self.loss == "mse"
                else keras.losses.CosineSimilarity(axis=-1)
            )
            losses, weights = {GLOBAL: global_loss}, {GLOBAL: 1.0}
            if self.grid_weight > 0:
                losses[FEATURES], weights[FEATURES] = "mse", self.grid_weight
            if self.rgb_weight > 0:
                losses[RGB], weights[RGB] = "mse", self.rgb_weight
            # "auto": XLA on JAX, no torch.compile (minutes on CPU).
            jit_compile = "auto" if self.jit_compile else False
            model.compile(
                optimizer, losses, loss_weights=weights, jit_compile=jit_compile
            )
            optimizer.build(model.trainable_variables)
            fresh = [ops.convert_to_numpy(v) for v in optimizer.variables]
            self._reference = (model, optimizer, fresh, self.student.get_weights())
        model, optimizer, fresh, initial = self._reference
        vectors, histories = [], []
        for i in range(int(inputs.shape[0])):
            # A fresh start: initial weights, zero moments, step 0.
            model.set_weights(initial)
            for variable, value in zip(optimizer.variables, fresh):
                variable.assign(value)
            x = inputs[i : i + 1]
            y = {GLOBAL: target[i : i + 1]}
            if grid is not None:
                y[FEATURES] = grid[i : i + 1]
            if rgb is not None:
                y[RGB] = rgb[i : i + 1]
            # Keras' CosineSimilarity loss is -cos; report 1 - cos.
            offset = 1.0 if self.loss == "cosine" else 0.0
            histories.append(
                [
                    float(model.train_on_batch(x, y, return_dict=True)["loss"]) + offset
                    for _ in range(self.steps)
                ]
            )
            vectors.append(ops.convert_to_numpy(model(x)[GLOBAL])[0])
        return {GLOBAL: np.stack(vectors), "loss": np.asarray(histories, "float32")}


def _check_raw_images(images):
    images = np.asarray(
        ops.convert_to_numpy(images) if ops.is_tensor(images) else images
    )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            "Expected raw RGB images of shape (N, height, width, 3) with "
            f"values in [0, 255]. Received shape {images.shape}."
        )
    if len(images) == 0:
        raise ValueError("Expected at least one image. Received an empty batch.")
    if not np.issubdtype(images.dtype, np.number):
        raise ValueError(f"Expected numeric images. Received dtype {images.dtype}.")
    check_raw_pixels(images, "the images to adapt to")
    images = images.astype("float32")
    if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 255:
        raise ValueError(
            "Expected finite raw pixel values in [0, 255] (the teacher and the "
            "student normalise them). Received values in "
            f"[{images.min()}, {images.max()}]."
        )
    return images


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
