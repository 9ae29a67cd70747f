"""A run owns its output: manifests, locks and write checks
(`keras_apm.utils.run_directory`), and the hyper-parameter checks."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from keras_apm.utils.validation import check_number
from keras_apm.utils.run_directory import LOCK_FILE
from keras_apm.utils.run_directory import MANIFEST_FILE
from keras_apm.utils.run_directory import OutputFile
from keras_apm.utils.run_directory import OutputLock
from keras_apm.utils.run_directory import RunDirectory
from keras_apm.utils.run_directory import check_writable

OUTPUTS = ("checkpoints", "student", "metrics.json")


@contextlib.contextmanager
def read_only_directory(path):
    """`path` as a directory nobody can write to, for the `with` block.

    `chmod` does not stop root, so as root a read-only tmpfs is mounted on
    it (and unmounted after); where that is not allowed, the test skips.
    """
    path = str(path)
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        os.chmod(path, 0o500)
        try:
            yield path
        finally:
            os.chmod(path, 0o700)
        return
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", path],
        capture_output=True, text=True,
    )
    if mount.returncode != 0:
        pytest.skip(
            "Running as root, where chmod does not stop writes, and a "
            f"read-only tmpfs cannot be mounted: {mount.stderr.strip()}"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=True)


def claim(path, config=None, kind="distill", **kwargs):
    return RunDirectory(path, kind, config or {"lr": 1e-3}, OUTPUTS, **kwargs)


def write_outputs(path, epoch=1):
    os.makedirs(os.path.join(path, "checkpoints", f"epoch_{epoch:05d}"))
    with open(os.path.join(path, "metrics.json"), "w") as f:
        json.dump({"epoch": epoch}, f)


def manifest(path):
    with open(os.path.join(path, MANIFEST_FILE)) as f:
        return json.load(f)


def test_fresh_run_writes_a_manifest_and_holds_the_lock(tmp_path):
    out = str(tmp_path / "a" / "run")  # parents created
    with claim(out, {"lr": 1e-3, "widths": (8, 4)}) as run:
        assert not run.resuming and len(run.run_id) == 32
        assert os.path.isfile(os.path.join(out, LOCK_FILE))
        saved = manifest(out)
        assert saved["status"] == "running" and saved["kind"] == "distill"
        assert saved["config"] == {"lr": 1e-3, "widths": [8, 4]}
        write_outputs(out)
    saved = manifest(out)
    assert saved["status"] == "complete" and saved["run_id"] == run.run_id
    assert saved["outputs"] == list(OUTPUTS)
    assert not os.path.exists(os.path.join(out, LOCK_FILE))


def test_a_run_resumes_only_its_own_run(tmp_path):
    out = str(tmp_path / "run")
    with claim(out) as first:
        write_outputs(out)
    # The same settings: resumed with --resume, refused without.
    with claim(out, resume=True) as again:
        assert again.resuming and again.run_id == first.run_id
    with pytest.raises(ValueError, match="same settings.*--resume"):
        claim(out).__enter__()
    # Other settings or another kind: refused, even with --resume, naming
    # what differs and the way out.
    with pytest.raises(ValueError, match=r"lr: 0.001 there, 0.003 now.*--overwrite"):
        claim(out, {"lr": 3e-3}, resume=True).__enter__()
    with pytest.raises(ValueError, match="`distill` run, not `demo`"):
        claim(out, kind="demo").__enter__()
    assert manifest(out)["run_id"] == first.run_id  # untouched
    assert os.listdir(os.path.join(out, "checkpoints")) == ["epoch_00001"]
    # --overwrite deletes the old run's outputs first, and only those.
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("mine")
    with claim(out, {"lr": 3e-3}, overwrite=True) as new:
        assert not new.resuming and new.run_id != first.run_id
        assert sorted(os.listdir(out)) == [LOCK_FILE, "notes.txt", MANIFEST_FILE]
    # A run that wrote nothing leaves nothing (not even its manifest).
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_files_without_a_manifest_are_another_runs(tmp_path):
    out = str(tmp_path / "run")
    write_outputs(out, epoch=8)  # an older keras_apm's run
    for kwargs in ({}, {"resume": True}):
        with pytest.raises(ValueError, match="without a manifest"):
            claim(out, **kwargs).__enter__()
    with claim(out, overwrite=True):
        assert not os.path.exists(os.path.join(out, "checkpoints"))
    # Unrelated files do not make a run.
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("x")
    with claim(str(other)) as run:
        assert not run.resuming


def test_a_nested_claim_joins_the_outer_one(tmp_path):
    out = str(tmp_path / "run")
    with claim(out, kind="demo") as outer:
        with claim(out, {"other": 1}, resume=True) as inner:
            assert inner.run_id == outer.run_id and inner.resuming
        assert os.path.isfile(os.path.join(out, LOCK_FILE))  # still held
        write_outputs(out)
    assert manifest(out)["kind"] == "demo"


# Another process holding the lock the way a run does (flock on
# OUTPUT/.lock, its pid inside), without importing Keras (seconds).
HOLD = textwrap.dedent(
    """
    import fcntl, os, sys, time
    os.makedirs(sys.argv[1], exist_ok=True)
    fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, str(os.getpid()).encode())
    print("held", flush=True)
    time.sleep(60)
    """
)


def test_two_runs_never_share_a_directory(tmp_path):
    out = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, out], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"process {holder.pid}"):
            claim(out).__enter__()
    finally:
        holder.kill()
        holder.wait()
    # The killed run's lock file is still there, but its lock died with it.
    assert os.path.isfile(os.path.join(out, LOCK_FILE))
    with claim(out) as run:
        assert not run.resuming


def test_lock_in_one_process_blocks_a_second_claim(tmp_path):
    lock = OutputLock(tmp_path / ".lock").acquire()
    try:
        with pytest.raises(ValueError, match="Another run"):
            OutputLock(tmp_path / ".lock").acquire()
    finally:
        lock.release()
    OutputLock(tmp_path / ".lock").acquire().release()


def test_read_only_locations_are_refused_before_work(tmp_path):
    with read_only_directory(tmp_path / "ro") as ro:
        for target in (ro, os.path.join(ro, "sub", "run")):
            with pytest.raises(ValueError, match="not writable"):
                check_writable(target)
            with pytest.raises(ValueError, match="not writable"):
                claim(target).__enter__()
        with pytest.raises(ValueError, match="not writable"):
            OutputFile(os.path.join(ro, "result.json")).__enter__()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_writable(tmp_path / "file")


def test_output_file_refuses_another_runs_result(tmp_path):
    out = tmp_path / "new" / "result.json"
    with OutputFile(out):
        assert os.path.isfile(tmp_path / "new" / ".result.json.lock")
        with pytest.raises(ValueError, match="Another run"):
            OutputFile(out).__enter__()
        out.write_text("{}")
    assert sorted(os.listdir(tmp_path / "new")) == ["result.json"]
    with pytest.raises(ValueError, match="already exists.*--overwrite"):
        OutputFile(out).__enter__()
    with OutputFile(out, overwrite=True):
        pass
    with pytest.raises(ValueError, match="is a directory"):
        OutputFile(tmp_path).__enter__()


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (float("nan"), dict(low=0, low_open=True), "a finite number > 0, got nan"),
        (-1.0, dict(low=0, low_open=True), "a finite number > 0, got -1.0"),
        (float("inf"), {}, "a finite number, got inf"),
        (0, dict(low=1, integer=True), "an int >= 1, got 0"),
        (2.0, dict(low=1, integer=True), "an int >= 1, got 2.0"),
        (True, dict(integer=True), "an int, got True"),
        (6, dict(low=1, high=5, integer=True), r"an int in \[1, 5\], got 6"),
        ("1e-3", {}, "a finite number, got '1e-3'"),
    ],
)
def test_check_number_refuses(value, kwargs, message):
    with pytest.raises(ValueError, match=f"--x must be {message}"):
        check_number(value, "--x", **kwargs)


def test_check_number_passes():
    assert check_number(3, "x", low=1, integer=True) == 3
    assert check_number(1e30, "x", low=0, low_open=True) == 1e30
    assert check_number(None, "x", allow_none=True) is None


# --- A crafted run.json, --resume of nothing, SIGTERM (issue 22). -----------


def craft_manifest(out, entries, config=None):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MANIFEST_FILE), "w") as f:
        json.dump(
            {"kind": "distill", "config": config or {"lr": 9.0},
             "outputs": entries, "run_id": "x", "status": "complete"},
            f,
        )


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "not-a-list"])
def test_a_crafted_manifest_never_reaches_outside(tmp_path, how):
    # run.json decides what --overwrite deletes: it used to delete a folder
    # outside the run directory named by `..` or an absolute path.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    out = str(tmp_path / "runs" / "run")
    os.makedirs(out)
    entry = {
        "dotdot": "../../victim",
        "absolute": str(victim),
        "symlink": "checkpoints",
        "not-a-list": "../../victim",
    }[how]
    if how == "symlink":
        os.symlink(victim, os.path.join(out, "checkpoints"))
    craft_manifest(out, entry if how == "not-a-list" else ["student", entry])
    for kwargs in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(ValueError) as error:
            claim(out, **kwargs).__enter__()
        message = str(error.value)
        assert os.path.join(out, MANIFEST_FILE) in message
        assert repr(entry) in message
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not os.path.exists(os.path.join(out, LOCK_FILE))


def test_manifest_entries_inside_the_directory_are_deleted(tmp_path):
    out = str(tmp_path / "run")
    write_outputs(out)
    craft_manifest(out, ["checkpoints/../metrics.json", "checkpoints"])
    with claim(out, overwrite=True) as run:
        assert not run.resuming
        assert sorted(os.listdir(out)) == [LOCK_FILE, MANIFEST_FILE]


@pytest.mark.parametrize("exists", [False, True])
def test_resume_with_nothing_to_resume_is_refused(tmp_path, exists):
    # It used to start from scratch without a word (a mistyped --output).
    out = tmp_path / "run"
    if exists:
        out.mkdir()
    with pytest.raises(ValueError, match="nothing to resume in .*--resume"):
        claim(str(out), resume=True).__enter__()
    assert out.exists() == exists and (not exists or not os.listdir(out))
    # A run killed before it saved anything: its manifest alone.
    craft_manifest(str(out), list(OUTPUTS), config={"lr": 1e-3})
    with pytest.raises(ValueError, match="saved nothing yet"):
        claim(str(out), resume=True).__enter__()


# A run that is terminated in the middle of a staged write.
TERMINATED = textwrap.dedent(
    """
    import os, sys, time
    from keras_apm.utils.files import atomic_write
    from keras_apm.utils.run_directory import RunDirectory

    out = sys.argv[1]
    with RunDirectory(out, "distill", {"lr": 1e-3},
                      outputs=("checkpoints", "student")) as run:
        os.makedirs(os.path.join(out, "checkpoints"))

        def write(staged):
            os.makedirs(staged)
            print("writing", flush=True)
            time.sleep(60)

        atomic_write(os.path.join(out, "student"), write)
    """
)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="backend-free; runs once, in the JAX suite (imports Keras: ~8 s)",
)
def test_sigterm_marks_the_run_and_releases_it(tmp_path):
    # SIGTERM used to leave run.json saying "running", the lock file and
    # the staged student behind.
    import signal

    out = str(tmp_path / "run")
    run = subprocess.Popen(
        [sys.executable, "-c", TERMINATED, out], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert run.stdout.readline().strip() == "writing", run.stderr.read()
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert sorted(os.listdir(out)) == ["checkpoints", MANIFEST_FILE]
    assert manifest(out)["status"] == "interrupted"
    with claim(out, {"lr": 1e-3}, resume=True) as again:
        assert again.resuming
