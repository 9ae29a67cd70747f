"""Reading a feature cache: batches straight from the page cache into tensors.

`tf.data` shuffles and batches example *indices*; each batch is then read
in one Python call (one `os.preadv` per key and run of consecutive
examples, without the GIL) by `num_parallel_reads` threads. Before the
first batch from a shard is read in a process, the shard's bytes are
checked against the checksum in the manifest (`checksums.py`).
"""

import ctypes
import os

import numpy as np

from keras_apm.data.feature_cache import checksums
from keras_apm.data.feature_cache.manifest import MANIFEST_FILE
from keras_apm.data.feature_cache.manifest import check_teacher
from keras_apm.data.feature_cache.manifest import read_manifest
from keras_apm.data.feature_cache.manifest import sections
from keras_apm.data.feature_cache.manifest import shard_path
from keras_apm.utils.optional import require
from keras_apm.utils.validation import check_positive_int

tf = require("tensorflow", extra="data")

# Examples per read when `load_feature_cache` is not asked to batch.
READ_BATCH = 64
VERIFY = ("checksum", "size")
_REPAIR = (
    "Run `cache_teacher_features` again with the same teacher and dataset "
    "(or `keras-apm distill --cache DIR` again): it rewrites damaged or "
    "missing shards."
)


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
    GIL (so `num_parallel_calls` threads read in parallel). With
    `checksum=True` a shard is verified before its first batch is read
    (once per process; threads wanting the same shard wait for one hash).
    A damaged shard, or one that ends early, raises a ValueError naming it.
    """

    def __init__(self, directory, manifest, checksum):
        shards = manifest["shards"]
        self.entries = shards
        self.paths = [shard_path(directory, e, i) for i, e in enumerate(shards)]
        self.manifest_path = os.path.join(directory, MANIFEST_FILE)
        counts = [e["num_examples"] for e in shards]
        self.starts = np.cumsum([0] + counts)
        self.sections = [sections(manifest, n)[0] for n in counts]
        self.keys = list(manifest["keys"])
        self.shapes = {k: tuple(manifest["shapes"][k]) for k in self.keys}
        self.dtypes = {k: tf.as_dtype(manifest["dtypes"][k]) for k in self.keys}
        self.verified = set() if checksum else set(range(len(shards)))

    def runs(self, indices):
        """`[(shard, first, end)]`: the runs of consecutive examples of one
        shard in sorted `indices`, as positions in the batch."""
        shard_ids = np.searchsorted(self.starts, indices, side="right") - 1
        breaks = np.flatnonzero(
            (np.diff(indices) != 1) | (np.diff(shard_ids) != 0)
        )
        bounds = [0, *(breaks + 1).tolist(), len(indices)]
        return [(int(shard_ids[a]), a, b) for a, b in zip(bounds, bounds[1:])]

    def __call__(self, indices):
        # Sorted: runs of consecutive examples become single reads. (The
        # order inside a shuffled batch carries no information.)
        indices = np.sort(np.asarray(indices, np.int64))
        out = {
            k: _empty_tensor((len(indices), *self.shapes[k]), self.dtypes[k])
            for k in self.keys
        }
        runs = self.runs(indices)
        self.verify({shard for shard, _, _ in runs} - self.verified)
        files = {}
        try:
            for shard, a, b in runs:
                if shard not in files:
                    files[shard] = os.open(self.paths[shard], os.O_RDONLY)
                local = int(indices[a] - self.starts[shard])
                for key in self.keys:
                    offset, record = self.sections[shard][key]
                    view = out[key][1][a * record : b * record]
                    self.read(files[shard], view, offset + local * record, shard)
        finally:
            for fd in files.values():
                os.close(fd)
        return [out[k][0] for k in self.keys]

    def verify(self, shards):
        """Checks `shards` before any byte of them is used.

        Shards no other thread is hashing are hashed here at once; while
        another thread hashes one this batch needs, this thread checks the
        next unchecked shard instead of idling (sequential reading then
        hashes ahead in parallel), then waits for the answer.
        """
        waiting = [s for s in sorted(shards) if not self.check(s, blocking=False)]
        if waiting:
            ahead = next(
                (s for s in range(max(waiting) + 1, len(self.paths))
                 if s not in self.verified),
                None,
            )  # fmt: skip
            if ahead is not None:
                self.check(ahead, blocking=False, raise_problem=False)
        for shard in waiting:
            self.check(shard, blocking=True)

    def check(self, shard, blocking, raise_problem=True):
        """True once `shard` is verified; False while another thread is
        hashing it (`blocking=False`); a ValueError if it is damaged."""
        problem = checksums.shard_problem(
            self.paths[shard], self.entries[shard], blocking=blocking
        )
        if problem is checksums.BUSY:
            return False
        if problem and raise_problem:
            raise ValueError(
                f"The cache shard {self.paths[shard]!r} {problem} (checked "
                f"against {self.manifest_path!r} before its first use; "
                f"nothing from it was read). {_REPAIR}"
            )
        if not problem:
            self.verified.add(shard)
        return True

    def read(self, fd, view, offset, shard):
        done = 0
        while done < len(view):  # Linux reads at most ~2 GiB per call.
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise ValueError(
                    f"The cache shard {self.paths[shard]!r} ended at byte "
                    f"{offset + done}, before the data the manifest lists: "
                    "it was truncated or replaced after the cache was "
                    f"opened. {_REPAIR}"
                )
            done += got


def _check_options(dtype, verify, num_shards, index):
    if dtype not in ("float32", None):
        raise ValueError(
            f"`dtype` must be 'float32' or None (as stored). Received {dtype!r}."
        )
    if verify not in VERIFY:
        raise ValueError(
            f"`verify` must be one of {VERIFY}. Received {verify!r}."
        )
    if (num_shards is None) != (index is None):
        raise ValueError(
            "Pass both `num_shards` and `index`, or neither. Received "
            f"num_shards={num_shards!r}, index={index!r}."
        )
    if num_shards is None:
        return
    num_shards = check_positive_int(num_shards, "num_shards")
    if (
        isinstance(index, bool)
        or not isinstance(index, (int, np.integer))
        or not 0 <= index < num_shards
    ):
        raise ValueError(
            f"`index` must be an int in [0, {num_shards}). Received {index!r}."
        )


def _complete_manifest(directory, teacher):
    manifest = read_manifest(directory)
    if teacher is not None:
        check_teacher(manifest, teacher, directory)
    if not manifest.get("complete"):
        raise ValueError(
            f"The feature cache {directory!r} is incomplete "
            f"({len(manifest.get('shards', []))} shards written so far). Run "
            "`cache_teacher_features` again with the same teacher and "
            "dataset to finish it."
        )
    total = sum(e["num_examples"] for e in manifest["shards"])
    if manifest.get("num_examples") != total:
        raise ValueError(
            f"The cache manifest {os.path.join(directory, MANIFEST_FILE)!r} "
            f"says {manifest.get('num_examples')!r} examples but its shards "
            f"hold {total}. Delete the cache and write it again."
        )
    return manifest


def _part(manifest, directory, num_shards, index):
    """`(lo, hi)`: the examples of part `index` of `num_shards`, and the
    shards holding them."""
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
    begin, shards = 0, []
    for i, entry in enumerate(manifest["shards"]):
        if begin < hi and begin + entry["num_examples"] > lo:
            shards.append(i)
        begin += entry["num_examples"]
    return lo, hi, shards


def _check_sizes(reader, shards, directory):
    """A stat per shard to be read: missing or truncated ones are named
    before training starts."""
    pairs = [(reader.paths[i], reader.entries[i]) for i in shards]
    problems = checksums.shard_problems(pairs, checksum=False)
    if problems:
        shown = "; ".join(f"shard {p!r} {why}" for p, _, why in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            f"The feature cache {directory!r} cannot be read: {shown}{more}. "
            + _REPAIR
        )


def _dataset(reader, manifest, lo, hi, options):
    """Index batches -> `reader` in threads -> dicts of (cast) tensors."""
    keys, batch_size = reader.keys, options["batch_size"]
    tf_dtypes = [reader.dtypes[k] for k in keys]
    # Indices, not examples, go through the shuffle buffer: a uniform
    # shuffle of the whole part costs 8 bytes per example.
    ds = tf.data.Dataset.range(lo, hi)
    if options["shuffle"]:
        ds = ds.shuffle(hi - lo, seed=options["seed"], reshuffle_each_iteration=True)
    drop = bool(options["drop_remainder"] and batch_size)
    ds = ds.batch(batch_size or READ_BATCH, drop_remainder=drop)
    batch_dim = batch_size if drop else None

    def read(indices):
        values = tf.py_function(reader, [indices], tf_dtypes)
        out = {}
        for key, value in zip(keys, values):
            value.set_shape([batch_dim, *manifest["shapes"][key]])
            if options["dtype"] is not None and key != "labels":
                value = tf.cast(value, options["dtype"])
            out[key] = value
        return out

    ds = ds.map(read, num_parallel_calls=options["readers"], deterministic=True)
    if batch_size is None:
        ds = ds.unbatch()
    return ds.prefetch(tf.data.AUTOTUNE)


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
    verify="checksum",
):
    """Reads a complete feature cache as a `tf.data.Dataset` of dicts.

    Elements are dicts with `"images"` (float32, `[0, 255]`), the cached
    targets (`"grid"`, `"global"`, `"levels"` if cached) and `"labels"`
    (int64, -1 when the dataset had none): what `APMDistiller` trains on
    without a teacher. Batches are read in threads, in order, straight
    from the files into tensors (examples inside a shuffled batch come in
    file order). Every shard to be read is stat-checked here.

    Args:
        directory: a cache written by `cache_teacher_features`.
        batch_size: if given, batches the elements.
        shuffle: shuffles all the examples (of the part), anew each epoch.
        seed: seed of the shuffle.
        teacher: if given, the cache must have been written by this teacher.
        drop_remainder: drop a last, smaller batch.
        dtype: `"float32"` (default) casts images and targets to float32;
            `None` keeps them as stored (`uint8`/`float32` images,
            `float16`/`float32` targets): 2-4x fewer bytes on the host.
        num_shards: the number of equal, contiguous, disjoint parts to split
            the examples into, one per process (None: one); each part has
            `num_examples // num_shards` examples and only its bytes are
            read. Use it rather than `Dataset.shard` (which reads all).
        index: which part to read, in `[0, num_shards)`.
        num_parallel_reads: batches read at once (default: CPUs, at most 4).
        verify: `"checksum"` (default): each shard's bytes are checked
            against the manifest's checksum before the first batch from it
            is read, once per process (xxh3-128: one more read of each
            shard in the first epoch; its cost is in docs/data.md).
            `"size"`: a stat only, for a cache already checked elsewhere.

    Returns:
        A `tf.data.Dataset` with a known cardinality.

    Raises:
        ValueError: for no complete cache (or one of the old layout), a
            missing or truncated shard, a manifest naming files outside the
            directory, another `teacher`, or an argument out of range; when
            iterating, for a shard that fails its checksum (naming it).

    Example:
    ```python
    ds = keras_apm.data.load_feature_cache("cache/digits", batch_size=64)
    part = keras_apm.data.load_feature_cache(  # process 1 of 2
        "cache/digits", batch_size=32, num_shards=2, index=1)
    ```
    """
    _check_options(dtype, verify, num_shards, index)
    if num_parallel_reads is None:
        num_parallel_reads = min(4, os.cpu_count() or 1)
    options = {
        "readers": check_positive_int(num_parallel_reads, "num_parallel_reads"),
        "batch_size": check_positive_int(batch_size, "batch_size", allow_none=True),
        "shuffle": shuffle, "seed": seed, "dtype": dtype,
        "drop_remainder": drop_remainder,
    }  # fmt: skip
    directory = os.path.abspath(os.fspath(directory))
    manifest = _complete_manifest(directory, teacher)
    lo, hi, shards = _part(manifest, directory, num_shards, index)
    reader = _BatchReader(directory, manifest, checksum=verify == "checksum")
    _check_sizes(reader, shards, directory)
    return _dataset(reader, manifest, lo, hi, options)
