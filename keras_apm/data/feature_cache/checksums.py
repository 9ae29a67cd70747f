"""Shard checksums: computed as a shard is written, checked before first use.

A shard's checksum is xxh3-128 (`xxhash`): not cryptographic (the manifest
beside the shards would not stop a forger anyway) but it catches bit flips
and zeroed or swapped files, and it is fast: hashed straight out of a
memory map of the file (no copy) it ran at 8 GB/s per core from the page
cache on the busy 2-core development machine (~30 GB/s idle), where
SHA-256 manages ~1.8 GB/s and copying the bytes into a buffer ~2 GB/s.
Checking each shard once per process leaves a first epoch 68-80% of the
unchecked reader's speed there and later epochs all of it (docs/data.md,
`benchmarks/pipeline.py`). Caches written before carry SHA-256 and are
checked with it.

A check that passed is remembered for the process (keyed by the file's
device, inode, size and modification times), so the writer's check and the
reader's, or several datasets over one cache, hash each file once.
"""

import hashlib
import mmap
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

from keras_apm.utils.optional import require

xxhash = require("xxhash", extra="data")

ALGORITHM = "xxh3_128"
_HASHERS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
# Pages mapped in one go rather than faulted in one by one.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

_verified = set()
_locks = {}
_locks_lock = threading.Lock()


def new_hasher():
    """A hasher for a shard being written (`update`, then `hexdigest`)."""
    return _HASHERS[ALGORITHM]()


def entry_checksum(entry):
    """`(algorithm, hex digest)` recorded in a shard entry."""
    for field in _HASHERS:
        if field in entry:
            return field, entry[field]
    raise KeyError(f"no checksum in {entry!r}")


def forget_verified():
    """Forgets which shards this process has checked (they are hashed
    again on their next use). For benchmarks and tests."""
    _verified.clear()


def _digest(fd, size, field):
    """The hex digest of the first `size` bytes of an open file."""
    if size:
        try:
            # Hashing the mapped page cache copies nothing.
            with mmap.mmap(
                fd, size, flags=mmap.MAP_SHARED | _POPULATE,
                prot=mmap.PROT_READ,
            ) as view:
                hasher = _HASHERS[field]()
                hasher.update(view)  # Releases the GIL (xxhash, hashlib).
                return hasher.hexdigest()
        except (OSError, ValueError):  # A file system without mmap.
            pass
    hasher = _HASHERS[field]()
    buffer = bytearray(1 << 18)  # Fits in L2: hashed while still there.
    done = 0
    while done < size:
        got = os.preadv(fd, [buffer], done)
        if got == 0:
            break
        hasher.update(memoryview(buffer)[: min(got, size - done)])
        done += got
    return hasher.hexdigest()


def _lock(path):
    with _locks_lock:
        return _locks.setdefault(path, threading.Lock())


# What `shard_problem(..., blocking=False)` returns while another thread
# is hashing the same file.
BUSY = "is being checked by another thread"


def _size_problem(size, entry):
    if size != entry["bytes"]:
        return (
            f"has {size} bytes; the manifest says {entry['bytes']} "
            "(truncated or replaced)"
        )
    return None


def shard_problem(path, entry, checksum=True, blocking=True):
    """Why the shard file at `path` does not match its manifest entry (a
    sentence: "is missing", "has N bytes; ...", "does not match ..."), or
    None. `checksum=False` checks the size only (a stat). One thread hashes
    a file at a time; with `blocking=False` another gets `BUSY` at once
    instead of waiting."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if not checksum or _size_problem(info.st_size, entry):
        return _size_problem(info.st_size, entry)
    lock = _lock(path)
    if not lock.acquire(blocking):
        return BUSY
    try:
        return _check_checksum(path, entry)
    finally:
        lock.release()


def _check_checksum(path, entry):
    field, expected = entry_checksum(entry)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    try:
        info = os.fstat(fd)
        key = (path, info.st_dev, info.st_ino, info.st_size,
               info.st_mtime_ns, info.st_ctime_ns, expected)  # fmt: skip
        if key in _verified:
            return None
        problem = _size_problem(info.st_size, entry)
        if problem is None and _digest(fd, info.st_size, field) != expected:
            problem = (
                f"does not match its {field} checksum in the manifest "
                "(corrupt: its bytes changed after it was written)"
            )
        if problem is None:
            _verified.add(key)
        return problem
    finally:
        os.close(fd)


def shard_problems(shards, checksum=True):
    """`[(path, entry, problem)]` for the `(path, entry)` pairs that fail
    `shard_problem`; files are hashed in up to 4 threads."""
    shards = list(shards)

    def check(shard):
        return shard_problem(*shard, checksum=checksum)

    if checksum and len(shards) > 1:
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            problems = list(pool.map(check, shards))
    else:
        problems = [check(shard) for shard in shards]
    return [(*s, p) for s, p in zip(shards, problems) if p]
