"""What goes into a feature cache: the dataset's images and the teacher's
targets for them."""

import hashlib
import weakref

import keras
import numpy as np

from keras_apm.data.feature_cache.manifest import cached_targets
from keras_apm.utils.optional import require

tf = require("tensorflow", extra="data")


def _image_spec(dataset):
    """`(image TensorSpec, has_labels, has_teacher_images)` of a dataset."""
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            "`dataset` must be a `tf.data.Dataset` of images (e.g. from "
            "`keras_apm.data.image_dataset`). Received "
            f"{type(dataset).__name__}."
        )
    spec = dataset.element_spec
    has_labels = isinstance(spec, tuple)
    image_spec = spec[0] if has_labels else spec
    has_teacher = False
    if isinstance(image_spec, dict) and "images" in image_spec:
        has_teacher = "teacher_images" in image_spec
        image_spec = image_spec["images"]
    if not isinstance(image_spec, tf.TensorSpec) or image_spec.shape.rank not in (
        3, 4,
    ):  # fmt: skip
        raise ValueError(
            "Expected a dataset of images (H, W, 3) or (B, H, W, 3), batched "
            "or not, of (image, label) tuples, or of `model_inputs` dicts. "
            f"Received element_spec {spec}."
        )
    return image_spec, has_labels, has_teacher


def image_elements(dataset):
    """Unbatched `(image, teacher_image, label or -1)` elements, and facts.

    Takes images, `(image, label)` tuples, or what `model_inputs` yields:
    `{"images"[, "teacher_images"]}` dicts, alone or with labels. Without
    `"teacher_images"` the teacher sees the stored image itself.

    Returns:
        `(elements, has_labels, has_teacher_images)`.
    """
    image_spec, has_labels, has_teacher = _image_spec(dataset)
    if image_spec.shape.rank == 4:
        dataset = dataset.unbatch()

    def split(inputs, label=None):
        if isinstance(inputs, dict):
            image = inputs["images"]
            teacher_image = inputs.get("teacher_images", image)
        else:
            image = teacher_image = inputs
        if label is None:
            label = tf.constant(-1, tf.int64)
        return image, teacher_image, tf.cast(label, tf.int64)

    if has_labels:
        return dataset.map(lambda x, y, *_: split(x, y)), True, has_teacher
    return dataset.map(split), False, has_teacher


def first_image_sha256(elements):
    """SHA-256 of the first stored image, its shape and the teacher's."""
    for image, teacher_image, _ in elements.take(1):
        value = np.ascontiguousarray(image.numpy().astype("float32"))
        return (
            hashlib.sha256(value.tobytes()).hexdigest(),
            value.shape,
            tuple(teacher_image.shape),
        )
    raise ValueError("The dataset is empty: there is nothing to cache.")


# Compiled teacher calls, per teacher and image shape, so that caching several
# splits with one teacher compiles it once.
_TEACHER_FUNCTIONS = weakref.WeakKeyDictionary()


def teacher_function(teacher, image_shape, batch_size):
    """`images -> {grid, global[, levels]}` NumPy arrays, compiled once.

    The outputs are the teacher's `cached_targets()` that it has. A
    functional model compiles the teacher (jit / tf.function) instead of
    running it op by op; every call gets a full `batch_size` batch (a short
    one is padded, and the padding dropped) so it never recompiles.
    """
    functions = _TEACHER_FUNCTIONS.setdefault(teacher, {})
    key = tuple(image_shape)
    if key not in functions:
        inputs = keras.Input(shape=image_shape, name="images")
        outputs = teacher(inputs)
        keys = [k for k in cached_targets() if k in outputs]
        model = keras.Model(inputs, {k: outputs[k] for k in keys})
        functions[key] = model.predict_on_batch
    predict = functions[key]

    def run(images):
        count = len(images)
        if count < batch_size:
            pad = np.repeat(images[-1:], batch_size - count, axis=0)
            images = np.concatenate([images, pad])
        out = predict(images)
        return {
            k: keras.ops.convert_to_numpy(v)[:count] for k, v in out.items()
        }

    return run


def teacher_targets(run_teacher, teacher_images, batch_size, dtype):
    """The teacher's targets for a shard's images, as `dtype` arrays."""
    targets = {}
    for start in range(0, len(teacher_images), batch_size):
        out = run_teacher(teacher_images[start : start + batch_size])
        for key, value in out.items():
            targets.setdefault(key, []).append(value)
    return {k: np.concatenate(v).astype(dtype) for k, v in targets.items()}
