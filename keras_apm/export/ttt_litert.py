"""On-device test-time training: one LiteRT file that adapts to each image.

`export_ttt(teacher, path, ...)` writes a TFLite (LiteRT) flatbuffer that
carries the teacher, the student's initial weights, the student's weights
being adapted and the optimizer's state (resource variables), and six
signatures, all on one image (batch 1) of raw RGB pixels `(1, H, W, 3)`,
values 0..255, at the teacher's input size:

- `"targets"`: `images` -> `"target"` `(1, D)` (what the student
  regresses: the teacher's embedding or head input) and `"teacher_scores"`
  `(1, C)` (the teacher's own class scores).
- `"train"`: `images`, `target` `(1, D)`, `indices` `(L,)` int32 (the grid
  locations this step trains on, row-major; all `h * w` for the whole
  grid) -> `"loss"` `(1,)`, the loss *before* this step's update. One
  optimizer step of test-time training.
- `"reset"`: no inputs -> `"step"` (0): the student back to its initial
  weights and the optimizer to a fresh state (zero moments, the
  learning-rate schedule restarted). Call it before every new image.
- `"classify"`: `images` -> `"scores"` `(1, C)` (the adapted student's
  class scores: the teacher's head applied to the student's vector, or
  cosine similarity to class embeddings, as `keras-apm ttt` scores them)
  and `"global"` `(1, D)`.
- `"infer"`: `images` -> `"features"` `(1, h, w, D)` and `"global"`
  `(1, D)` of the adapted student.
- `"settings"`: no inputs -> `"steps"`, `"locations_per_step"` (0: the
  whole grid), `"seed"` and `"grid_shape"` `(2,)`, so a driver needs
  nothing but the file (`keras_apm.ttt.subsets.step_indices` draws the
  same subsets as Keras).

Only builtin LiteRT ops are allowed (the converter fails otherwise): the
gradient of a plain ReLU would need the Flex op `ReluGrad`, so the exported
student's ReLUs are written as `x * (x > 0)` (same values, same gradient,
builtin ops); the column is the patch contraction of batched TTT (reshape
+ matmul, no convolution); the optimizer's variables live on the exported
module so the file initialises them.

Under JAX and PyTorch the export runs in a TensorFlow-backend subprocess
(`keras_apm.export.tensorflow_subprocess`), fed the student's exact
weights, so the file starts from the same student as the caller's
`TestTimeTrainer`.
"""

import os

import keras
import numpy as np

from keras_apm.utils.files import atomic_write
from keras_apm.utils.files import temporary_directory
from keras_apm.utils.files import terminate_as_exit

TTT_SIGNATURES = ("targets", "train", "reset", "classify", "infer", "settings")
TTT_QUANTIZATIONS = (None, "float16")


def export_ttt(
    teacher,
    path,
    student=None,
    classifier=None,
    recipe=None,
    steps=None,
    optimizer=None,
    learning_rate=None,
    loss=None,
    seed=0,
    locations_per_step=None,
    quantization=None,
    overwrite=False,
):
    """Writes a LiteRT file that test-time-trains a student on the device.

    The settings are those of `keras_apm.TestTimeTrainer` (same defaults,
    same recipe names); the file starts from the same initial student and
    takes the same steps, so its per-step losses equal Keras TTT's.
    Signatures: `targets`, `train`, `reset`, `classify`, `infer`,
    `settings` (see this module's docstring); run them with
    `keras_apm.export.ttt_runtime.LiteRTTestTimeTrainer`.

    Args:
        teacher: a teacher preset (name, handle or directory); under the
            TensorFlow backend also a `keras_apm.teachers.Teacher`.
        path: the `.tflite` file to write; its parent directory must exist.
        student: as in `TestTimeTrainer` (None: sized from the teacher and
            seeded from `seed`; a preset; a config; an `APM`).
        classifier: None (the teacher's head), a
            `keras_apm.ttt.EmbeddingClassifier` (class embeddings) or a
            `TestTimeTrainer` argument of that kind.
        recipe, steps, optimizer, learning_rate, loss, seed,
            locations_per_step: as in `TestTimeTrainer`.
        quantization: None (float32) or `"float16"` (float16 weights in
            the file, computed in float32).
        overwrite: whether to replace an existing `path`.

    Returns:
        `path`.

    Example:
    ```python
    from keras_apm.export import export_ttt
    export_ttt("vit_tiny_digits", "ttt.tflite", student="apm_tiny_digits")
    ```
    """
    from keras_apm.export.checks import check_target
    from keras_apm.ttt import TestTimeTrainer

    if quantization not in TTT_QUANTIZATIONS:
        raise ValueError(
            "On-device TTT files take `quantization` None (float32) or "
            f"'float16' (the adapted weights stay float32). Received "
            f"{quantization!r}."
        )
    path = check_target(path, "tflite", overwrite)
    trainer = TestTimeTrainer(
        student,
        teacher,
        classifier,
        steps=steps,
        optimizer=optimizer,
        learning_rate=learning_rate,
        loss=loss,
        seed=seed,
        recipe=recipe,
        locations_per_step=locations_per_step,
        batch_size=1,
    )
    job = {"path": path, "quantization": quantization, "overwrite": bool(overwrite)}
    if keras.backend.backend() == "tensorflow":
        write_ttt_tflite(trainer, job)
        return path
    if not isinstance(teacher, (str, os.PathLike)):
        raise ValueError(
            "Under the JAX and PyTorch backends the on-device TTT export runs "
            "in a TensorFlow subprocess, which loads the teacher from its "
            "preset: pass the teacher as a preset name or directory. "
            f"Received a {type(teacher).__name__}."
        )
    _export_in_subprocess(trainer, os.fspath(teacher), job)
    return path


def _export_in_subprocess(trainer, teacher_preset, job):
    from keras_apm.export.tensorflow_subprocess import TMP_PREFIX
    from keras_apm.export.tensorflow_subprocess import run_in_subprocess
    from keras_apm.ttt.classifiers import EmbeddingClassifier
    from keras_apm.ttt.classifiers import LinearHeadClassifier

    classifier = trainer.classifier
    with terminate_as_exit(), temporary_directory(TMP_PREFIX) as tmp:
        preset_dir = os.path.join(tmp, "student")
        # The student's exact weights: seeded initialisers differ between
        # backends, so the child must not draw its own.
        trainer.student.save_to_preset(preset_dir)
        embeddings = None
        if not isinstance(classifier, LinearHeadClassifier):
            if not isinstance(classifier, EmbeddingClassifier):
                raise ValueError(_classifier_error(classifier))
            embeddings = os.path.join(tmp, "class_embeddings.npy")
            np.save(embeddings, classifier.class_embeddings)
        job = dict(
            job,
            teacher=teacher_preset,
            student_preset=trainer.student_preset,
            class_embeddings=embeddings,
            optimizer=keras.optimizers.serialize(trainer.optimizer),
            steps=trainer.steps,
            loss=trainer.loss,
            seed=trainer.seed,
            recipe=trainer.recipe,
            locations_per_step=trainer.locations_per_step,
        )
        run_in_subprocess(preset_dir, [job], runner=f"{__name__}:run_ttt_jobs")


def _classifier_error(classifier):
    return (
        "An on-device TTT file scores with the teacher's head "
        "(`LinearHeadClassifier`) or class embeddings (`EmbeddingClassifier`, "
        f"`CLIPZeroShotClassifier`). Received a {type(classifier).__name__}."
    )


def _builtin_relu(x):
    # ReLU whose gradient is builtin LiteRT ops (Greater, Cast, Mul):
    # tf.nn.relu's gradient is the Flex op ReluGrad. Same values, and the
    # same gradient (0 at x <= 0).
    return x * keras.ops.cast(x > 0, x.dtype)


def _exportable_student(model):
    """A copy of `model` whose ReLUs differentiate with builtin ops."""
    from keras_apm.models.apm import APM

    copy = APM.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    for layer in copy._flatten_layers(include_self=False, recursive=True):
        if getattr(layer, "activation", None) is keras.activations.relu:
            layer.activation = _builtin_relu
    return copy


def _graph_preprocessor(preprocessor, input_hw):
    """The student's converter, without a resize to the size it is given.

    The default converter resizes with antialiasing (the official TTT
    input), a Flex op in LiteRT; at the teacher's own size it is the
    identity, so it is left out of the file.
    """
    resizing = getattr(preprocessor, "resizing", None)
    if resizing is not None and (resizing.height, resizing.width) == tuple(
        input_hw
    ):
        config = dict(preprocessor.get_config(), image_size=None)
        return type(preprocessor).from_config(config)
    return preprocessor


def _weights_of(obj):
    weights = getattr(obj, "weights", None)
    if weights is not None:
        return list(weights)
    return [w for layer in vars(obj).values() for w in getattr(layer, "weights", [])]


def ttt_module(trainer):
    """The `tf.Module` of an on-device TTT file (TensorFlow backend).

    Args:
        trainer: a `keras_apm.TestTimeTrainer` (its student, teacher,
            classifier, optimizer, loss, steps and `locations_per_step`).

    Returns:
        `(module, signatures)`: the module (its variables tracked) and a
        dict `{name: concrete function}` of `TTT_SIGNATURES`.
    """
    import tensorflow as tf
    from keras import ops

    from keras_apm.ttt import recipes
    from keras_apm.ttt.batched import batched_forward
    from keras_apm.ttt.batched import global_loss
    from keras_apm.ttt.batched import student_weights
    from keras_apm.ttt.classifiers import EmbeddingClassifier
    from keras_apm.ttt.classifiers import LinearHeadClassifier

    if keras.backend.backend() != "tensorflow":
        raise ValueError("`ttt_module` needs the TensorFlow backend.")
    if trainer.grid_weight > 0 or trainer.rgb_weight > 0:
        raise ValueError(
            "On-device TTT files regress the global vector only: use "
            "grid_weight=0 and rgb_weight=0. Received grid_weight="
            f"{trainer.grid_weight}, rgb_weight={trainer.rgb_weight}."
        )
    classifier, teacher = trainer.classifier, trainer.teacher
    if not isinstance(classifier, (LinearHeadClassifier, EmbeddingClassifier)):
        raise ValueError(_classifier_error(classifier))
    student = _exportable_student(trainer.student)
    layout = student_weights(student)
    variables = keras.tree.flatten(layout)
    initial = [np.asarray(ops.convert_to_numpy(v), "float32")[None] for v in variables]
    params = [
        keras.Variable(value, name=v.path.replace("/", "__"))
        for v, value in zip(variables, initial)
    ]
    optimizer = recipes.fresh_optimizer(trainer.optimizer)
    optimizer.build(params)
    fresh = [np.asarray(ops.convert_to_numpy(v)) for v in optimizer.variables]
    (h, w), dim = student.grid_shape, classifier.target_dim
    num_locations = trainer.locations_per_step or h * w
    image_shape = (1,) + tuple(teacher.image_size) + (3,)
    preprocessor = _graph_preprocessor(trainer.preprocessor, teacher.image_size)
    embeddings = None
    if not isinstance(classifier, LinearHeadClassifier):
        embeddings = tf.constant(classifier.class_embeddings.T, tf.float32)

    def forward(images, indices=None):
        inputs = ops.cast(preprocessor(images), "float32")
        tree = keras.tree.pack_sequence_as(layout, [v.value for v in params])
        return batched_forward(student, tree, inputs, indices)

    def scores(vectors):
        if embeddings is None:
            return teacher.head_logits(vectors)
        norm = ops.sqrt(
            ops.maximum(ops.sum(ops.square(vectors), -1, keepdims=True), 1e-12)
        )
        return ops.matmul(vectors / norm, embeddings)

    module = tf.Module()
    # Tracked, so the file holds (and initialises) every variable.
    module.variables_list = [v.value for v in params + list(optimizer.variables)]
    # The teacher's (read only: the converter freezes them into constants).
    module.teacher_variables = [v.value for v in _weights_of(teacher)]
    image_spec = tf.TensorSpec(image_shape, tf.float32, name="images")

    @tf.function(input_signature=[image_spec])
    def targets(images):
        outputs = teacher(images)
        if embeddings is None:
            target, teacher_scores = outputs["head_input"], outputs["logits"]
        else:
            target = outputs["global"]
            teacher_scores = scores(target)
        return {"target": target, "teacher_scores": teacher_scores}

    @tf.function(
        input_signature=[
            image_spec,
            tf.TensorSpec((1, dim), tf.float32, name="target"),
            # A static count: with a dynamic one the gradient keeps shape
            # ops (BroadcastGradientArgs) that LiteRT has no builtin for.
            tf.TensorSpec((num_locations,), tf.int32, name="indices"),
        ]
    )
    def train(images, target, indices):
        with tf.GradientTape() as tape:
            out = forward(images, indices)
            per_image = global_loss(out["global"], target, trainer.loss)
            total = ops.sum(per_image)
        grads = tape.gradient(total, params)
        optimizer.apply(grads, params)
        return {"loss": per_image}

    @tf.function(input_signature=[])
    def reset():
        for variable, value in zip(params, initial):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, fresh):
            variable.assign(value)
        return {"step": ops.cast(optimizer.iterations, "int32")}

    @tf.function(input_signature=[image_spec])
    def classify(images):
        vectors = forward(images)["global"]
        return {"scores": scores(vectors), "global": vectors}

    @tf.function(input_signature=[image_spec])
    def infer(images):
        out = forward(images)
        features = ops.reshape(out["features"], (1, h, w, -1))
        return {"features": features, "global": out["global"]}

    settings_values = {
        "steps": np.int32(trainer.steps),
        "locations_per_step": np.int32(trainer.locations_per_step or 0),
        "seed": np.int32(trainer.seed),
        "grid_shape": np.array([h, w], "int32"),
    }

    @tf.function(input_signature=[])
    def settings():
        return {k: tf.constant(v) for k, v in settings_values.items()}

    functions = dict(
        targets=targets,
        train=train,
        reset=reset,
        classify=classify,
        infer=infer,
        settings=settings,
    )
    signatures = {k: f.get_concrete_function() for k, f in functions.items()}
    return module, signatures


def ttt_tflite_bytes(trainer, quantization=None):
    """The flatbuffer of `trainer`'s on-device TTT file (TensorFlow backend).

    Builtin ops only: a graph that would need a Flex (TensorFlow) op fails
    to convert here instead of failing on the phone.
    """
    import tensorflow as tf

    module, signatures = ttt_module(trainer)
    with terminate_as_exit(), temporary_directory("keras_apm_export_") as tmp:
        saved_model = os.path.join(tmp, "saved_model")
        tf.saved_model.save(module, saved_model, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model, signature_keys=list(TTT_SIGNATURES)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        if quantization == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def write_ttt_tflite(trainer, job):
    """Converts and writes one on-device TTT file (staged, then renamed)."""
    data = ttt_tflite_bytes(trainer, job.get("quantization"))

    def write(staged):
        with open(staged, "wb") as f:
            f.write(data)

    atomic_write(job["path"], write, overwrite=job["overwrite"])


def _child_trainer(preset_dir, job):
    """The TensorFlow-side `TestTimeTrainer` of a subprocess job."""
    from keras_apm.models.apm import APM
    from keras_apm.ttt import TestTimeTrainer
    from keras_apm.ttt.classifiers import EmbeddingClassifier
    from keras_apm.ttt.student import student_preprocessor

    classifier = None
    if job["class_embeddings"]:
        classifier = EmbeddingClassifier(np.load(job["class_embeddings"]))
    model = APM.from_preset(preset_dir)
    return TestTimeTrainer(
        model,
        job["teacher"],
        classifier,
        steps=job["steps"],
        optimizer=keras.optimizers.deserialize(job["optimizer"]),
        loss=job["loss"],
        seed=job["seed"],
        recipe=job["recipe"],
        locations_per_step=job["locations_per_step"],
        batch_size=1,
        preprocessor=student_preprocessor(model, job["student_preset"]),
    )


def run_ttt_jobs(preset_dir, jobs, representative_data=None):
    """The TTT job runner of `tensorflow_subprocess` (student preset)."""
    for job in jobs:
        write_ttt_tflite(_child_trainer(preset_dir, job), job)
