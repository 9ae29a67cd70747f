"""A run owns its output: a manifest, a lock and a write check per output.

A command that writes a directory of results (`keras-apm distill`,
`keras-apm demo`) claims it with `RunDirectory` before its first expensive
step; one that writes a single file (`keras-apm ttt`) claims it with
`OutputFile`. A claim

- creates the location (with its parents) and proves a staged write and
  rename work there, so a read-only location fails in a second, not after
  an hour of work;
- takes a lock (`fcntl.flock` on `OUTPUT/.lock`, or `.NAME.lock` beside a
  file), so two runs never write one output at once. The kernel drops the
  lock when its process dies, so a killed run never blocks the next one;
- reads the directory's manifest (`OUTPUT/run.json`: the kind of run, its
  configuration, a run id and the names of its outputs). A run resumes its
  own earlier run (same kind and configuration, when asked to resume),
  starts fresh in a directory holding no run's outputs, and otherwise
  refuses, unless told to overwrite: then the old run's outputs are deleted
  first, so nothing of it can be mistaken for the new run's. Asked to
  resume a directory that holds nothing to resume, it refuses rather than
  start from scratch unnoticed (a mistyped `--output`, say);
- trusts no path in `run.json`: each of its outputs must resolve inside
  the directory (`keras_apm.utils.files.resolve_inside`), so a crafted
  manifest cannot make `--overwrite` delete anything elsewhere;
- turns SIGTERM into an exception while the run holds the directory, so a
  terminated run unwinds like Ctrl-C: its manifest says "interrupted", its
  lock and staged files are removed.

Only the process that writes (the chief, in a multi-process run) claims.
"""

import contextlib
import errno
import json
import os
import shutil
import time
import uuid

try:
    import fcntl
except ImportError:  # Not POSIX: runs are not locked.
    fcntl = None

from keras_apm.utils.files import read_json
from keras_apm.utils.files import resolve_inside
from keras_apm.utils.files import staging_path
from keras_apm.utils.files import terminate_as_exit
from keras_apm.utils.files import write_json

MANIFEST_FILE = "run.json"
LOCK_FILE = ".lock"
MANIFEST_FORMAT = "keras_apm.run/1"

# Directories claimed by this process: a claim nested inside another claim
# of the same directory (`keras-apm demo` calling `distill`) joins it.
_HELD = {}


def _fail_unwritable(path, error):
    reason = getattr(error, "strerror", None) or str(error)
    raise ValueError(
        f"The output location {path!r} is not writable ({reason}). Choose a "
        "location you can write to."
    ) from None


def check_writable(directory):
    """Creates `directory` (and its parents) and proves writes work there.

    One file is written, flushed, renamed (the way every result is staged
    and renamed) and removed.

    Raises:
        ValueError: naming the directory, if it is a file or not writable.

    Example:
    >>> check_writable("runs/digits")  # before hours of training
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(
            f"The output location {directory!r} is a file; expected a "
            "directory."
        )
    probe = staging_path(os.path.join(directory, "write-test"))
    renamed = probe + ".renamed"
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"keras_apm write test\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(probe, renamed)
        os.remove(renamed)
    except OSError as e:
        for leftover in (probe, renamed):
            try:
                os.remove(leftover)
            except OSError:
                pass
        _fail_unwritable(directory, e)
    return directory


class OutputLock:
    """An exclusive, non-blocking `flock` on a lock file.

    The lock file holds the holder's process id (for the error message) and
    is removed on release. A process that opened the file just before it was
    removed finds, once it holds the lock, that the path is another file now,
    and tries again, so removal never lets two processes in.

    Example:
    ```python
    lock = OutputLock("run/.lock")
    lock.acquire()  # ValueError if another process holds it
    try:
        ...
    finally:
        lock.release()
    ```
    """

    def __init__(self, path):
        self.path = os.path.abspath(os.fspath(path))
        self._fd = None

    def acquire(self):
        if fcntl is None:
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                _fail_unwritable(os.path.dirname(self.path), e)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = self._holder()
                raise ValueError(
                    f"Another run{holder} is writing to "
                    f"{os.path.dirname(self.path)!r} (it holds the lock "
                    f"{self.path!r}). Wait for it to finish, or choose "
                    "another output."
                ) from None
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # Released and removed meanwhile: try again.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _holder(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                pid = int(f.read().strip())
            return f" (process {pid})"
        except (OSError, ValueError):
            return ""

    def release(self):
        if self._fd is None:
            return
        try:
            os.remove(self.path)
        except OSError:
            pass
        os.close(self._fd)  # Closing the descriptor drops the lock.
        self._fd = None

    @property
    def held(self):
        return self._fd is not None


def _jsonable(config):
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def read_manifest(directory):
    """The manifest (`run.json`) of a run directory, or None.

    An unreadable manifest reads as `{}`: a run of unknown settings.
    """
    path = os.path.join(os.fspath(directory), MANIFEST_FILE)
    if not os.path.lexists(path):
        return None
    manifest = read_json(path, default={})
    return manifest if isinstance(manifest, dict) else {}


def _differences(saved, config):
    keys = sorted(set(saved) | set(config))
    missing = "(not set)"
    return "; ".join(
        f"{k}: {saved.get(k, missing)!r} there, {config.get(k, missing)!r} now"
        for k in keys
        if saved.get(k, missing) != config.get(k, missing)
    )


class RunDirectory:
    """Claims an output directory for one run (a context manager).

    Args:
        path: the output directory (created with its parents).
        kind: the kind of run, e.g. `"distill"`.
        config: a JSON-serialisable dict of the settings that make a run
            the same run (what a resume must repeat; leave out what may
            change, like the number of epochs to reach).
        outputs: names of the entries the run writes in `path`. They are
            what "another run's files" means and what `overwrite` deletes;
            other files in `path` are left alone.
        resume: continue the directory's run if it is this run (same kind
            and `config`).
        overwrite: delete the outputs of a different run (or of the same
            run, when not resuming) and start fresh.

    Attributes:
        resuming: whether this run continues the directory's earlier run.
        run_id: the run's id (kept across resumes).

    Raises:
        ValueError: when `path` is not writable, another process holds it,
            or it holds another run's outputs and `overwrite` is False.

    Example:
    ```python
    with RunDirectory("runs/a", "distill", {"learning_rate": 1e-3},
                      outputs=("checkpoints", "student")) as run:
        train(resume=run.resuming)
    ```
    """

    def __init__(
        self, path, kind, config, outputs, resume=False, overwrite=False
    ):
        self.path = os.path.abspath(os.fspath(path))
        self.kind = str(kind)
        self.config = _jsonable(config)
        self.outputs = tuple(outputs)
        self.resume = bool(resume)
        self.overwrite = bool(overwrite)
        self.resuming = False
        self.run_id = None
        self._lock = None
        self._outer = None
        self._created_directory = False
        self._manifest = None
        self._signals = None

    # --- claiming ----------------------------------------------------
    def __enter__(self):
        key = os.path.realpath(self.path)
        outer = _HELD.get(key)
        if outer is not None:
            # Nested in this process's claim of the same directory: the
            # outer run owns it and has checked it.
            self._outer = outer
            self.run_id = outer.run_id
            self.resuming = self.resume
            return self
        self._created_directory = not os.path.exists(self.path)
        check_writable(self.path)
        # SIGTERM (a scheduler's stop, `kill`) as an exception while the
        # run holds the directory: `__exit__` then marks the manifest,
        # releases the lock, and staged writes remove their files.
        self._signals = contextlib.ExitStack()
        self._signals.enter_context(terminate_as_exit())
        try:
            self._lock = OutputLock(
                os.path.join(self.path, LOCK_FILE)
            ).acquire()
        except BaseException:
            self._signals.close()
            raise
        try:
            self._claim()
        except BaseException:
            self._lock.release()
            self._remove_if_empty()
            self._signals.close()
            raise
        _HELD[key] = self
        return self

    def _present(self, names):
        return [n for n in names if os.path.lexists(os.path.join(self.path, n))]

    def _saved_outputs(self, saved):
        """The outputs `run.json` lists, each resolved inside the directory.

        Returns `{entry: resolved path}`. Raises a ValueError naming
        `run.json` and the entry for anything that is not a path inside
        the directory: the manifest decides what `--overwrite` deletes.
        """
        source = os.path.join(self.path, MANIFEST_FILE)
        entries = saved.get("outputs") or ()
        if not isinstance(entries, (list, tuple)):
            raise ValueError(
                f"{source!r} lists its outputs as {entries!r}; expected a "
                "list of names inside the run directory. The file is "
                "damaged or was crafted; nothing was changed. Remove or "
                "repair it (or choose another output directory)."
            )
        return {
            entry: resolve_inside(
                self.path, entry, source=f"The run manifest {source!r}"
            )
            for entry in entries
        }

    def _claim(self):
        saved = read_manifest(self.path)
        targets = {n: os.path.join(self.path, n) for n in self.outputs}
        if saved:
            targets = self._saved_outputs(saved) or targets
        present = [n for n, t in targets.items() if os.path.lexists(t)]
        same = bool(saved) and (
            saved.get("kind") == self.kind and saved.get("config") == self.config
        )
        where = f"The output directory {self.path!r}"
        if present and same and self.resume:
            self.resuming = True
            self._manifest = dict(saved)
        elif present and not self.overwrite:
            found = ", ".join(present)
            if same:
                raise ValueError(
                    f"{where} holds an earlier run with the same settings "
                    f"({found}; {saved.get('status', 'unknown')}). Pass "
                    "`resume=True` (--resume) to continue it, or "
                    "`overwrite=True` (--overwrite) to delete it and start "
                    "over."
                )
            if saved is None:
                why = (
                    "written without a manifest (run.json), so it cannot be "
                    "resumed"
                )
            elif not saved:
                why = "with an unreadable manifest (run.json)"
            elif saved.get("kind") != self.kind:
                why = f"of a `{saved.get('kind')}` run, not `{self.kind}`"
            else:
                why = "with other settings: " + _differences(
                    saved.get("config") or {}, self.config
                )
            raise ValueError(
                f"{where} holds another run's files ({found}), {why}. "
                "Choose another output directory, or pass `overwrite=True` "
                "(--overwrite) to delete them and start over."
            )
        elif self.resume and not present:
            said = ""
            if saved:
                said = (
                    f" (its {MANIFEST_FILE} records a run that saved "
                    "nothing yet)"
                )
            raise ValueError(
                f"There is nothing to resume in {self.path!r}: it holds none "
                f"of a run's outputs ({', '.join(self.outputs)}){said}. Drop "
                "--resume (`resume=False`) to start a new run there, or pass "
                "the output directory of the run to continue."
            )
        else:
            # Fresh: clear what a previous run left (only with overwrite).
            # Targets are resolved inside the directory (`_saved_outputs`).
            for name in present:
                target = os.fspath(targets[name])
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                else:
                    os.remove(target)
            self._manifest = {
                "format": MANIFEST_FORMAT,
                "run_id": uuid.uuid4().hex,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        self.run_id = self._manifest["run_id"]
        self._write_manifest("running")

    def _write_manifest(self, status):
        self._manifest.update(
            kind=self.kind,
            config=self.config,
            outputs=list(self.outputs),
            status=status,
            updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        write_json(os.path.join(self.path, MANIFEST_FILE), self._manifest)

    # --- releasing ---------------------------------------------------
    def __exit__(self, exc_type, exc, tb):
        if self._outer is not None:
            return False
        try:
            if self._present(self.outputs):
                if exc_type is None:
                    status = "complete"
                elif issubclass(exc_type, (SystemExit, KeyboardInterrupt)):
                    status = "interrupted"  # SIGTERM, Ctrl-C: resumable
                else:
                    status = "failed"
                self._write_manifest(status)
            else:
                # Nothing written (e.g. a bad argument found late): leave
                # no trace, so the next run starts fresh here.
                manifest = os.path.join(self.path, MANIFEST_FILE)
                if os.path.lexists(manifest):
                    os.remove(manifest)
        except OSError:
            if exc_type is None:
                raise
        finally:
            _HELD.pop(os.path.realpath(self.path), None)
            self._lock.release()
            self._remove_if_empty()
            self._signals.close()
        return False

    def _remove_if_empty(self):
        if self._created_directory:
            try:
                os.rmdir(self.path)  # Only if empty.
            except OSError:
                pass


class OutputFile:
    """Claims one output file for one run (a context manager).

    Checks that the file's folder (created with its parents) is writable,
    locks `.NAME.lock` beside the file, and refuses an existing file unless
    `overwrite`. The file itself is written by the run, staged and renamed
    (`keras_apm.utils.files.write_json`), so with `overwrite` the old result
    stays in place until the new one replaces it.

    Example:
    ```python
    with OutputFile("fog.json", overwrite=False):
        record = evaluate(trainer, dataset)
        write_json("fog.json", record)
    ```
    """

    def __init__(self, path, overwrite=False):
        self.path = os.path.abspath(os.fspath(path))
        self.overwrite = bool(overwrite)
        self._lock = None

    def __enter__(self):
        if os.path.isdir(self.path):
            raise ValueError(
                f"The output {self.path!r} is a directory; expected a file."
            )
        directory, name = os.path.split(self.path)
        check_writable(directory)
        self._lock = OutputLock(os.path.join(directory, f".{name}.lock"))
        self._lock.acquire()
        if os.path.lexists(self.path) and not self.overwrite:
            self._lock.release()
            raise ValueError(
                f"The output {self.path!r} already exists (another run's "
                "result). Pass `overwrite=True` (--overwrite) to replace it, "
                "or choose another file."
            )
        return self

    def __exit__(self, exc_type, exc, tb):
        self._lock.release()
        return False
