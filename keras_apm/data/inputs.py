"""Turns `tf.data` pipelines as users build them into model inputs.

`tfds.load(name)` yields feature dicts (`{"id", "image", "label", ...}`,
often with string fields that Keras on JAX/torch refuses with "Invalid
dtype: object"), `tfds.load(name, as_supervised=True)` yields
`(image, label)` tuples, both unbatched and with uint8 images of each
example's own size. `model_inputs` maps any of these (batched or not) to
batches of float32 RGB pixels in `[0, 255]` at the sizes the models want,
dropping every other field before it reaches Keras. Each model's own
converter then normalises the pixels (the student's `APMImageConverter`,
the teacher's keras-hub `ImageConverter`), so raw pixels are the one input
format: data that was already converted is refused (`check_raw_pixels`),
never rescaled twice.
"""

import tensorflow as tf

from keras_apm.utils.validation import CONVERTED_MAX
from keras_apm.utils.validation import RAW_PIXELS_HINT
from keras_apm.utils.validation import check_raw_pixels


def _raw_pixels_assert(images):
    """In-pipeline version of `check_raw_pixels` for float batches."""
    if not images.dtype.is_floating:
        return images
    ok = tf.logical_or(
        tf.equal(tf.size(images), 0),
        tf.logical_and(
            tf.reduce_min(images) >= 0.0,
            tf.reduce_max(images) > CONVERTED_MAX,
        ),
    )
    with tf.control_dependencies(
        [
            tf.debugging.Assert(
                ok,
                [
                    "Expected raw RGB pixels in [0, 255]; received float "
                    "values that look already converted (min, max):",
                    tf.reduce_min(images),
                    tf.reduce_max(images),
                    RAW_PIXELS_HINT,
                ],
            )
        ]
    ):
        return tf.identity(images)


def _split_element(element, image_key, label_key):
    """`(image, label or None)` of a dict, tuple or plain image element."""
    if isinstance(element, dict):
        if image_key not in element:
            raise ValueError(
                f"Expected dataset elements with an image feature "
                f"{image_key!r} (as `tfds.load` yields). Received keys "
                f"{sorted(element)}; pass image_key= one of them."
            )
        return element[image_key], element.get(label_key)
    if isinstance(element, (tuple, list)):
        if not element:
            raise ValueError("Expected non-empty dataset elements.")
        label = element[1] if len(element) > 1 else None
        return element[0], label
    return element, None


def float_pixels(image, expected):
    """A `tf` tensor of integer or float pixels as float32, values kept.

    Any other dtype raises a `ValueError`: "Expected {expected}. Received
    dtype ...".

    Example:
    >>> float_pixels(tf.zeros((2, 2, 3), tf.uint8), "pixels in [0, 255]")
    """
    if image.dtype.is_integer or image.dtype.is_floating:
        return tf.cast(image, tf.float32)
    raise ValueError(f"Expected {expected}. Received dtype {image.dtype.name}.")


def _to_float_rgb(image):
    """Integer or float pixels with 1-4 channels -> float32 RGB in [0, 255]."""
    if image.dtype == tf.uint16:
        image = tf.cast(image, tf.float32) * (255.0 / 65535.0)
    else:
        image = float_pixels(
            image, "images as uint8, uint16 or float pixels in [0, 255]"
        )
    channels = image.shape[-1]
    if channels == 1:
        image = tf.concat([image] * 3, axis=-1)
    elif channels in (2, 4):  # grey + alpha or RGBA: drop alpha.
        image = image[..., :1] if channels == 2 else image[..., :3]
        if channels == 2:
            image = tf.concat([image] * 3, axis=-1)
    elif channels != 3:
        raise ValueError(
            "Expected images with 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 "
            f"(RGBA) channels, channels last. Received shape {image.shape}."
        )
    return image


def _resize(image, size):
    # As `image_dataset`: antialiased bilinear, aspect ratio not kept.
    if size is None or tuple(image.shape[-3:-1]) == tuple(size):
        return image
    return tf.image.resize(image, size, method="bilinear", antialias=True)


def is_adaptable(dataset):
    """Whether `model_inputs` takes `dataset` (a `tf.data.Dataset`)."""
    return isinstance(dataset, tf.data.Dataset)


def model_inputs(
    dataset,
    image_size,
    batch_size=32,
    teacher_image_size=None,
    with_labels=False,
    image_key="image",
    label_key="label",
    check_first_batch=True,
):
    """Batches of raw pixels at the models' sizes from a user's `tf.data`.

    Accepts what `tfds.load` returns (feature dicts; other fields such as
    string ids are dropped) and `as_supervised=True` `(image, label)`
    tuples, as well as plain image elements, batched or not, with uint8,
    uint16 or float (`[0, 255]`) images of any and varying size. Unbatched
    images are resized one by one before batching (so their sizes may
    differ); batched ones per batch. Float batches that look already
    converted fail the pipeline with the `check_raw_pixels` message.

    Args:
        dataset: a `tf.data.Dataset`.
        image_size: `(height, width)` of the student's input.
        batch_size: batch size for unbatched elements.
        teacher_image_size: `(height, width)` of the teacher's input; if it
            differs from `image_size`, elements also carry
            `"teacher_images"`, resized from the original image.
        with_labels: return `(inputs, labels)` (int32, -1 where the
            elements have no label) instead of `inputs`.
        image_key, label_key: feature names in dict elements.
        check_first_batch: read the first batch now and raise a
            ValueError if it looks already converted (later batches fail
            the pipeline with the same message).

    Returns:
        A batched `tf.data.Dataset` of `{"images"[, "teacher_images"]}`
        dicts (float32, `(B, H, W, 3)`), or of `(dict, labels)` pairs.

    Example:
    ```python
    ds = tfds.load("cifar10", split="train")  # {"id", "image", "label"}
    ds = model_inputs(ds, image_size=(32, 32), batch_size=64)
    ```
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            "Expected a `tf.data.Dataset` (e.g. what `tfds.load` returns). "
            f"Received {type(dataset).__name__}."
        )
    image_size = tuple(int(d) for d in image_size)
    if teacher_image_size is not None:
        teacher_image_size = tuple(int(d) for d in teacher_image_size)
        if teacher_image_size == image_size:
            teacher_image_size = None
    image_spec, _ = _split_element(dataset.element_spec, image_key, label_key)
    rank = image_spec.shape.rank
    if rank not in (3, 4):
        raise ValueError(
            "Expected images of shape (height, width, channels), or batches "
            f"of them. Received element shape {image_spec.shape}."
        )

    def convert(*element):
        element = element[0] if len(element) == 1 else element
        image, label = _split_element(element, image_key, label_key)
        image = _to_float_rgb(image)
        inputs = {"images": _resize(image, image_size)}
        if teacher_image_size is not None:
            inputs["teacher_images"] = _resize(image, teacher_image_size)
        if not with_labels:
            return inputs
        if label is None:
            shape = tf.shape(image)[:-3]
            label = tf.fill(shape, tf.constant(-1, tf.int32))
        return inputs, tf.cast(label, tf.int32)

    ds = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    if rank == 3:
        ds = ds.batch(batch_size)
    if check_first_batch:
        # A clean ValueError up front for the usual mistake (a converter
        # mapped into the pipeline); the assert below guards later batches.
        for first in ds.take(1):
            first = first[0] if with_labels else first
            for key, value in first.items():
                check_raw_pixels(value.numpy(), f"{key!r} of the dataset")

    def check(inputs, *label):
        inputs = {k: _raw_pixels_assert(v) for k, v in inputs.items()}
        return (inputs, *label) if label else inputs

    ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def drop_uneven_batches(dataset, divisor, key="images"):
    """Drops the batches whose size `divisor` does not divide.

    A `keras.distribution.DataParallel` over `divisor` devices splits every
    batch evenly across them, so the last, smaller batch of an epoch (1,437
    images in batches of 64 leave 29) cannot be placed. It is dropped, as
    the multi-process path drops the last incomplete global batch; those
    examples are seen in other epochs when the pipeline shuffles.

    Args:
        dataset: a batched `tf.data.Dataset` of dicts holding `key`, or of
            `(dict, ...)` tuples, or of image batches.
        divisor: the number of devices each batch is split across.

    Example:
    ```python
    ds = drop_uneven_batches(ds, divisor=2)  # 22 batches of 64, not 23
    ```
    """
    if divisor <= 1:
        return dataset

    def even(*element):
        element = element[0]
        images = element[key] if isinstance(element, dict) else element
        return tf.equal(tf.shape(images)[0] % divisor, 0)

    return dataset.filter(even)
