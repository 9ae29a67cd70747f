"""Atomic writes: a file or folder is either complete or absent, never half-written.

Everything keras_apm saves (presets, checkpoints, feature caches, exports,
figures, JSON reports) is first written under a staging name beside its
destination, `.tmp-NAME-PID-XXXXXXXX[.ext]`, then renamed into place. Readers
never see a partial result. A killed writer leaves `.tmp-*` debris; the
stage name carries the writer's process id, so the next write to the same
destination removes the debris of writers that are gone.

Folders are swapped in one atomic `renameat2(RENAME_EXCHANGE)` where Linux
offers it, so a reader never finds the destination missing and two writers
racing for one destination end with the last one's folder and no leftovers.

`sha256_file`, `write_manifest` and `verify_manifest` give artefacts
(presets, caches) a checksum manifest that readers verify.

`resolve_inside` is the one gate for paths read from a file on disk (a
cache manifest, a run's `run.json`, a checksum list): whatever such a file
says, nothing outside its own directory is read, rewritten or deleted.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import tempfile
import threading
import uuid

TMP_PREFIX = ".tmp-"
MANIFEST_FILE = "checksums.json"
_RAISE = object()


def staging_path(path, suffix=None):
    """A fresh sibling name for staging `path`.

    Args:
        path: the destination.
        suffix: the staging name's ending; by default the destination's
            extension, because some writers (`np.savez`, `model.save`)
            insist on one.

    Example:
    >>> staging_path("run/metrics.json")  # 'run/.tmp-metrics.json-4242-1a2b3c4d.json'
    """
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    if suffix is None:
        suffix = os.path.splitext(name)[1]
    tag = uuid.uuid4().hex[:8]
    # Same folder as the destination: the rename stays on one file system.
    # The pid lets a later writer tell a dead writer's debris from a live
    # writer's stage.
    return os.path.join(
        directory, f"{TMP_PREFIX}{name}-{os.getpid()}-{tag}{suffix}"
    )


def pid_alive(pid):
    """Whether a process with id `pid` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else.
        return True
    return True


def remove_stale_stages(path):
    """Removes staging debris of `path` left by writers that were killed.

    Only names `.tmp-NAME-PID-XXXXXXXX[...]` whose PID no longer runs are
    removed; a live writer's stage is left alone.

    Returns:
        The removed paths.

    Example:
    >>> remove_stale_stages("exports/apm.tflite")
    """
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    prefix = f"{TMP_PREFIX}{name}-"
    pattern = re.compile(r"(\d+)-[0-9a-f]{8}(\..*)?")
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        match = pattern.fullmatch(entry[len(prefix) :])
        if match and not pid_alive(int(match.group(1))):
            remove_path(os.path.join(directory, entry))
            removed.append(os.path.join(directory, entry))
    return removed


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a, b):
    """Swaps two paths atomically (Linux `renameat2`); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
        ctypes.c_uint,
    ]  # fmt: skip
    result = renameat2(
        _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False  # file system or kernel without RENAME_EXCHANGE.
    raise OSError(err, os.strerror(err), a, None, b)


def replace_path(staged, path):
    """Renames `staged` (a file or folder) to `path`, replacing what is there.

    A file is replaced in one atomic rename. A folder is swapped with the
    old one in one atomic exchange (Linux), after which the old one (now at
    `staged`) is removed; elsewhere the old one is moved aside first and
    put back if the second rename fails.

    Example:
    >>> replace_path(".tmp-student-4242-1a2b3c4d", "student")
    """
    staged, path = os.fspath(staged), os.fspath(path)
    if not os.path.isdir(staged) or os.path.islink(staged):
        os.replace(staged, path)
        return
    for _ in range(10):  # another writer may create or swap `path` meanwhile.
        if not os.path.lexists(path):
            try:
                os.rename(staged, path)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue  # someone else's folder appeared: swap with it.
        if _exchange(staged, path):
            # `staged` now holds the old folder.
            remove_path(staged)
            return
        break
    backup = staging_path(path, suffix=".old")
    os.rename(path, backup)
    try:
        os.rename(staged, path)
    except OSError:
        os.rename(backup, path)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def resolve_inside(directory, entry, *, source):
    """The path `entry` names inside `directory`, resolved; refuses any other.

    Paths read from a file on disk (a cache manifest's shard list, a run's
    outputs, a checksum list) decide what gets read, rewritten or deleted,
    so a crafted or damaged file must not reach outside its directory. The
    entry must be a non-empty relative path whose resolved form (symbolic
    links followed, `..` applied) lies strictly inside the resolved
    `directory`: `../x`, `/etc/x`, a link leading out, or the directory
    itself are refused.

    Args:
        directory: the folder the entry must stay in.
        entry: the path as read from the file (a `str`).
        source: what the entry was read from, for the error message, e.g.
            `"the cache manifest 'cache/manifest.json', shards[3].file"`.

    Returns:
        The resolved `pathlib.Path`, strictly inside `directory`.

    Raises:
        ValueError: naming `source`, the entry and why it is refused.

    Example:
    >>> resolve_inside("cache", "shard_00000.bin", source="cache/manifest.json")
    PosixPath('/home/me/cache/shard_00000.bin')
    """
    root = pathlib.Path(os.fspath(directory)).resolve()
    if not isinstance(entry, str):
        why = f"is a {type(entry).__name__}, not a path"
    elif not entry or "\0" in entry:
        why = "is empty or holds a NUL byte"
    elif os.path.isabs(entry):
        why = "is an absolute path"
    else:
        try:
            path = (root / entry).resolve()
        except (OSError, RuntimeError) as e:  # a symbolic-link loop
            path, why = None, f"cannot be resolved ({e})"
        if path is not None and root in path.parents:
            return path
        if path == root:
            why = "names the directory itself"
        elif path is not None:
            parts = pathlib.PurePath(entry).parts
            through = "'..'" if ".." in parts else "a symbolic link"
            why = f"leads out of it through {through} (to {str(path)!r})"
    raise ValueError(
        f"{source} names {entry!r}, which {why}. Entries must be relative "
        f"paths inside {str(root)!r}: nothing outside it is read, written or "
        "deleted because of what a file says. The file was edited or "
        "crafted: restore or rebuild it."
    )


def check_writable_dir(directory, what=None):
    """Raises a ValueError unless a file can be created in `directory`.

    Tries for real (a staged empty file, removed at once): permission bits
    say nothing to root, and a read-only mount shows only on writing.

    Example:
    >>> check_writable_dir("runs", "--output's parent")
    """
    directory = os.path.abspath(os.fspath(directory))
    what = what or repr(directory)
    probe = staging_path(os.path.join(directory, "write-probe"), suffix="")
    try:
        with open(probe, "xb"):
            pass
    except OSError as e:
        raise ValueError(
            f"Cannot write to {what} ({directory}): {e.strerror or e}. Pick "
            "a writable location."
        ) from None
    os.remove(probe)


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
    remove_stale_stages(path)
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


def read_json(path, what="JSON file", fix="", default=_RAISE):
    """Reads a JSON file; an unreadable one is a `ValueError` that names it.

    Args:
        path: the file.
        what: what the file is, in the caller's words (`"--label-map"`,
            `"Preset file"`): the error reads `"{what} {path!r} is not
            valid JSON (...). {fix}"` (or `cannot be read`).
        fix: how to fix it, appended to the error.
        default: returned instead of raising when the file is missing or
            not JSON (for files that may be absent or damaged, e.g. a
            run's manifest).

    Example:
    >>> read_json("summary.json", "Summary", "Re-run the command.")
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    # UnicodeDecodeError and json.JSONDecodeError are ValueErrors.
    except (OSError, ValueError) as e:
        if default is not _RAISE:
            return default
        problem = "cannot be read" if isinstance(e, OSError) else "is not valid JSON"
        raise ValueError(
            f"{what} {os.fspath(path)!r} {problem} ({type(e).__name__}: {e}). "
            f"{fix}".rstrip()
        ) from None


# --- checksums ---------------------------------------------------------------


def sha256_file(path, chunk_size=1 << 20):
    """The SHA-256 hex digest of a file's bytes.

    Example:
    >>> sha256_file("preset/model.weights.h5")  # 'e3b0c442...'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory, names=None, manifest=MANIFEST_FILE):
    """Writes `{name: sha256}` of files in `directory` to its manifest.

    Args:
        directory: the folder (a preset, a cache).
        names: file names relative to `directory`; default every regular
            file at its top level except the manifest and dot-files.
        manifest: the manifest's file name.

    Example:
    >>> write_manifest("my_preset")  # my_preset/checksums.json
    """
    directory = os.fspath(directory)
    if names is None:
        names = sorted(
            n
            for n in os.listdir(directory)
            if n != manifest
            and not n.startswith(".")
            and os.path.isfile(os.path.join(directory, n))
        )
    sums = {n: sha256_file(os.path.join(directory, n)) for n in names}
    write_json(os.path.join(directory, manifest), {"sha256": sums})
    return sums


def verify_manifest(directory, names=None, manifest=MANIFEST_FILE):
    """Checks files in `directory` against its checksum manifest.

    A folder without a manifest (written by other tools) passes. A file
    listed but missing, or whose bytes changed, raises `ValueError` naming
    the file.

    Args:
        directory: the folder.
        names: check only these names (those the manifest lists); default
            every name in the manifest.
        manifest: the manifest's file name.

    Returns:
        The names checked (empty if there is no manifest).

    Example:
    >>> verify_manifest("my_preset", names=["model.weights.h5"])
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, manifest)
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            sums = json.load(f)["sha256"]
        if not isinstance(sums, dict):
            raise TypeError("'sha256' is not a dict")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"Checksum manifest {path!r} is unreadable ({type(e).__name__}: "
            f"{e}). Re-save the artefact."
        ) from None
    checked = []
    for name, expected in sorted(sums.items()):
        if names is not None and name not in names:
            continue
        file = str(resolve_inside(directory, name, source=repr(path)))
        if not os.path.isfile(file):
            raise ValueError(
                f"File {file!r} is listed in {path!r} but missing. Re-save "
                "or re-download the artefact."
            )
        found = sha256_file(file)
        if found != expected:
            raise ValueError(
                f"File {file!r} is corrupt: its SHA-256 is {found[:16]}..., "
                f"but {manifest} records {str(expected)[:16]}.... Re-save or "
                "re-download it."
            )
        checked.append(name)
    return checked


# --- temporary folders and signals -------------------------------------------


@contextlib.contextmanager
def temporary_directory(prefix):
    """A temporary folder, removed on every exit path; stale ones cleaned.

    The folder is `TMPDIR/PREFIX<pid>_XXXX`. On entry, folders of the same
    prefix whose process is gone (killed with SIGKILL, say) are removed.
    Combine with `terminate_as_exit` so SIGTERM also runs the cleanup.

    Example:
    >>> with temporary_directory("keras_apm_export_") as tmp: ...
    """
    root = tempfile.gettempdir()
    pattern = re.compile(re.escape(prefix) + r"(\d+)_.*")
    try:
        entries = os.listdir(root)
    except OSError:
        entries = []
    for entry in entries:
        match = pattern.fullmatch(entry)
        if match and not pid_alive(int(match.group(1))):
            remove_path(os.path.join(root, entry))
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}_") as tmp:
        yield tmp


@contextlib.contextmanager
def terminate_as_exit():
    """Turns SIGTERM into `SystemExit(143)` for the block (main thread only).

    Python's default SIGTERM ends the process without running `finally`
    blocks, leaking temporary files and child processes; as an exception
    it unwinds like Ctrl-C. A handler someone else installed is kept.

    Example:
    >>> with terminate_as_exit(), temporary_directory("x_") as tmp: ...
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
