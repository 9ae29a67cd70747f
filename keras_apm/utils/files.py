"""Atomic writes: a file or folder is either complete or absent, never half-written.

Everything keras_apm saves (presets, checkpoints, feature caches, exports,
figures, JSON reports) is first written under a staging name beside its
destination, `.tmp-NAME-XXXXXXXX[.ext]`, then renamed into place. Readers
never see a partial result, and a crash leaves only `.tmp-*` debris that
the next writer (or a human) can delete.
"""

import json
import os
import shutil
import uuid

TMP_PREFIX = ".tmp-"


def staging_path(path, suffix=None):
    """A fresh sibling name for staging `path`.

    Args:
        path: the destination.
        suffix: the staging name's ending; by default the destination's
            extension, because some writers (`np.savez`, `model.save`)
            insist on one.

    Example:
    >>> staging_path("run/metrics.json")  # 'run/.tmp-metrics.json-1a2b3c4d.json'
    """
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    if suffix is None:
        suffix = os.path.splitext(name)[1]
    tag = uuid.uuid4().hex[:8]
    # Same folder as the destination: the rename stays on one file system.
    return os.path.join(directory, f"{TMP_PREFIX}{name}-{tag}{suffix}")


def replace_path(staged, path):
    """Renames `staged` (a file or folder) to `path`, replacing what is there.

    A file is replaced in one atomic rename. A folder cannot be (POSIX
    renames only onto an empty folder), so the old one is moved aside first
    and put back if the second rename fails.

    Example:
    >>> replace_path(".tmp-student-1a2b3c4d", "student")
    """
    staged, path = os.fspath(staged), os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        backup = staging_path(path, suffix=".old")
        os.rename(path, backup)
        try:
            os.rename(staged, path)
        except OSError:
            os.rename(backup, path)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(staged, path)


def remove_path(path):
    """Removes a file, link or folder if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def atomic_write(path, write, suffix=None, overwrite=True):
    """Calls `write(staged)`, then renames `staged` to `path`.

    `write` creates a file or a folder at the path it is given. If it
    raises, the staged result is removed and `path` is left as it was.

    Args:
        path: the destination (its folder is created if needed).
        write: a function of one argument, the staging path.
        suffix: the staging name's ending (default: `path`'s extension).
        overwrite: whether an existing `path` may be replaced. When False
            and `path` exists by the time `write` has finished (someone
            else wrote it meanwhile), raises `ValueError` and keeps both.

    Returns:
        `path`.

    Example:
    >>> atomic_write("features.npz", lambda tmp: np.savez(tmp, x=x))
    >>> atomic_write("student", model.save_to_preset)
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staged = staging_path(path, suffix)
    try:
        write(staged)
        if not os.path.lexists(staged):
            raise RuntimeError(f"The writer for {path!r} wrote nothing.")
        if not overwrite and os.path.lexists(path):
            raise ValueError(
                f"{path!r} already exists. Pass overwrite=True to replace it."
            )
        replace_path(staged, path)
    finally:
        remove_path(staged)
    return path


def write_json(path, value, indent=2):
    """Writes `value` as JSON (sorted keys, trailing newline), atomically.

    Example:
    >>> write_json("summary.json", {"grid_cosine": 0.95})
    """

    def write(staged):
        with open(staged, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=indent, sort_keys=True)
            f.write("\n")

    return atomic_write(path, write)
