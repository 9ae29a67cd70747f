"""Turns `tf.data`, Grain and NumPy data as users build them into model inputs.

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

Grain datasets (`grain_inputs`) and NumPy arrays (`array_inputs`) go
through the same per-example function (`_convert`), written once over a
few array operations: `tf` ops inside `tf.data` graphs, NumPy and
`keras.ops.image.resize` for Grain and NumPy (so those need no
TensorFlow).
"""

import numpy as np

from keras_apm.utils.optional import require
from keras_apm.utils.validation import CONVERTED_MAX
from keras_apm.utils.validation import RAW_PIXELS_HINT
from keras_apm.utils.validation import check_raw_pixels


class _LazyTensorFlow:
    """`tf`, imported on first use: Grain and NumPy inputs need none."""

    def __getattr__(self, name):
        return getattr(require("tensorflow", extra="data"), name)


tf = _LazyTensorFlow()


class _TensorFlowOps:
    """The array operations `_convert` needs, on `tf` tensors (`tf.data`)."""

    @staticmethod
    def dtype(x):
        return x.dtype.name

    @staticmethod
    def cast(x, dtype):
        return tf.cast(x, dtype)

    @staticmethod
    def concat(xs):
        return tf.concat(xs, axis=-1)

    @staticmethod
    def resize(x, size):
        return tf.image.resize(x, size, method="bilinear", antialias=True)

    @staticmethod
    def no_labels(image):
        return tf.fill(tf.shape(image)[:-3], tf.constant(-1, tf.int32))


class _NumPyOps:
    """The same operations on NumPy arrays (Grain and in-memory arrays);
    resizing is `keras.ops.image.resize`, the same antialiased bilinear."""

    @staticmethod
    def dtype(x):
        return np.asarray(x).dtype.name

    @staticmethod
    def cast(x, dtype):
        return np.asarray(x, dtype)

    @staticmethod
    def concat(xs):
        return np.concatenate(xs, axis=-1)

    @staticmethod
    def resize(x, size):
        import keras

        resized = keras.ops.image.resize(
            x, size, interpolation="bilinear", antialias=True
        )
        return np.asarray(keras.ops.convert_to_numpy(resized), np.float32)

    @staticmethod
    def no_labels(image):
        return np.full(np.shape(image)[:-3], -1, np.int32)


def _is_integer(name):
    return name.startswith(("int", "uint"))


def _is_floating(name):
    return name.startswith(("float", "bfloat"))


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


def float_pixels(image, expected, xp=_TensorFlowOps):
    """A `tf` tensor (or, with `xp=_NumPyOps`, a NumPy array) of integer or
    float pixels as float32, values kept.

    Any other dtype raises a `ValueError`: "Expected {expected}. Received
    dtype ...".

    Example:
    >>> float_pixels(tf.zeros((2, 2, 3), tf.uint8), "pixels in [0, 255]")
    """
    dtype = xp.dtype(image)
    if _is_integer(dtype) or _is_floating(dtype):
        return xp.cast(image, "float32")
    raise ValueError(f"Expected {expected}. Received dtype {dtype}.")


def _to_float_rgb(image, xp):
    """Integer or float pixels with 1-4 channels -> float32 RGB in [0, 255]."""
    if xp.dtype(image) == "uint16":
        image = xp.cast(image, "float32") * (255.0 / 65535.0)
    else:
        image = float_pixels(
            image, "images as uint8, uint16 or float pixels in [0, 255]", xp
        )
    channels = image.shape[-1]
    if channels == 1:
        image = xp.concat([image] * 3)
    elif channels in (2, 4):  # grey + alpha or RGBA: drop alpha.
        image = image[..., :1] if channels == 2 else image[..., :3]
        if channels == 2:
            image = xp.concat([image] * 3)
    elif channels != 3:
        raise ValueError(
            "Expected images with 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 "
            f"(RGBA) channels, channels last. Received shape {image.shape}."
        )
    return image


def _resize(image, size, xp):
    # As `image_dataset`: antialiased bilinear, aspect ratio not kept.
    if size is None or tuple(image.shape[-3:-1]) == tuple(size):
        return image
    return xp.resize(image, size)


def _convert(element, xp, image_size, teacher_image_size, with_labels,
             image_key, label_key):
    """One element (or batch) -> `{"images"[, "teacher_images"]}` raw
    float32 pixels at the models' sizes (`, labels` with `with_labels`).

    The one preprocessing function of every input kind; `xp` holds its
    array operations (`_TensorFlowOps` or `_NumPyOps`).
    """
    image, label = _split_element(element, image_key, label_key)
    image = _to_float_rgb(image, xp)
    inputs = {"images": _resize(image, image_size, xp)}
    if teacher_image_size is not None:
        inputs["teacher_images"] = _resize(image, teacher_image_size, xp)
    if not with_labels:
        return inputs
    if label is None:
        return inputs, xp.no_labels(image)
    return inputs, xp.cast(label, "int32")


def _sizes(image_size, teacher_image_size):
    image_size = tuple(int(d) for d in image_size)
    if teacher_image_size is not None:
        teacher_image_size = tuple(int(d) for d in teacher_image_size)
        if teacher_image_size == image_size:
            teacher_image_size = None
    return image_size, teacher_image_size


def _check_rank(rank, shape):
    if rank not in (3, 4):
        raise ValueError(
            "Expected images of shape (height, width, channels), or batches "
            f"of them. Received element shape {shape}."
        )


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
    image_size, teacher_image_size = _sizes(image_size, teacher_image_size)
    image_spec, _ = _split_element(dataset.element_spec, image_key, label_key)
    rank = image_spec.shape.rank
    _check_rank(rank, image_spec.shape)

    def convert(*element):
        element = element[0] if len(element) == 1 else element
        return _convert(
            element, _TensorFlowOps, image_size, teacher_image_size,
            with_labels, image_key, label_key,
        )

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


def is_array_input(x, image_key="image"):
    """Whether `array_inputs` takes `x`: a NumPy image array or a dict of
    NumPy arrays with `image_key` (and no `"images"` already)."""
    if isinstance(x, dict):
        return (
            image_key in x
            and "images" not in x
            and isinstance(x[image_key], np.ndarray)
        )
    return isinstance(x, np.ndarray)


def is_grain_input(x):
    """Whether `x` is a `grain.MapDataset`, `grain.IterDataset` or
    `grain.DataLoader` (checked by module, without importing Grain)."""
    return any(
        cls.__module__.startswith("grain") for cls in type(x).__mro__
    ) and hasattr(x, "__iter__")


def _check_first(inputs, what):
    for key, value in inputs.items():
        check_raw_pixels(np.asarray(value), f"{key!r} of {what}")


def array_inputs(
    x,
    image_size,
    teacher_image_size=None,
    image_key="image",
    label_key="label",
    chunk_size=256,
):
    """`model_inputs` for in-memory NumPy images.

    Takes a `(N, H, W, C)` array (uint8, uint16 or float `[0, 255]`, 1-4
    channels, any `H, W`) or a dict holding one under `image_key` (other
    entries, such as labels, are dropped) and returns
    `{"images"[, "teacher_images"]}` float32 arrays at the models' sizes,
    converted by the same function as `tf.data` elements (in chunks of
    `chunk_size` images, to bound the memory resizing takes). Keras then
    batches and shuffles them as usual. Float images that look already
    converted raise the `check_raw_pixels` `ValueError`.

    Example:
    ```python
    images = np.zeros((10, 8, 8, 1), "uint8")
    inputs = array_inputs(images, image_size=(32, 32))
    inputs["images"].shape  # (10, 32, 32, 3)
    ```
    """
    image_size, teacher_image_size = _sizes(image_size, teacher_image_size)
    images, _ = _split_element(x, image_key, label_key)
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            "Expected NumPy images of shape (num_images, height, width, "
            f"channels). Received shape {images.shape}; add the channel "
            "axis to greyscale images (`images[..., None]`)."
        )
    if _is_floating(images.dtype.name):
        check_raw_pixels(images, "the NumPy images")
    chunks = [
        _convert(
            images[start : start + chunk_size], _NumPyOps, image_size,
            teacher_image_size, False, image_key, label_key,
        )
        for start in range(0, max(len(images), 1), chunk_size)
    ]
    return {
        key: np.concatenate([chunk[key] for chunk in chunks])
        for key in chunks[0]
    }


def grain_inputs(
    dataset,
    image_size,
    batch_size=32,
    teacher_image_size=None,
    image_key="image",
    label_key="label",
):
    """`model_inputs` for Grain: a `grain.MapDataset`, `grain.IterDataset`
    or `grain.DataLoader` of the same elements (`{"image", ...}` dicts,
    `(image, label)` tuples or images; batched or not; any and varying
    size) becomes one of `{"images"[, "teacher_images"]}` batches, through
    the same per-example function as `tf.data` (NumPy and `keras.ops`, no
    TensorFlow). Unbatched elements are converted one by one, then batched
    (`batch_size`). The first batch is read now; already converted float
    pixels raise the `check_raw_pixels` `ValueError` (up front, and for
    every later batch as it is read).

    Example:
    ```python
    ds = grain.MapDataset.source(images).map(lambda x: {"image": x})
    ds = grain_inputs(ds.batch(64), image_size=(32, 32))
    ```
    """
    grain = require("grain", extra="grain")
    image_size, teacher_image_size = _sizes(image_size, teacher_image_size)
    first = next(iter(dataset), None)
    if first is None:
        raise ValueError("Expected a Grain dataset with elements; it is empty.")
    image, _ = _split_element(first, image_key, label_key)
    rank = np.ndim(image)
    _check_rank(rank, np.shape(image))

    def convert(element):
        return _convert(
            element, _NumPyOps, image_size, teacher_image_size, False,
            image_key, label_key,
        )

    def check(inputs):
        _check_first(inputs, "the Grain dataset")
        return inputs

    class _Map(grain.transforms.Map):
        def __init__(self, fn):
            self.fn = fn

        def map(self, element):
            return self.fn(element)

    # Converted first (images may differ in size), then batched.
    ops = [_Map(convert)]
    if rank == 3:
        ops.append(grain.transforms.Batch(batch_size))
    ops.append(_Map(check))
    check(convert(first))
    if isinstance(dataset, (grain.MapDataset, grain.IterDataset)):
        for op in ops:
            dataset = (
                dataset.batch(op.batch_size, drop_remainder=op.drop_remainder)
                if isinstance(op, grain.transforms.Batch)
                else dataset.map(op)
            )
        return dataset
    # A `DataLoader` is rebuilt with the operations appended, as Keras'
    # own Grain adapter does.
    options = dataset._multiprocessing_options
    return grain.DataLoader(
        data_source=dataset._data_source,
        sampler=dataset._sampler,
        operations=list(dataset._operations) + ops,
        worker_count=options.num_workers,
        worker_buffer_size=options.per_worker_buffer_size,
        shard_options=dataset._shard_options,
        read_options=dataset._read_options,
        enable_profiling=options.enable_profiling,
    )
