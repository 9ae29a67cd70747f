"""`tf.data` pipelines of student input images from TFDS or from a folder.

APM students (and their teachers' image converters) take float32 RGB images
with values in `[0, 255]`, channels last. `image_dataset` turns either source
into exactly that:

- a TFDS data set, given by name (`"sklearn_digits"`, `"mnist"`,
  `"cifar10/3.0.2"`) or as a `tfds.core.DatasetBuilder`;
- a folder of image files (`.jpg`, `.jpeg`, `.png`, `.bmp`, `.gif`). Either
  the images lie directly in the folder (no labels), or each subfolder is one
  class (labels are the subfolder's index in sorted name order), as in
  `keras.utils.image_dataset_from_directory`.
"""

import os

import numpy as np

from keras_apm.utils.optional import require

tf = require("tensorflow", extra="data")
tfds = require("tensorflow_datasets", extra="data")

# Registers the offline `sklearn_digits` builder wherever names reach tfds.
from keras_apm.data import sklearn_digits  # noqa: F401

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _is_image_file(path):
    return os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder):
    """Image files anywhere under `folder`, sorted by relative path."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = os.path.join(root, name)
            if not name.startswith(".") and _is_image_file(path):
                found.append(os.path.relpath(path, folder))
    return [os.path.join(folder, rel) for rel in sorted(found)]


def list_image_files(folder):
    """Lists the images of a folder and their class labels, in sorted order.

    The folder holds either images directly (then `labels` is None and
    `class_names` is empty), or one subfolder per class (searched
    recursively; `labels[i]` is the index of the image's subfolder in the
    sorted list `class_names`). Hidden files and folders are skipped;
    subfolders without images are not classes.

    Args:
        folder: path of the folder.

    Returns:
        `(paths, labels, class_names)`: a list of file paths, an int32 NumPy
        array of labels or None, and a list of class names.

    Raises:
        ValueError: if the folder does not exist, holds no images, or mixes
            images at its top level with class subfolders.

    Example:

    >>> paths, labels, class_names = list_image_files("photos")
    >>> class_names
    ['cat', 'dog']
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(
            "Expected an existing folder of images. "
            f"Received {folder!r}, which is not a folder."
        )
    entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
    top = [
        os.path.join(folder, e)
        for e in entries
        if _is_image_file(os.path.join(folder, e))
    ]
    classes = {}
    for e in entries:
        path = os.path.join(folder, e)
        if os.path.isdir(path):
            files = _images_under(path)
            if files:
                classes[e] = files
    if top and classes:
        raise ValueError(
            "Expected a folder with either images directly in it (unlabelled) "
            "or one subfolder per class, not both. Received "
            f"{folder!r} with {len(top)} top-level images and class "
            f"subfolders {sorted(classes)}."
        )
    if top:
        return top, None, []
    if classes:
        class_names = sorted(classes)
        paths, labels = [], []
        for index, name in enumerate(class_names):
            paths.extend(classes[name])
            labels.extend([index] * len(classes[name]))
        return paths, np.asarray(labels, np.int32), class_names
    raise ValueError(
        f"Expected image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder!r} "
        "or in its class subfolders. Received a folder with none."
    )


def _check_image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    try:
        size = tuple(int(d) for d in image_size)
        ok = len(size) == 2 and all(
            d > 0 and d == s for d, s in zip(size, image_size)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "Expected `image_size` to be None, a positive int or a pair of "
            f"positive ints (height, width). Received {image_size!r}."
        )
    return size


def _to_rgb_float(image, image_size, what):
    """uint8/uint16 image (H, W, C) -> float32 RGB in [0, 255], resized."""
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3:
        raise ValueError(
            f"Expected {what} to be images of shape (height, width, "
            f"channels). Received element shape {image.shape}."
        )
    if image.dtype == tf.uint8:
        image = tf.cast(image, tf.float32)
    elif image.dtype == tf.uint16:
        image = tf.cast(image, tf.float32) * (255.0 / 65535.0)
    else:
        raise ValueError(
            f"Expected {what} to hold uint8 or uint16 images. "
            f"Received dtype {image.dtype.name}."
        )
    channels = image.shape[-1]
    if channels == 1:
        image = tf.tile(image, [1, 1, 3])
    elif channels == 2:  # grey + alpha: drop alpha.
        image = tf.tile(image[..., :1], [1, 1, 3])
    elif channels == 4:  # RGBA: drop alpha.
        image = image[..., :3]
    elif channels != 3:
        raise ValueError(
            f"Expected {what} to have 1 (grey), 2 (grey + alpha), 3 (RGB) or "
            f"4 (RGBA) channels. Received {channels} channels "
            f"(element shape {image.shape})."
        )
    if image_size is not None and tuple(image.shape[:2]) != image_size:
        # Antialiasing matters when shrinking (it averages instead of
        # skipping pixels); its triangle filter has no negative lobes, so
        # values stay in [0, 255].
        image = tf.image.resize(
            image, image_size, method="bilinear", antialias=True
        )
    return image


def _folder_dataset(folder, split, with_labels, shuffle, seed):
    if split not in (None, "train"):
        raise ValueError(
            "A folder of images has no splits: expected split='train' (the "
            f"default) or None. Received split={split!r} for {folder!r}."
        )
    paths, labels, class_names = list_image_files(folder)
    if with_labels and labels is None:
        raise ValueError(
            "Expected one subfolder per class to read labels from. Received "
            f"{folder!r}, whose images lie directly in it. Pass "
            "with_labels=False, or sort the images into class subfolders."
        )
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(paths)
    else:
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle:
        # Shuffling paths (not decoded images) makes a full shuffle cheap.
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def decode(path, *label):
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=3, expand_animations=False
        )
        image.set_shape([None, None, 3])
        return (image, *label)

    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def _looks_like_path(source):
    # An existing folder wins over a TFDS name; so does anything spelled as
    # a path ("/data/x", "./x", "~/x"), which gets a "no such folder" error
    # instead of TFDS's name-parsing error.
    return os.path.isdir(source) or source.startswith(
        (os.sep, "." + os.sep, ".." + os.sep, "~")
    )


def _tfds_builder(source, data_dir):
    if isinstance(source, tfds.core.DatasetBuilder):
        return source
    try:
        return tfds.builder(source, data_dir=data_dir)
    except ValueError as e:  # DatasetNotFoundError and name parse errors.
        first_line = str(e).strip().splitlines()[0] if str(e) else ""
        raise ValueError(
            "Expected an existing folder of images, a registered TFDS data "
            "set name or a `tfds.core.DatasetBuilder`. Received "
            f"{source!r}, which is neither a folder nor a TFDS name "
            f"({first_line})."
        ) from None


def _known_splits(builder):
    """`": one of [...]"` when TFDS lists the builder's splits, else `""`."""
    try:
        names = sorted(builder.info.splits.keys())
    except Exception:  # a builder without split metadata
        names = []
    return f": one of {names}" if names else ""


def _tfds_dataset(
    builder, split, with_labels, shuffle, seed, image_key, label_key
):
    if not builder.is_prepared():
        # Offline for `sklearn_digits`; other data sets download here,
        # exactly as `tfds.load` would.
        builder.download_and_prepare()
    if split is None:
        raise ValueError(
            f"Expected a split of {builder.name}{_known_splits(builder)}. "
            "Received split=None."
        )
    features = builder.info.features
    keys = sorted(features.keys()) if hasattr(features, "keys") else []
    if image_key not in keys:
        raise ValueError(
            f"Expected an image feature {image_key!r} in {builder.name}. "
            f"Received features {keys}; pass image_key= one of them."
        )
    wanted = [image_key]
    if with_labels:
        if label_key not in keys:
            raise ValueError(
                f"Expected a label feature {label_key!r} in {builder.name}. "
                f"Received features {keys}; pass label_key= one of them."
            )
        if features[label_key].shape != ():
            raise ValueError(
                f"Expected {builder.name}'s {label_key!r} to be a scalar "
                f"class label. Received shape {features[label_key].shape}."
            )
        wanted.append(label_key)
    # No TFDS auto-cache of small splits: a `.cache()` read only in part
    # (the feature cache's first-image check, a `take(n)` preview) makes
    # TensorFlow warn and drop it; re-reading a small split is cheap.
    read_config = tfds.ReadConfig(try_autocache=False)
    if shuffle:
        # Asking to shuffle overrides a builder's fixed example order
        # (`disable_shuffling=True`, as `sklearn_digits` has), which TFDS
        # otherwise guards with an error.
        read_config = tfds.ReadConfig(
            shuffle_seed=seed, enable_ordering_guard=False,
            try_autocache=False,
        )
    try:
        # TFDS alone knows which splits (and split expressions) exist, also
        # under `tfds.testing.mock_data`: ask it rather than a table.
        ds = builder.as_dataset(
            split=split,
            shuffle_files=shuffle,
            read_config=read_config,
            # Decode only what we return (skips e.g. large extra images).
            decoders=tfds.decode.PartialDecoding({k: True for k in wanted}),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(
            f"Expected a split of {builder.name}{_known_splits(builder)} or "
            "an expression over them such as 'train[:10%]'. Received "
            f"split={split!r}; TFDS says: {e}"
        ) from e
    ds = ds.map(
        lambda ex: tuple(ex[k] for k in wanted),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds


def image_dataset(
    source,
    split="train",
    image_size=None,
    batch_size=None,
    with_labels=False,
    shuffle=False,
    seed=None,
    data_dir=None,
    image_key="image",
    label_key="label",
    shuffle_buffer_size=1024,
):
    """A `tf.data.Dataset` of float32 RGB images in `[0, 255]` (and labels).

    Every image is converted to 3 channels (grey is repeated, alpha is
    dropped), to float32 with values in `[0, 255]` (uint16 images are
    rescaled), and, if `image_size` is given, resized to it with
    antialiased bilinear interpolation (the aspect ratio is not kept).
    Order is deterministic unless `shuffle=True`: TFDS split order, or
    sorted file order for folders.

    Args:
        source: a TFDS name (`"sklearn_digits"`, `"mnist"`), a
            `tfds.core.DatasetBuilder`, or a path to a folder of images (see
            `list_image_files`). A string is read as a folder if a folder of
            that name exists or it starts with `/`, `./`, `../` or `~`;
            otherwise as a TFDS name.
        split: the TFDS split or split expression (`"test"`,
            `"train[:10%]"`). Folders have no splits: leave it `"train"`.
        image_size: `(height, width)` (or one int for a square) to resize
            to, or None to keep each image's size (then batching needs
            images of one size).
        batch_size: if given, batches elements (the last batch may be
            smaller).
        with_labels: if True, elements are `(image, label)` with an int32
            label (the TFDS label feature, or the class subfolder index).
        shuffle: shuffles files and examples (a full shuffle for folders,
            a `shuffle_buffer_size` buffer for TFDS), anew each epoch.
        seed: seed for the shuffle, for a repeatable order.
        data_dir: TFDS data directory (TFDS sources only).
        image_key: name of the image feature (TFDS sources only).
        label_key: name of the label feature (TFDS sources only).
        shuffle_buffer_size: shuffle buffer for TFDS sources.

    Returns:
        A `tf.data.Dataset` of `(H, W, 3)` float32 images (`(B, H, W, 3)`
        when batched), or of `(image, label)` tuples.

    Raises:
        ValueError: for an unknown TFDS name, a missing split or feature, an
            empty folder, labels asked of an unlabelled folder, or a bad
            `image_size` / `batch_size`.

    Example:

    ```python
    import keras_apm.data

    ds = keras_apm.data.image_dataset(
        "sklearn_digits", split="test", image_size=(32, 32), batch_size=64,
        with_labels=True, data_dir="/tmp/tfds",
    )
    images, labels = next(iter(ds))  # (64, 32, 32, 3) float32, (64,) int32
    ```
    """
    image_size = _check_image_size(image_size)
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            "Expected `batch_size` to be None or a positive int. "
            f"Received {batch_size!r}."
        )
    if isinstance(source, os.PathLike) or (
        isinstance(source, str) and _looks_like_path(source)
    ):
        source = os.path.expanduser(os.fspath(source))
        ds = _folder_dataset(source, split, with_labels, shuffle, seed)
        what = f"the images of {source!r}"
    elif isinstance(source, (str, tfds.core.DatasetBuilder)):
        builder = _tfds_builder(source, data_dir)
        ds = _tfds_dataset(
            builder, split, with_labels, shuffle, seed, image_key, label_key
        )
        if shuffle:
            ds = ds.shuffle(
                shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True
            )
        what = f"{builder.name}[{image_key!r}]"
    else:
        raise ValueError(
            "Expected `source` to be a TFDS name, a "
            "`tfds.core.DatasetBuilder` or a folder path. Received "
            f"{type(source).__name__}: {source!r}."
        )

    def convert(image, *label):
        image = _to_rgb_float(image, image_size, what)
        if with_labels:
            return image, tf.cast(label[0], tf.int32)
        return image

    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size is not None:
        ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)
