"""The feature cache's manifest: what a cache holds, and where, checked.

`manifest.json` lists the shards (file, example count, byte size,
checksum), the teacher's identity, the dataset's and the layout (keys,
shapes, dtypes). `read_manifest` refuses a manifest that does not hold
together, and above all one whose shard entries name files outside the
cache directory (`keras_apm.utils.files.resolve_inside`): what a file on
disk says never makes the cache read, rewrite or delete anything else.
"""

import hashlib
import os
import re

import keras
import numpy as np

from keras_apm.models.apm import apm_outputs
from keras_apm.utils.files import read_json
from keras_apm.utils.files import resolve_inside

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2
SHARD = "shard_{:05d}.bin"
SHARD_RE = re.compile(r"^shard_(\d{5,})\.bin$")
OLD_SHARD_RE = re.compile(r"^shard_(\d{5,})\.npz$")  # format version 1
DTYPES = ("uint8", "float16", "float32", "int64")
# Sections start on 4 KiB boundaries (page-aligned for mmap and direct I/O).
ALIGN = 4096
# Checksum fields of a shard entry: `xxh3_128` (written since the check
# became the default), `sha256` (caches written before).
CHECKSUM_FIELDS = {"xxh3_128": 32, "sha256": 64}



def cached_targets():
    """The teacher outputs a cache stores, in shard order: the head table's
    cached targets (`apm_outputs.cached_target_keys`; `levels` only when
    the teacher was built with `layers`). Read at use time, so a head
    registered after import is cached too.

    Example:
    >>> cached_targets()
    ('grid', 'global', 'levels')
    """
    return apm_outputs.cached_target_keys()


def cache_keys():
    """Every key a shard may hold, in shard order."""
    return ("images", *cached_targets(), "labels")

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

    def listed(value):
        return None if value is None else [int(v) for v in value]

    def plain(value):
        # JSON-friendly scale/offset: None, a float or a list of floats.
        if value is None or isinstance(value, float):
            return value
        return [float(v) for v in np.ravel(value)]

    return {
        "class": type(teacher).__name__,
        "backbone": type(teacher.backbone).__name__,
        "image_size": list(teacher.image_size),
        "patch_size": listed(np.broadcast_to(teacher.patch_size, 2)),
        "grid_shape": list(teacher.grid_shape),
        "feature_dim": int(teacher.feature_dim),
        "global_dim": int(teacher.global_dim),
        "layers": listed(teacher.layer_indices),
        "normalize_levels": teacher.normalize_levels,
        "resize_to_grid": listed(teacher.resize_to_grid),
        "scale": plain(teacher.scale),
        "offset": plain(teacher.offset),
        "interpolation": teacher.interpolation,
        "antialias": teacher.antialias,
        "crop_to_aspect_ratio": teacher.crop_to_aspect_ratio,
        "pad_to_aspect_ratio": teacher.pad_to_aspect_ratio,
        "weights_sha256": digest.hexdigest(),
    }


def check_teacher(manifest, teacher, directory):
    """Raises a ValueError listing how `teacher` differs from the cache's."""
    current = teacher_identity(teacher)
    saved = manifest["teacher"]
    keys = set(saved) | set(current)
    differ = sorted(k for k in keys if saved.get(k) != current.get(k))
    if not differ:
        return
    shown = ", ".join(
        f"{k}: cache {saved.get(k)!r} vs teacher {current.get(k)!r}"
        for k in differ
        if k != "weights_sha256"
    )
    if "weights_sha256" in differ:
        shown = (shown + "; " if shown else "") + "different weights"
    raise ValueError(
        f"The feature cache {directory!r} was written by another teacher "
        f"({saved.get('class')} over {saved.get('backbone')}, grid "
        f"{saved.get('grid_shape')}x{saved.get('feature_dim')}, layers "
        f"{saved.get('layers')}). Differences: {shown}. Use a new directory "
        "for this teacher, or delete the old cache."
    )


def read_manifest(directory):
    """The manifest of a feature cache, checked, or a ValueError.

    Every shard entry must name a shard file inside `directory` (no `..`,
    no absolute path, no symbolic link leading out), with its example
    count, byte size and checksum. A cache of an older layout (format
    version 1, `.npz` shards) gives a ValueError that says how to rebuild.

    Example:
    >>> read_manifest("cache/digits")["num_examples"]
    1437
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"{directory!r} is not a teacher-feature cache (no "
            f"{MANIFEST_FILE}). Write one with `cache_teacher_features`."
        )
    manifest = read_json(
        path, "The cache manifest", "Write the cache again (`cache_teacher_features`)."
    )
    if not isinstance(manifest, dict):
        raise ValueError(f"The cache manifest {path!r} is not a JSON object.")
    _check_version(manifest.get("format_version"), directory)
    _check_layout(manifest, path)
    for index, entry in enumerate(manifest.get("shards", [])):
        _check_entry(manifest, entry, index, directory, path)
    names = [e["file"] for e in manifest.get("shards", [])]
    if len(set(names)) != len(names):
        raise ValueError(
            f"The cache manifest {path!r} lists a shard file twice. Rebuild "
            "the cache."
        )
    return manifest


def _check_version(version, directory):
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


def _refuse(path, what):
    raise ValueError(
        f"The cache manifest {path!r}: {what}. The manifest was edited or "
        "damaged: delete the cache directory and write it again with "
        "`cache_teacher_features`."
    )


def _check_layout(manifest, path):
    """Keys, shapes and dtypes, once known, describe fixed-size records."""
    if not isinstance(manifest.get("shards", []), list):
        _refuse(path, "'shards' is not a list")
    keys = manifest.get("keys")
    if keys is None:  # No shard written yet.
        return
    known = cache_keys()
    if not isinstance(keys, list) or not set(keys) <= set(known) or not keys:
        _refuse(path, f"'keys' must be a list of {known}, got {keys!r}")
    for key in keys:
        shape = manifest.get("shapes", {}).get(key)
        dtype = manifest.get("dtypes", {}).get(key)
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0
            for s in shape
        ):
            _refuse(path, f"shapes[{key!r}] is {shape!r}, not positive ints")
        if dtype not in DTYPES:
            _refuse(path, f"dtypes[{key!r}] is {dtype!r}, not one of {DTYPES}")


def _check_entry(manifest, entry, index, directory, path):
    """One shard entry: a shard file inside the cache, sizes, a checksum."""
    where = f"shards[{index}]"
    if not isinstance(entry, dict):
        _refuse(path, f"{where} is not an object")
    shard_path(directory, entry, index)  # Inside the cache, or refused.
    if not SHARD_RE.match(entry["file"]):
        _refuse(path, f"{where}.file is {entry['file']!r}, not a shard name")
    count = entry.get("num_examples")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        _refuse(path, f"{where}.num_examples is {entry.get('num_examples')!r}")
    if manifest.get("keys") is None:
        _refuse(path, f"{where} is listed but the manifest has no 'keys'")
    size = sections(manifest, entry["num_examples"])[1]
    if entry.get("bytes") != size:
        _refuse(
            path,
            f"{where}.bytes is {entry.get('bytes')!r}; {entry['num_examples']} "
            f"examples of this layout take {size}",
        )
    if not any(
        isinstance(entry.get(k), str) and len(entry[k]) == n
        for k, n in CHECKSUM_FIELDS.items()
    ):
        _refuse(path, f"{where} has no checksum ({' or '.join(CHECKSUM_FIELDS)})")


def shard_path(directory, entry, index):
    """The resolved path of a shard entry, refused unless inside `directory`."""
    source = (
        f"The cache manifest {os.path.join(directory, MANIFEST_FILE)!r}, "
        f"shards[{index}].file,"
    )
    return str(resolve_inside(directory, entry.get("file"), source=source))


def shard_index(name):
    """The index in a shard's file name (`shard_00007.bin` -> 7)."""
    return int(SHARD_RE.match(name).group(1))


def record_bytes(manifest, key):
    """Bytes of one example's record of `key`."""
    dtype = np.dtype(manifest["dtypes"][key])
    return int(dtype.itemsize * np.prod(manifest["shapes"][key], dtype=int))


def aligned(size):
    return -(-size // ALIGN) * ALIGN


def sections(manifest, num_examples):
    """`{key: (offset, record_bytes)}` and the file size of a shard."""
    out, offset = {}, 0
    for key in manifest["keys"]:
        record = record_bytes(manifest, key)
        out[key] = (offset, record)
        offset += aligned(record * num_examples)
    return out, offset
