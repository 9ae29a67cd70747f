"""A teacher-feature cache: run the teacher once, distil many epochs from disk.

`cache_teacher_features` runs a frozen teacher over a `tf.data` dataset of
images and writes the images with their targets to `directory` in shards
(`shard_00000.npz`, ...). `load_feature_cache` reads them back as a
`tf.data.Dataset` of dicts that `APMDistiller.fit` trains on without a
teacher (the official recipe: dump the teacher's features once).

Resumable: each shard is written to a temporary file and renamed, so a
shard file either is complete or does not exist. A rerun after an
interruption skips the complete shards and continues; temporary files left
by the interrupted run are deleted, never read. `manifest.json` records the
teacher (class, geometry, preprocessing and a hash of its weights), the
dataset (a hash of its first image) and the layout, so a cache is never
continued or read with a different teacher.
"""

import glob
import hashlib
import json
import os
import re
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_apm.utils.files import TMP_PREFIX
from keras_apm.utils.files import atomic_write
from keras_apm.utils.files import remove_path
from keras_apm.utils.files import write_json

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
_SHARD = "shard_{:05d}.npz"
_SHARD_RE = re.compile(r"^shard_(\d{5,})\.npz$")
IMAGE_DTYPES = ("uint8", "float32")
TARGET_DTYPES = ("float16", "float32")


def _positive_int(value, name, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
        value < 1
    ):
        raise ValueError(
            f"`{name}` must be a positive int. Received {value!r}."
        )
    return int(value)


def teacher_identity(teacher):
    """What makes two teachers' targets the same: geometry, preprocessing,
    levels and a SHA-256 of the weights.

    Example:
    >>> teacher_identity(teacher)["grid_shape"]
    [8, 8]
    """
    from keras_apm.teachers import Teacher

    if not isinstance(teacher, Teacher):
        raise ValueError(
            "`teacher` must be a `keras_apm.teachers.Teacher`. Received "
            f"{type(teacher).__name__}."
        )
    digest = hashlib.sha256()
    for weight in teacher.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value))
        digest.update(weight.path.encode())
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())

    def plain(value):
        # JSON-friendly scale/offset: None, a float or a list of floats.
        if value is None or isinstance(value, float):
            return value
        return [float(v) for v in np.ravel(value)]

    return {
        "class": type(teacher).__name__,
        "backbone": type(teacher.backbone).__name__,
        "image_size": list(teacher.image_size),
        "patch_size": [
            int(p) for p in np.broadcast_to(teacher.patch_size, 2)
        ],
        "grid_shape": list(teacher.grid_shape),
        "feature_dim": int(teacher.feature_dim),
        "global_dim": int(teacher.global_dim),
        "layers": None
        if teacher.layer_indices is None
        else list(teacher.layer_indices),
        "normalize_levels": teacher.normalize_levels,
        "resize_to_grid": None
        if teacher.resize_to_grid is None
        else list(teacher.resize_to_grid),
        "scale": plain(teacher.scale),
        "offset": plain(teacher.offset),
        "interpolation": teacher.interpolation,
        "antialias": teacher.antialias,
        "crop_to_aspect_ratio": teacher.crop_to_aspect_ratio,
        "pad_to_aspect_ratio": teacher.pad_to_aspect_ratio,
        "weights_sha256": digest.hexdigest(),
    }


def _identity_difference(saved, current):
    keys = sorted(set(saved) | set(current))
    return [k for k in keys if saved.get(k) != current.get(k)]


def _check_teacher(manifest, teacher, directory):
    current = teacher_identity(teacher)
    saved = manifest["teacher"]
    differ = _identity_difference(saved, current)
    if differ:
        shown = ", ".join(
            f"{k}: cache {saved.get(k)!r} vs teacher {current.get(k)!r}"
            for k in differ
            if k != "weights_sha256"
        )
        if "weights_sha256" in differ:
            shown = (shown + "; " if shown else "") + "different weights"
        raise ValueError(
            f"The feature cache {directory!r} was written by another teacher "
            f"({saved['class']} over {saved['backbone']}, grid "
            f"{saved['grid_shape']}x{saved['feature_dim']}, layers "
            f"{saved['layers']}). Differences: {shown}. Use a new directory "
            "for this teacher, or delete the old cache."
        )


def read_manifest(directory):
    """The manifest of a feature cache, or a ValueError if there is none."""
    path = os.path.join(os.fspath(directory), MANIFEST_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"{os.fspath(directory)!r} is not a teacher-feature cache (no "
            f"{MANIFEST_FILE}). Write one with `cache_teacher_features`."
        )
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"The cache manifest {path!r} is not valid JSON ({e})."
        ) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"The cache {os.fspath(directory)!r} has format version "
            f"{manifest.get('format_version')!r}; this keras_apm reads "
            f"version {FORMAT_VERSION}. Rebuild the cache."
        )
    return manifest


def _complete_shards(directory):
    """Indices 0..k-1 of the contiguous complete shards; removes temp files."""
    for tmp in glob.glob(os.path.join(directory, TMP_PREFIX + "*")):
        remove_path(tmp)
    found = set()
    for name in os.listdir(directory):
        match = _SHARD_RE.match(name)
        if match:
            found.add(int(match.group(1)))
    count = 0
    while count in found:
        count += 1
    return count


def _image_elements(dataset):
    """An unbatched dataset of `(image, label or -1)` from images or tuples."""
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            "`dataset` must be a `tf.data.Dataset` of images (e.g. from "
            "`keras_apm.data.image_dataset`). Received "
            f"{type(dataset).__name__}."
        )
    spec = dataset.element_spec
    has_labels = isinstance(spec, tuple)
    image_spec = spec[0] if has_labels else spec
    if isinstance(image_spec, dict) or not isinstance(
        image_spec, tf.TensorSpec
    ):
        raise ValueError(
            "Expected a dataset of images (H, W, 3) or (B, H, W, 3), or of "
            f"(image, label) tuples. Received element_spec {spec}."
        )
    rank = image_spec.shape.rank
    if rank == 4:
        dataset = dataset.unbatch()
    elif rank != 3:
        raise ValueError(
            "Expected images of shape (H, W, 3), batched or not. Received "
            f"element_spec {spec}."
        )
    if has_labels:
        return dataset.map(lambda x, y, *_: (x, tf.cast(y, tf.int64))), True
    return dataset.map(lambda x: (x, tf.constant(-1, tf.int64))), False


def _first_image_sha256(elements):
    for image, _ in elements.take(1):
        value = np.ascontiguousarray(image.numpy().astype("float32"))
        return hashlib.sha256(value.tobytes()).hexdigest(), value.shape
    raise ValueError("The dataset is empty: there is nothing to cache.")


# Compiled teacher calls, per teacher and image shape, so that caching several
# splits with one teacher compiles it once.
_TEACHER_FUNCTIONS = weakref.WeakKeyDictionary()


def _teacher_function(teacher, image_shape, batch_size):
    """`images -> {grid, global[, levels]}` NumPy arrays, compiled once.

    A functional model compiles the teacher (jit / tf.function) instead of
    running it op by op; every call gets a full `batch_size` batch (a short
    one is padded, and the padding dropped) so it never recompiles.
    """
    functions = _TEACHER_FUNCTIONS.setdefault(teacher, {})
    key = tuple(image_shape)
    if key not in functions:
        inputs = keras.Input(shape=image_shape, name="images")
        outputs = teacher(inputs)
        keys = ["grid", "global"] + (["levels"] if "levels" in outputs else [])
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


def cache_teacher_features(
    teacher,
    dataset,
    directory,
    shard_size=1024,
    batch_size=64,
    image_dtype="uint8",
    target_dtype="float32",
    max_shards=None,
    verbose=1,
):
    """Runs a teacher once over a dataset and writes its targets to disk.

    Each shard holds `shard_size` consecutive examples (the last may hold
    fewer): `images` (as `image_dtype`), the teacher's `grid`, `global`,
    `levels` (if the teacher was built with `layers`) and `labels` (if the
    dataset yields `(image, label)`; else -1). Calling it again on the same
    directory, teacher and dataset continues an interrupted run (complete
    shards are kept and skipped, partial ones were never renamed into
    place) or does nothing if the cache is complete. The dataset must
    yield the same examples in the same order each time (no shuffling).
    One writer per directory at a time: a run deletes the temporary files
    it finds, assuming they were left by an interrupted run.

    Args:
        teacher: a `keras_apm.teachers.Teacher`.
        dataset: a `tf.data.Dataset` of float RGB images in `[0, 255]`,
            batched or not, or of `(image, label)` tuples; e.g.
            `keras_apm.data.image_dataset(name, image_size=student_size)`.
            The images are stored as the student will see them, so give
            them the student's size.
        directory: the cache directory (created if needed).
        shard_size: int, examples per shard file.
        batch_size: int, examples per teacher call.
        image_dtype: `"uint8"` (rounded, 4x smaller; lossless for decoded
            image files) or `"float32"` (exact, e.g. for resized images).
        target_dtype: `"float32"` or `"float16"` (half the disk).
        max_shards: stop after writing this many new shards (None: all).
            The cache stays incomplete; a later call continues it.
        verbose: 0 (silent) or 1 (a progress bar).

    Returns:
        The manifest dict (`"complete"`, `"num_examples"`, `"num_shards"`,
        the teacher identity and the stored shapes).

    Raises:
        ValueError: for a bad argument, an empty dataset, or a directory
            holding a cache of another teacher, dataset or layout.

    Example:
    ```python
    ds = keras_apm.data.image_dataset("sklearn_digits", image_size=(32, 32))
    keras_apm.data.cache_teacher_features(teacher, ds, "cache/digits")
    train = keras_apm.data.load_feature_cache(
        "cache/digits", batch_size=64, shuffle=True, seed=0)
    keras_apm.APMDistiller(student).fit(train, epochs=10)  # no teacher
    ```
    """
    from keras_apm.teachers import Teacher

    if not isinstance(teacher, Teacher):
        raise ValueError(
            "`teacher` must be a `keras_apm.teachers.Teacher`. Received "
            f"{type(teacher).__name__}."
        )
    shard_size = _positive_int(shard_size, "shard_size")
    batch_size = _positive_int(batch_size, "batch_size")
    max_shards = _positive_int(max_shards, "max_shards", allow_none=True)
    if image_dtype not in IMAGE_DTYPES:
        raise ValueError(
            f"`image_dtype` must be one of {IMAGE_DTYPES}. Received "
            f"{image_dtype!r}."
        )
    if target_dtype not in TARGET_DTYPES:
        raise ValueError(
            f"`target_dtype` must be one of {TARGET_DTYPES}. Received "
            f"{target_dtype!r}."
        )
    directory = os.path.abspath(os.fspath(directory))
    elements, has_labels = _image_elements(dataset)
    first_sha, image_shape = _first_image_sha256(elements)
    if len(image_shape) != 3 or image_shape[-1] != 3:
        raise ValueError(
            "Expected RGB images of shape (H, W, 3). The dataset's first "
            f"image has shape {image_shape}."
        )

    identity = teacher_identity(teacher)
    settings = {
        "format_version": FORMAT_VERSION,
        "shard_size": shard_size,
        "image_dtype": image_dtype,
        "target_dtype": target_dtype,
        "image_shape": list(image_shape),
        "has_labels": has_labels,
        "dataset_first_image_sha256": first_sha,
    }
    os.makedirs(directory, exist_ok=True)
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    if os.path.exists(manifest_path):
        manifest = read_manifest(directory)
        _check_teacher(manifest, teacher, directory)
        differ = [k for k in settings if manifest.get(k) != settings[k]]
        if differ:
            raise ValueError(
                f"The feature cache {directory!r} was written with other "
                "settings or from another dataset: "
                + ", ".join(
                    f"{k}: cache {manifest.get(k)!r} vs now {settings[k]!r}"
                    for k in differ
                )
                + ". Use a new directory, or the same dataset and settings."
            )
        if manifest.get("complete"):
            return manifest
    else:
        if any(_SHARD_RE.match(n) for n in os.listdir(directory)):
            raise ValueError(
                f"{directory!r} holds shard files but no {MANIFEST_FILE}: it "
                "is not a cache this function wrote. Use an empty directory."
            )
        manifest = dict(settings, teacher=identity, complete=False)
        write_json(manifest_path, manifest)

    done = _complete_shards(directory)
    if done:
        with np.load(os.path.join(directory, _SHARD.format(done - 1))) as last:
            exhausted = len(last["images"]) < shard_size
    else:
        exhausted = False
    run_teacher = _teacher_function(teacher, image_shape, batch_size)
    progress = keras.utils.Progbar(None, verbose=verbose, unit_name="image")
    written = seen = 0
    if not exhausted:
        shards = elements.skip(done * shard_size).batch(shard_size)
        for images, labels in shards:
            if max_shards is not None and written >= max_shards:
                break
            images = images.numpy().astype("float32")
            targets = {}
            for start in range(0, len(images), batch_size):
                out = run_teacher(images[start : start + batch_size])
                for key, value in out.items():
                    targets.setdefault(key, []).append(value)
            arrays = {
                k: np.concatenate(v).astype(target_dtype)
                for k, v in targets.items()
            }
            if image_dtype == "uint8":
                arrays["images"] = np.clip(np.round(images), 0, 255).astype(
                    "uint8"
                )
            else:
                arrays["images"] = images
            arrays["labels"] = labels.numpy()
            path = os.path.join(directory, _SHARD.format(done + written))
            atomic_write(path, lambda tmp: _savez(tmp, arrays))
            written += 1
            seen += len(images)
            progress.update(seen)
            if len(images) < shard_size:
                exhausted = True
                break
        else:
            exhausted = True
    if verbose and written:
        progress.update(seen, finalize=True)
    if not exhausted:
        return read_manifest(directory)

    # Complete: record the totals and the stored shapes.
    num_shards = _complete_shards(directory)
    total, shapes = 0, None
    for index in range(num_shards):
        with np.load(os.path.join(directory, _SHARD.format(index))) as shard:
            total += len(shard["images"])
            if shapes is None:
                shapes = {k: list(shard[k].shape[1:]) for k in shard.files}
    manifest = dict(
        settings,
        teacher=identity,
        complete=True,
        num_examples=total,
        num_shards=num_shards,
        shapes=shapes,
    )
    write_json(manifest_path, manifest)
    return manifest


def _savez(path, arrays):
    # `np.savez` appends ".npz" to names without it: write via a file object.
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_feature_cache(
    directory,
    batch_size=None,
    shuffle=False,
    seed=None,
    teacher=None,
    drop_remainder=False,
):
    """Reads a complete feature cache as a `tf.data.Dataset` of dicts.

    Elements are dicts with `"images"` (float32, `[0, 255]`), `"grid"`,
    `"global"`, `"levels"` (if cached) and `"labels"` (int64, -1 when the
    dataset had none): what `APMDistiller` trains on without a teacher.

    Args:
        directory: a cache written by `cache_teacher_features`.
        batch_size: if given, batches the elements.
        shuffle: shuffles shard order and examples (a shard-sized buffer),
            anew each epoch.
        seed: seed of the shuffle.
        teacher: if given, the cache must have been written by this teacher
            (same geometry, preprocessing and weights).
        drop_remainder: drop a last, smaller batch.

    Raises:
        ValueError: if the directory holds no complete cache, a shard is
            missing, or `teacher` is not the cache's teacher.

    Example:
    ```python
    ds = keras_apm.data.load_feature_cache("cache/digits", batch_size=64)
    batch = next(iter(ds))  # {"images": (64, 32, 32, 3), "grid": ...}
    ```
    """
    directory = os.path.abspath(os.fspath(directory))
    manifest = read_manifest(directory)
    if teacher is not None:
        _check_teacher(manifest, teacher, directory)
    if not manifest.get("complete"):
        found = sum(
            bool(_SHARD_RE.match(n)) for n in os.listdir(directory)
        )
        raise ValueError(
            f"The feature cache {directory!r} is incomplete ({found} shards "
            "written so far). Run `cache_teacher_features` again with the "
            "same teacher and dataset to finish it."
        )
    paths = [
        os.path.join(directory, _SHARD.format(i))
        for i in range(manifest["num_shards"])
    ]
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(
            f"The feature cache {directory!r} lacks {missing}. Rebuild it."
        )
    dtypes = {
        "images": manifest["image_dtype"],
        "labels": "int64",
    }
    signature = {
        key: tf.TensorSpec(
            (None, *shape), dtypes.get(key, manifest["target_dtype"])
        )
        for key, shape in manifest["shapes"].items()
    }

    def read_shard(path):
        path = path.decode() if isinstance(path, bytes) else path
        with np.load(path) as shard:
            arrays = {key: shard[key] for key in signature}
        for key, value in arrays.items():
            if value.dtype != signature[key].dtype.as_numpy_dtype:
                raise ValueError(
                    f"Shard {path!r} stores {key!r} as {value.dtype}; the "
                    f"manifest says {signature[key].dtype.name}. Rebuild "
                    "the cache."
                )
        yield arrays

    def shard_dataset(path):
        return tf.data.Dataset.from_generator(
            read_shard, args=(path,), output_signature=signature
        )

    ds = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.flat_map(shard_dataset).unbatch()
    if shuffle:
        ds = ds.shuffle(
            manifest["shard_size"], seed=seed, reshuffle_each_iteration=True
        )

    def to_float(element):
        element = dict(element)
        element["images"] = tf.cast(element["images"], tf.float32)
        for key in ("grid", "global", "levels"):
            if key in element:
                element[key] = tf.cast(element[key], tf.float32)
        return element

    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size is not None:
        ds = ds.batch(
            _positive_int(batch_size, "batch_size"),
            drop_remainder=drop_remainder,
        )
    return ds.prefetch(tf.data.AUTOTUNE)
