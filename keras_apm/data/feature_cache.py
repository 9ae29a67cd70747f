"""A teacher-feature cache: run the teacher once, distil many epochs from disk.

`cache_teacher_features` runs a frozen teacher over a `tf.data` dataset of
images and writes the images with their targets to `directory` in shards
(`shard_00000.bin`, ...). `load_feature_cache` reads them back as a
`tf.data.Dataset` of dicts that `APMDistiller.fit` trains on without a
teacher (the official recipe: dump the teacher's features once).

Layout (format version 2). A shard file holds `n` consecutive examples as
raw little-endian columns, one section per key in `manifest["keys"]`
order (`images`, `grid`, `global`, `levels` if cached, `labels`), each
section `n` fixed-size records padded to a multiple of 4 KiB: any run of
examples of a key is one contiguous byte range. `load_feature_cache`
reads a batch with one `os.preadv` per key and run, straight into the
batch's tensors, in `tf.data` threads that do not hold the GIL while they
copy; NumPy can `np.memmap` the same bytes.
(Format version 1, `.npz` shards read per shard by a Python generator in
one thread, is refused with a message saying how to rebuild.)

Resumable: each shard is written to a temporary file and renamed, so a
shard file either is complete or does not exist; then `manifest.json`
(also renamed into place) lists it with its example count, byte size and
SHA-256. A rerun after an interruption deletes temporary files and shard
files the manifest does not list (never reading them), re-hashes the
listed ones, rewrites any that are missing or do not match, and
continues. `manifest.json` also records the teacher (class, geometry,
preprocessing and a hash of its weights), the dataset (a hash of its first
image) and the layout, so a cache is never continued or read with a
different teacher.

Checks on read: `load_feature_cache` checks that every shard it will read
exists with the manifest's byte size before it returns (a stat per shard:
a truncated, missing or swapped file is named before training starts);
`verify="checksum"` also re-hashes every shard (a full read of the cache,
about 1 GB/s per core). Bytes flipped in place after that are not seen.
"""

import ctypes
import hashlib
import json
import os
import re
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from keras_apm.utils.files import TMP_PREFIX
from keras_apm.utils.files import atomic_write
from keras_apm.utils.files import remove_path
from keras_apm.utils.files import write_json
from keras_apm.utils.optional import require

tf = require("tensorflow", extra="data")

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2
_SHARD = "shard_{:05d}.bin"
_SHARD_RE = re.compile(r"^shard_(\d{5,})\.bin$")
_OLD_SHARD_RE = re.compile(r"^shard_(\d{5,})\.npz$")  # format version 1
_KEYS = ("images", "grid", "global", "levels", "labels")
# Sections start on 4 KiB boundaries (page-aligned for mmap and direct I/O).
_ALIGN = 4096
# Examples per read when `load_feature_cache` is not asked to batch.
_READ_BATCH = 64
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
    """The manifest of a feature cache, or a ValueError if there is none.

    A cache of an older layout (format version 1, `.npz` shards) gives a
    ValueError that says how to rebuild it.
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"{directory!r} is not a teacher-feature cache (no "
            f"{MANIFEST_FILE}). Write one with `cache_teacher_features`."
        )
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"The cache manifest {path!r} is not valid JSON ({e})."
        ) from None
    if not isinstance(manifest, dict):
        raise ValueError(
            f"The cache manifest {path!r} is not a JSON object."
        )
    version = manifest.get("format_version")
    if version == 1:
        raise ValueError(
            f"The feature cache {directory!r} has the old layout (format "
            "version 1: `.npz` shards, read by one Python thread); this "
            f"keras_apm reads format version {FORMAT_VERSION} (raw shards "
            "that tf.data reads in parallel, with checksums). Rebuild it: "
            "delete the directory (or pick a new one) and run "
            "`keras_apm.data.cache_teacher_features` (or `keras-apm distill "
            "--cache DIR`) again with the same teacher and dataset."
        )
    if version != FORMAT_VERSION:
        raise ValueError(
            f"The cache {directory!r} has format version {version!r}; this "
            f"keras_apm reads version {FORMAT_VERSION}. Rebuild the cache."
        )
    return manifest


def _record_bytes(manifest, key):
    """Bytes of one example's record of `key`."""
    dtype = np.dtype(manifest["dtypes"][key])
    return int(dtype.itemsize * np.prod(manifest["shapes"][key], dtype=int))


def _aligned(size):
    return -(-size // _ALIGN) * _ALIGN


def _sections(manifest, num_examples):
    """`{key: (offset, record_bytes)}` and the file size of a shard."""
    out, offset = {}, 0
    for key in manifest["keys"]:
        record = _record_bytes(manifest, key)
        out[key] = (offset, record)
        offset += _aligned(record * num_examples)
    return out, offset


def _write_shard(directory, index, manifest, arrays):
    """Writes one shard atomically; returns its manifest entry.

    `arrays` maps every key of `manifest["keys"]` to an array of
    `(num_examples, *manifest["shapes"][key])`. The SHA-256 is computed
    from the bytes as they are written (no second read).
    """
    num_examples = len(arrays[manifest["keys"][0]])
    columns = []
    for key in manifest["keys"]:
        value = np.asarray(arrays[key])
        expected = (num_examples, *manifest["shapes"][key])
        if value.shape != expected:
            raise ValueError(
                f"Shard {index} of {directory!r}: {key!r} has shape "
                f"{value.shape}; the cache stores {expected}."
            )
        dtype = np.dtype(manifest["dtypes"][key]).newbyteorder("<")
        columns.append(np.ascontiguousarray(value, dtype=dtype))
    name = _SHARD.format(index)
    digest = hashlib.sha256()
    size = 0

    def write(staged):
        nonlocal size
        with open(staged, "wb") as f:
            for column in columns:
                data = memoryview(column.reshape(-1)).cast("B")
                pad = bytes(_aligned(len(data)) - len(data))
                for chunk in (data, pad):
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)

    atomic_write(os.path.join(directory, name), write)
    return {
        "file": name,
        "num_examples": int(num_examples),
        "bytes": size,
        "sha256": digest.hexdigest(),
    }


def _file_sha256(path):
    digest = hashlib.sha256()
    buffer = bytearray(1 << 22)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        # hashlib releases the GIL on large chunks: threads hash in parallel.
        while count := f.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _shard_problem(directory, entry, checksum):
    """Why a listed shard cannot be read (a sentence), or None."""
    path = os.path.join(directory, entry["file"])
    try:
        size = os.path.getsize(path)
    except OSError:
        return "is missing"
    if size != entry["bytes"]:
        return (
            f"has {size} bytes; the manifest says {entry['bytes']} (truncated "
            "or replaced)"
        )
    if checksum and _file_sha256(path) != entry["sha256"]:
        return "does not match its SHA-256 in the manifest (corrupt)"
    return None


def _shard_problems(directory, entries, checksum):
    """`[(entry, problem)]` for the shards that fail the check."""
    if checksum and len(entries) > 1:
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            problems = list(
                pool.map(
                    lambda e: _shard_problem(directory, e, True), entries
                )
            )
    else:
        problems = [_shard_problem(directory, e, checksum) for e in entries]
    return [(e, p) for e, p in zip(entries, problems) if p]


def _clean_directory(directory, manifest):
    """Deletes temp files and shard files the manifest does not list.

    A shard renamed into place after the last manifest write (the run was
    killed in between) has no checksum on record: it is rewritten rather
    than trusted.
    """
    listed = {e["file"] for e in manifest.get("shards", [])}
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX) or (
            _SHARD_RE.match(name) and name not in listed
        ):
            remove_path(os.path.join(directory, name))


def _image_elements(dataset):
    """Unbatched `(image, teacher_image, label or -1)` elements, and facts.

    Takes images, `(image, label)` tuples, or what `model_inputs` yields:
    `{"images"[, "teacher_images"]}` dicts, alone or with labels. Without
    `"teacher_images"` the teacher sees the stored image itself.

    Returns:
        `(elements, has_labels, has_teacher_images)`.
    """
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
    if not isinstance(image_spec, tf.TensorSpec):
        raise ValueError(
            "Expected a dataset of images (H, W, 3) or (B, H, W, 3), of "
            "(image, label) tuples, or of `model_inputs` dicts. Received "
            f"element_spec {spec}."
        )
    rank = image_spec.shape.rank
    if rank == 4:
        dataset = dataset.unbatch()
    elif rank != 3:
        raise ValueError(
            "Expected images of shape (H, W, 3), batched or not. Received "
            f"element_spec {spec}."
        )

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


def _first_image_sha256(elements):
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

    Checksums: every shard's SHA-256 is recorded in the manifest as it is
    written. Continuing an incomplete cache re-hashes the shards already
    written and rewrites any that do not match (with a warning naming
    them); on a complete cache only the file sizes are checked (a stat per
    shard), and missing or truncated shards are rewritten. To repair a
    shard that `load_feature_cache(..., verify="checksum")` reports as
    corrupt, delete it and call this again.

    Args:
        teacher: a `keras_apm.teachers.Teacher`.
        dataset: a `tf.data.Dataset` of float RGB images in `[0, 255]`,
            batched or not, or of `(image, label)` tuples; e.g.
            `keras_apm.data.image_dataset(name, image_size=student_size)`.
            The images are stored as the student will see them, so give
            them the student's size. When the teacher's input size
            differs, pass `keras_apm.data.model_inputs(raw, student_size,
            teacher_image_size=teacher.image_size, with_labels=True)`:
            its `"teacher_images"` (the original resized to the
            teacher's size) go to the teacher, its `"images"` are stored.
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
        `"shards"` with each file's size and SHA-256, the teacher identity
        and the stored shapes and dtypes).

    Raises:
        ValueError: for a bad argument, an empty dataset, a directory
            holding a cache of another teacher, dataset or layout, or a
            cache of the old (version 1) layout.

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
    elements, has_labels, has_teacher = _image_elements(dataset)
    first_sha, image_shape, teacher_shape = _first_image_sha256(elements)
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
    if has_teacher and teacher_shape != image_shape:
        # The teacher saw the original image resized to its own size, not
        # the stored student-sized image upscaled again.
        settings["teacher_image_shape"] = list(teacher_shape)
    os.makedirs(directory, exist_ok=True)
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    if os.path.exists(manifest_path):
        manifest = read_manifest(directory)
        _check_teacher(manifest, teacher, directory)
        differ = [
            k for k in [*settings, "teacher_image_shape"]
            if manifest.get(k) != settings.get(k)
        ]
        if differ:
            raise ValueError(
                f"The feature cache {directory!r} was written with other "
                "settings or from another dataset: "
                + ", ".join(
                    f"{k}: cache {manifest.get(k)!r} vs now {settings.get(k)!r}"
                    for k in differ
                )
                + ". Use a new directory, or the same dataset and settings."
            )
    else:
        if any(
            _SHARD_RE.match(n) or _OLD_SHARD_RE.match(n)
            for n in os.listdir(directory)
        ):
            raise ValueError(
                f"{directory!r} holds shard files but no {MANIFEST_FILE}: it "
                "is not a cache this function wrote. Use an empty directory."
            )
        manifest = dict(settings, teacher=identity, complete=False, shards=[])
        write_json(manifest_path, manifest)

    _clean_directory(directory, manifest)
    complete = bool(manifest.get("complete"))
    entries = manifest["shards"]
    # Hashing what is already written is cheap next to running the teacher;
    # a complete cache (reopened by every `distill --cache` run) gets the
    # stat-only check.
    bad = _shard_problems(directory, entries, checksum=not complete)
    if complete and not bad:
        return manifest
    for entry, problem in bad:
        warnings.warn(
            f"Shard {os.path.join(directory, entry['file'])!r} {problem}: "
            "rewriting it.",
            stacklevel=2,
        )
        remove_path(os.path.join(directory, entry["file"]))
    bad_files = {entry["file"] for entry, _ in bad}
    valid = {
        _shard_index(e["file"]): e for e in entries if e["file"] not in bad_files
    }
    if bad or complete:
        manifest = dict(manifest, complete=False, shards=_listed(valid))
        write_json(manifest_path, manifest)

    short = [i for i, e in valid.items() if e["num_examples"] < shard_size]
    end = min(short) + 1 if short else None  # shard count, once known
    first = 0
    while first in valid:
        first += 1
    run_teacher = _teacher_function(teacher, teacher_shape, batch_size)
    # A known length (e.g. an unbatched TFDS split) gives a real bar.
    total = int(elements.cardinality())
    progress = keras.utils.Progbar(
        total if total >= 0 else None, verbose=verbose, unit_name="image"
    )
    written = seen = 0
    count = first
    ended = end is not None and first >= end
    if ended:
        count = end
    else:
        shards = elements.skip(first * shard_size).batch(shard_size)
        for offset, (images, teacher_images, labels) in enumerate(shards):
            index = first + offset
            if index in valid:  # written by an earlier run, verified above
                count = index + 1
                if valid[index]["num_examples"] < shard_size:
                    ended = True
                    break
                continue
            if max_shards is not None and written >= max_shards:
                break
            images = images.numpy().astype("float32")
            if has_teacher:
                teacher_images = teacher_images.numpy().astype("float32")
            else:
                teacher_images = images
            targets = {}
            for start in range(0, len(images), batch_size):
                out = run_teacher(teacher_images[start : start + batch_size])
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
            arrays["labels"] = labels.numpy().astype("int64")
            if manifest.get("keys") is None:
                keys = [k for k in _KEYS if k in arrays]
                manifest = dict(
                    manifest,
                    keys=keys,
                    shapes={k: list(arrays[k].shape[1:]) for k in keys},
                    dtypes={k: str(arrays[k].dtype) for k in keys},
                )
            valid[index] = _write_shard(directory, index, manifest, arrays)
            manifest = dict(manifest, shards=_listed(valid))
            write_json(manifest_path, manifest)
            written += 1
            seen += len(images)
            count = index + 1
            progress.update(seen)
            if len(images) < shard_size:
                ended = True
                break
        else:
            ended = True
    if verbose and written and seen != total:  # a known total finalizes
        progress.update(seen, finalize=True)
    if not ended:
        return manifest

    # Complete: record the totals.
    missing = [i for i in range(count) if i not in valid]
    if missing:  # The dataset changed length under us.
        raise ValueError(
            f"The feature cache {directory!r} could not be completed: shards "
            f"{missing} are missing after the dataset ended. Is the dataset "
            "deterministic (no shuffling)?"
        )
    shards = [valid[i] for i in range(count)]
    manifest = dict(
        manifest,
        complete=True,
        shards=shards,
        num_examples=sum(e["num_examples"] for e in shards),
        num_shards=count,
    )
    write_json(manifest_path, manifest)
    return manifest


def _shard_index(name):
    return int(_SHARD_RE.match(name).group(1))


def _listed(valid):
    return [valid[i] for i in sorted(valid)]


def _empty_tensor(shape, dtype):
    """An uninitialised TensorFlow tensor and a writable buffer over it.

    The reader fills TensorFlow's own allocation with `os.preadv`, so a
    batch crosses from the page cache into the tensor in one copy:
    returning a NumPy array from `numpy_function` instead costs a second
    copy (TensorFlow copies every array it is given), which halved the
    read speed in `benchmarks/pipeline.py`. Writing through the pointer is
    safe here: the tensor was just allocated, nothing else refers to it
    until the reader returns it, and every byte is written (or the read
    raises).
    """
    tensor = tf.raw_ops.Empty(shape=shape, dtype=dtype, init=False)
    size = int(np.prod(shape, dtype=int)) * dtype.size
    address = np.from_dlpack(tensor).ctypes.data
    return tensor, memoryview((ctypes.c_char * size).from_address(address))


class _BatchReader:
    """Reads examples by their index in the cache, a whole batch per call.

    One `os.preadv` per key and run of consecutive examples, straight into
    the batch's tensors (see `_empty_tensor`): Python runs once per batch
    (in `tf.py_function`), the copy from the page cache runs without the
    GIL (so `num_parallel_calls` threads read in parallel). A file that
    ends early (truncated after the checks of `load_feature_cache`) raises
    a ValueError naming it.
    """

    def __init__(self, directory, manifest):
        shards = manifest["shards"]
        self.paths = [os.path.join(directory, e["file"]) for e in shards]
        counts = [e["num_examples"] for e in shards]
        self.starts = np.cumsum([0] + counts)
        self.sections = [_sections(manifest, n)[0] for n in counts]
        self.keys = list(manifest["keys"])
        self.shapes = {k: tuple(manifest["shapes"][k]) for k in self.keys}
        self.dtypes = {k: tf.as_dtype(manifest["dtypes"][k]) for k in self.keys}

    def __call__(self, indices):
        # Sorted: runs of consecutive examples become single reads. (The
        # order inside a shuffled batch carries no information.)
        indices = np.sort(np.asarray(indices, np.int64))
        count = len(indices)
        out = {
            k: _empty_tensor((count, *self.shapes[k]), self.dtypes[k])
            for k in self.keys
        }
        shard_ids = np.searchsorted(self.starts, indices, side="right") - 1
        breaks = np.flatnonzero(
            (np.diff(indices) != 1) | (np.diff(shard_ids) != 0)
        )
        bounds = [0, *(breaks + 1).tolist(), count]
        files = {}
        try:
            for a, b in zip(bounds[:-1], bounds[1:]):
                shard = int(shard_ids[a])
                if shard not in files:
                    files[shard] = os.open(self.paths[shard], os.O_RDONLY)
                local = int(indices[a] - self.starts[shard])
                for key in self.keys:
                    offset, record = self.sections[shard][key]
                    view = out[key][1][a * record : b * record]
                    self._read(
                        files[shard], view, offset + local * record, shard
                    )
        finally:
            for fd in files.values():
                os.close(fd)
        return [out[k][0] for k in self.keys]

    def _read(self, fd, view, offset, shard):
        done = 0
        while done < len(view):  # Linux reads at most ~2 GiB per call.
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise ValueError(
                    f"The cache shard {self.paths[shard]!r} ended at byte "
                    f"{offset + done}, before the data the manifest lists: "
                    "it was truncated or replaced after the cache was "
                    "opened. Delete it and run `cache_teacher_features` "
                    "again with the same teacher and dataset."
                )
            done += got


def load_feature_cache(
    directory,
    batch_size=None,
    shuffle=False,
    seed=None,
    teacher=None,
    drop_remainder=False,
    dtype="float32",
    num_shards=None,
    index=None,
    num_parallel_reads=None,
    verify="size",
):
    """Reads a complete feature cache as a `tf.data.Dataset` of dicts.

    Elements are dicts with `"images"` (float32, `[0, 255]`), `"grid"`,
    `"global"`, `"levels"` (if cached) and `"labels"` (int64, -1 when the
    dataset had none): what `APMDistiller` trains on without a teacher.

    Reading: `tf.data` shuffles and batches example *indices*; each batch
    is then read in one Python call (one `os.preadv` per key and run of
    consecutive examples, done without the GIL) by `num_parallel_reads`
    threads, in order. So there is no Python per element, a shuffle is
    uniform over the whole part at 8 bytes per example, and a shard that
    ends early fails with its name. Examples inside a shuffled batch come
    in file order (a batch is a random set; its order carries nothing).

    One part per process: with `num_shards=N, index=i` (e.g. the process
    count and this process's id) the dataset holds only the `i`-th of `N`
    equal, contiguous, disjoint ranges of the cache's examples, and only
    those bytes are read; each part has `num_examples // N` examples (the
    last `num_examples % N < N` are left out, so that every process sees the
    same number of batches). Shuffling then stays within the part. Use
    this rather than `Dataset.shard`, which would read every byte in every
    process (with `tf.distribute`, also set the dataset's
    `AutoShardPolicy.OFF`: its automatic sharding would do the same).

    Args:
        directory: a cache written by `cache_teacher_features`.
        batch_size: if given, batches the elements.
        shuffle: shuffles all the examples (of the part), anew each
            epoch.
        seed: seed of the shuffle.
        teacher: if given, the cache must have been written by this teacher
            (same geometry, preprocessing and weights).
        drop_remainder: drop a last, smaller batch.
        dtype: `"float32"` (default) casts images and targets to float32;
            `None` keeps them as stored (`uint8` or `float32` images,
            `float16` or `float32` targets): 2-4x fewer bytes to copy and
            to send to an accelerator; `APMDistiller` casts on the device.
        num_shards: the number of parts to split the cache into (None: one).
        index: which part to read, in `[0, num_shards)`.
        num_parallel_reads: batches read at once, in threads (default:
            the CPU count, at most 4).
        verify: `"size"` (default) checks that every shard to be read
            exists with the byte size in the manifest (a stat per file);
            `"checksum"` also checks each shard's SHA-256 (reads the whole
            part once, ~1 GB/s per core). Either way the check runs here,
            before training, and a failure names the shard.

    Returns:
        A `tf.data.Dataset` with a known cardinality.

    Raises:
        ValueError: if the directory holds no complete cache (or one of
            the old layout: the message says how to rebuild it), a shard
            is missing, truncated or corrupt (naming it), `teacher` is not
            the cache's teacher, or an argument is out of range.

    Example:
    ```python
    ds = keras_apm.data.load_feature_cache("cache/digits", batch_size=64)
    batch = next(iter(ds))  # {"images": (64, 32, 32, 3), "grid": ...}
    # Process 1 of 2 reads the second half of the examples:
    part = keras_apm.data.load_feature_cache(
        "cache/digits", batch_size=32, num_shards=2, index=1)
    ```
    """
    if dtype not in ("float32", None):
        raise ValueError(
            f"`dtype` must be 'float32' or None (as stored). Received {dtype!r}."
        )
    if verify not in ("size", "checksum"):
        raise ValueError(
            f"`verify` must be 'size' or 'checksum'. Received {verify!r}."
        )
    if (num_shards is None) != (index is None):
        raise ValueError(
            "Pass both `num_shards` and `index`, or neither. Received "
            f"num_shards={num_shards!r}, index={index!r}."
        )
    if num_shards is not None:
        num_shards = _positive_int(num_shards, "num_shards")
        if (
            isinstance(index, bool)
            or not isinstance(index, (int, np.integer))
            or not 0 <= index < num_shards
        ):
            raise ValueError(
                f"`index` must be an int in [0, {num_shards}). Received "
                f"{index!r}."
            )
    if num_parallel_reads is None:
        num_parallel_reads = min(4, os.cpu_count() or 1)
    readers = _positive_int(num_parallel_reads, "num_parallel_reads")
    if batch_size is not None:
        batch_size = _positive_int(batch_size, "batch_size")

    directory = os.path.abspath(os.fspath(directory))
    manifest = read_manifest(directory)
    if teacher is not None:
        _check_teacher(manifest, teacher, directory)
    if not manifest.get("complete"):
        raise ValueError(
            f"The feature cache {directory!r} is incomplete "
            f"({len(manifest.get('shards', []))} shards written so far). Run "
            "`cache_teacher_features` again with the same teacher and "
            "dataset to finish it."
        )
    total = manifest["num_examples"]
    lo, hi = 0, total
    if num_shards is not None:
        part = total // num_shards
        if part == 0:
            raise ValueError(
                f"The feature cache {directory!r} has {total} examples: too "
                f"few for num_shards={num_shards} parts."
            )
        lo, hi = index * part, (index + 1) * part
    begin, entries = 0, []
    for entry in manifest["shards"]:  # only the shards this part reads
        if begin < hi and begin + entry["num_examples"] > lo:
            entries.append(entry)
        begin += entry["num_examples"]
    problems = _shard_problems(directory, entries, verify == "checksum")
    if problems:
        shown = "; ".join(
            f"shard {os.path.join(directory, e['file'])!r} {p}"
            for e, p in problems[:5]
        )
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            f"The feature cache {directory!r} cannot be read: {shown}{more}. "
            "Delete the bad shard files and run `cache_teacher_features` "
            "again with the same teacher and dataset: it rewrites them."
        )

    reader = _BatchReader(directory, manifest)
    keys = reader.keys
    tf_dtypes = [tf.as_dtype(manifest["dtypes"][k]) for k in keys]
    # Indices, not examples, go through the shuffle buffer: a uniform
    # shuffle of the whole part costs 8 bytes per example.
    ds = tf.data.Dataset.range(lo, hi)
    if shuffle:
        ds = ds.shuffle(hi - lo, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(
        batch_size or _READ_BATCH,
        drop_remainder=bool(drop_remainder and batch_size),
    )
    batch_dim = batch_size if drop_remainder and batch_size else None

    def read(indices):
        values = tf.py_function(reader, [indices], tf_dtypes)
        out = {}
        for key, value in zip(keys, values):
            value.set_shape([batch_dim, *manifest["shapes"][key]])
            if dtype is not None and key != "labels":
                value = tf.cast(value, dtype)
            out[key] = value
        return out

    ds = ds.map(read, num_parallel_calls=readers, deterministic=True)
    if batch_size is None:
        ds = ds.unbatch()
    return ds.prefetch(tf.data.AUTOTUNE)
