"""Writing a feature cache: shards staged and renamed, resumable, repaired.

Each shard is written to a temporary file and renamed, so a shard file
either is complete or does not exist; then `manifest.json` (also renamed
into place) lists it with its example count, byte size and xxh3-128
checksum. A rerun deletes temporary files and shard files the manifest does
not list (never reading them), checks every listed shard against its
checksum, rewrites any that are missing or do not match, and continues.
"""

import contextlib
import errno
import os
import warnings

import keras
import numpy as np

from keras_apm.data.feature_cache import checksums
from keras_apm.data.feature_cache import sources
from keras_apm.data.feature_cache.manifest import FORMAT_VERSION
from keras_apm.data.feature_cache.manifest import cache_keys
from keras_apm.data.feature_cache.manifest import MANIFEST_FILE
from keras_apm.data.feature_cache.manifest import OLD_SHARD_RE
from keras_apm.data.feature_cache.manifest import SHARD
from keras_apm.data.feature_cache.manifest import SHARD_RE
from keras_apm.data.feature_cache.manifest import aligned
from keras_apm.data.feature_cache.manifest import check_teacher
from keras_apm.data.feature_cache.manifest import read_manifest
from keras_apm.data.feature_cache.manifest import shard_index
from keras_apm.data.feature_cache.manifest import shard_path
from keras_apm.data.feature_cache.manifest import teacher_identity
from keras_apm.utils.files import TMP_PREFIX
from keras_apm.utils.files import atomic_write
from keras_apm.utils.files import remove_path
from keras_apm.utils.files import write_json
from keras_apm.utils.validation import check_positive_int

IMAGE_DTYPES = ("uint8", "float32")
TARGET_DTYPES = ("float16", "float32")


@contextlib.contextmanager
def out_of_space_errors(directory, what):
    """Turns a full disk (or quota) while writing `what` into an OSError
    that names the cache directory and says what to do."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(
            e.errno,
            f"Out of disk space writing the feature cache {directory!r} "
            f"({what}: {e.strerror}). Nothing half-written was kept: the "
            "cache holds the shards completed so far. Free space on that "
            "disk or pick another cache directory, then run "
            "`cache_teacher_features` (or `keras-apm distill --cache DIR`) "
            "again: it continues where it stopped.",
        ) from e


def save_manifest(directory, manifest):
    with out_of_space_errors(directory, MANIFEST_FILE):
        write_json(os.path.join(directory, MANIFEST_FILE), manifest)


def _columns(directory, index, manifest, arrays):
    """The shard's arrays as contiguous little-endian columns, checked."""
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
    return num_examples, columns


def write_columns(path, columns, hasher):
    """Writes the 4 KiB-aligned sections to `path`; returns the byte count.

    The checksum is computed from the bytes as they are written."""
    size = 0
    with open(path, "wb") as f:
        for column in columns:
            data = memoryview(column.reshape(-1)).cast("B")
            for chunk in (data, bytes(aligned(len(data)) - len(data))):
                f.write(chunk)
                hasher.update(chunk)
                size += len(chunk)
    return size


def write_shard(directory, index, manifest, arrays):
    """Writes one shard atomically; returns its manifest entry.

    `arrays` maps every key of `manifest["keys"]` to an array of
    `(num_examples, *manifest["shapes"][key])`.
    """
    num_examples, columns = _columns(directory, index, manifest, arrays)
    name = SHARD.format(index)
    hasher = checksums.new_hasher()
    sizes = []

    def write(staged):
        sizes.append(write_columns(staged, columns, hasher))

    with out_of_space_errors(directory, f"shard {name}"):
        atomic_write(os.path.join(directory, name), write)
    return {
        "file": name,
        "num_examples": int(num_examples),
        "bytes": sizes[-1],
        checksums.ALGORITHM: hasher.hexdigest(),
    }


def clean_directory(directory, manifest):
    """Deletes temp files and shard files the manifest does not list.

    A shard renamed into place after the last manifest write (the run was
    killed in between) has no checksum on record: it is rewritten rather
    than trusted. Only names directly in `directory` are removed (a
    symbolic link, not what it points to).
    """
    listed = {e["file"] for e in manifest.get("shards", [])}
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX) or (
            SHARD_RE.match(name) and name not in listed
        ):
            remove_path(os.path.join(directory, name))


def _check_arguments(
    teacher, shard_size, batch_size, image_dtype, target_dtype, max_shards,
    verbose,
):  # fmt: skip
    """The checked arguments of `cache_teacher_features`, as options."""
    from keras_apm.teachers import Teacher

    if not isinstance(teacher, Teacher):
        raise ValueError(
            "`teacher` must be a `keras_apm.teachers.Teacher`. Received "
            f"{type(teacher).__name__}."
        )
    for value, name, allowed in [
        (image_dtype, "image_dtype", IMAGE_DTYPES),
        (target_dtype, "target_dtype", TARGET_DTYPES),
    ]:
        if value not in allowed:
            raise ValueError(
                f"`{name}` must be one of {allowed}. Received {value!r}."
            )
    return {
        "shard_size": check_positive_int(shard_size, "shard_size"),
        "batch_size": check_positive_int(batch_size, "batch_size"),
        "max_shards": check_positive_int(max_shards, "max_shards", allow_none=True),
        "image_dtype": image_dtype,
        "target_dtype": target_dtype,
        "verbose": verbose,
    }


def _open_manifest(directory, teacher, settings):
    """The directory's manifest after checking it belongs to this run, or a
    new one (written)."""
    os.makedirs(directory, exist_ok=True)
    if not os.path.exists(os.path.join(directory, MANIFEST_FILE)):
        if any(
            SHARD_RE.match(n) or OLD_SHARD_RE.match(n)
            for n in os.listdir(directory)
        ):
            raise ValueError(
                f"{directory!r} holds shard files but no {MANIFEST_FILE}: it "
                "is not a cache this function wrote. Use an empty directory."
            )
        identity = teacher_identity(teacher)
        manifest = dict(settings, teacher=identity, complete=False, shards=[])
        save_manifest(directory, manifest)
        return manifest
    manifest = read_manifest(directory)
    check_teacher(manifest, teacher, directory)
    differ = [
        k for k in [*settings, "teacher_image_shape"]
        if manifest.get(k) != settings.get(k)
    ]
    if differ:
        shown = ", ".join(
            f"{k}: cache {manifest.get(k)!r} vs now {settings.get(k)!r}"
            for k in differ
        )
        raise ValueError(
            f"The feature cache {directory!r} was written with other "
            f"settings or from another dataset: {shown}. Use a new "
            "directory, or the same dataset and settings."
        )
    return manifest


def _sound_shards(directory, manifest):
    """`{index: entry}` of the listed shards that match their checksums.

    The others are deleted with a warning naming them, and the manifest
    rewritten without them (no longer complete). Hashing what is written is
    cheap next to running the teacher, and it is remembered for the
    process: `load_feature_cache` right after does not hash again.
    """
    entries = manifest["shards"]
    paths = [shard_path(directory, e, i) for i, e in enumerate(entries)]
    bad = checksums.shard_problems(zip(paths, entries))
    for path, _, problem in bad:
        warnings.warn(f"Shard {path!r} {problem}: rewriting it.", stacklevel=3)
        remove_path(path)
    bad_files = {entry["file"] for _, entry, _ in bad}
    sound = {
        shard_index(e["file"]): e for e in entries if e["file"] not in bad_files
    }
    if bad:
        manifest["complete"] = False
        manifest["shards"] = [sound[i] for i in sorted(sound)]
        save_manifest(directory, manifest)
    return sound


def _settings(elements, has_labels, has_teacher, shard_size, image_dtype, target_dtype):
    """The manifest's record of the dataset and storage, and the teacher's
    input shape."""
    first_sha, image_shape, teacher_shape = sources.first_image_sha256(elements)
    if len(image_shape) != 3 or image_shape[-1] != 3:
        raise ValueError(
            "Expected RGB images of shape (H, W, 3). The dataset's first "
            f"image has shape {image_shape}."
        )
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
    return settings, teacher_shape


class _Job:
    """The shards one call still has to write, and how to write them."""

    def __init__(self, directory, manifest, elements, run_teacher, options):
        self.directory = directory
        self.manifest = manifest
        self.elements = elements
        self.run_teacher = run_teacher
        for name, value in options.items():  # shard_size, batch_size, ...
            setattr(self, name, value)
        total = int(elements.cardinality())  # Known length: a real bar.
        self.total = total if total >= 0 else None
        self.progress = keras.utils.Progbar(
            self.total, verbose=self.verbose, unit_name="image"
        )
        self.seen = 0

    def arrays(self, images, teacher_images, labels):
        """The stored images, the teacher's targets and the labels."""
        images = images.numpy().astype("float32")
        if self.has_teacher:
            teacher_images = teacher_images.numpy().astype("float32")
        else:
            teacher_images = images
        arrays = sources.teacher_targets(
            self.run_teacher, teacher_images, self.batch_size, self.target_dtype
        )
        if self.image_dtype == "uint8":
            images = np.clip(np.round(images), 0, 255).astype("uint8")
        arrays["images"] = images
        arrays["labels"] = labels.numpy().astype("int64")
        return arrays

    def write(self, index, sound, batch):
        """Runs the teacher over one shard's examples and writes it."""
        arrays = self.arrays(*batch)
        if self.manifest.get("keys") is None:  # The first shard sets the layout.
            keys = [k for k in cache_keys() if k in arrays]
            self.manifest.update(
                keys=keys,
                shapes={k: list(arrays[k].shape[1:]) for k in keys},
                dtypes={k: str(arrays[k].dtype) for k in keys},
            )
        sound[index] = write_shard(self.directory, index, self.manifest, arrays)
        self.manifest["shards"] = [sound[i] for i in sorted(sound)]
        save_manifest(self.directory, self.manifest)
        self.seen += len(arrays["labels"])
        self.progress.update(self.seen)

    def run(self, sound):
        """Writes the shards missing from `sound` (`{index: entry}`).

        Returns:
            `(shard count so far, whether the dataset ended)`.
        """
        short = [i for i, e in sound.items() if e["num_examples"] < self.shard_size]
        end = min(short) + 1 if short else None  # The shard count, once known.
        first = 0
        while first in sound:
            first += 1
        if end is not None and first >= end:
            return end, True
        count, written = first, 0
        batches = self.elements.skip(first * self.shard_size).batch(self.shard_size)
        for index, batch in enumerate(batches, start=first):
            if index not in sound:  # Shards in `sound` were verified above.
                if self.max_shards is not None and written >= self.max_shards:
                    return count, False
                self.write(index, sound, batch)
                written += 1
            count = index + 1
            if sound[index]["num_examples"] < self.shard_size:
                return count, True
        return count, True


def _finish(directory, manifest, sound, count):
    """Marks the cache complete, once every shard up to `count` is there."""
    missing = [i for i in range(count) if i not in sound]
    if missing:  # The dataset changed length under us.
        raise ValueError(
            f"The feature cache {directory!r} could not be completed: shards "
            f"{missing} are missing after the dataset ended. Is the dataset "
            "deterministic (no shuffling)?"
        )
    shards = [sound[i] for i in range(count)]
    manifest.update(
        complete=True,
        shards=shards,
        num_examples=sum(e["num_examples"] for e in shards),
        num_shards=count,
    )
    save_manifest(directory, manifest)
    return manifest


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

    Each shard holds `shard_size` consecutive examples: the images, the
    teacher's `cached_targets()` and the labels (-1 without). Calling it
    again (same directory, teacher and dataset: deterministic, no shuffle)
    checks every written shard against its checksum, rewrites any missing
    or damaged one (warning with its name) and continues an interrupted
    run, or does nothing more. One writer per directory at a time.

    Args:
        teacher: a `keras_apm.teachers.Teacher`.
        dataset: a `tf.data.Dataset` of float RGB images in `[0, 255]` at
            the student's size (batched or not), of `(image, label)`, or
            `keras_apm.data.model_inputs(..., teacher_image_size=...)`
            dicts (the teacher then sees the original at its own size).
        directory: the cache directory (created if needed).
        shard_size: int, examples per shard file.
        batch_size: int, examples per teacher call.
        image_dtype: `"uint8"` (rounded, 4x smaller; lossless for decoded
            image files) or `"float32"` (exact, e.g. for resized images).
        target_dtype: `"float32"` or `"float16"` (half the disk).
        max_shards: stop after writing this many new shards (None: all);
            a later call continues the incomplete cache.
        verbose: 0 (silent) or 1 (a progress bar).

    Returns:
        The manifest dict (`"complete"`, `"num_examples"`, `"num_shards"`,
        `"shards"` with each file's size and checksum, the teacher identity,
        the stored shapes and dtypes).

    Raises:
        ValueError: for a bad argument, an empty dataset, a directory
            holding a cache of another teacher, dataset or layout, or a
            manifest naming files outside the directory.
        OSError: when the disk fills up, naming the directory.

    Example:
    ```python
    ds = keras_apm.data.image_dataset("sklearn_digits", image_size=(32, 32))
    keras_apm.data.cache_teacher_features(teacher, ds, "cache/digits")
    ```
    """
    options = _check_arguments(
        teacher, shard_size, batch_size, image_dtype, target_dtype, max_shards,
        verbose,
    )  # fmt: skip
    directory = os.path.abspath(os.fspath(directory))
    elements, has_labels, has_teacher = sources.image_elements(dataset)
    settings, teacher_shape = _settings(
        elements, has_labels, has_teacher, options["shard_size"], image_dtype,
        target_dtype,
    )
    manifest = _open_manifest(directory, teacher, settings)
    clean_directory(directory, manifest)
    sound = _sound_shards(directory, manifest)
    if manifest.get("complete"):
        return manifest
    run_teacher = sources.teacher_function(
        teacher, teacher_shape, options["batch_size"]
    )
    job = _Job(directory, manifest, elements, run_teacher,
               dict(options, has_teacher=has_teacher))  # fmt: skip
    count, ended = job.run(sound)
    if verbose and job.seen and job.seen != job.total:
        job.progress.update(job.seen, finalize=True)
    if not ended:
        return job.manifest
    return _finish(directory, job.manifest, sound, count)
