"""Issue 15: nothing lost, nothing left behind, nothing silently wrong.

Real processes are killed (SIGKILL, SIGTERM) in the middle of writes and
exports; presets are saved onto a full disk and by two processes at once;
broken presets must fail naming the file.
"""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import keras
import numpy as np
import pytest

import keras_apm
from keras_apm.utils import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, **extra)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # zombies are dead.
    except OSError:
        return False


def _processes_with(text):
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry))
    return pids


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


# --- killed writers leave nothing that lasts ---------------------------------


def test_a_killed_writers_stage_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "apm.tflite"
    writer = textwrap.dedent(
        f"""
        import time
        from keras_apm.utils.files import atomic_write
        def write(staged):
            with open(staged, "wb") as f:
                f.write(b"half")
            print("writing", flush=True)
            time.sleep(60)
        atomic_write({str(target)!r}, write)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", writer], env=_env(), stdout=subprocess.PIPE
    )
    assert process.stdout.readline().strip() == b"writing"
    process.kill()
    process.wait()
    stale = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert len(stale) == 1 and str(process.pid) in stale[0]
    # A live writer's stage (this process's) must survive the cleanup.
    live = files.staging_path(target)
    open(live, "wb").close()
    files.write_json(tmp_path / "other.json", {})  # another target: untouched
    assert len(os.listdir(tmp_path)) == 3
    files.atomic_write(target, lambda staged: open(staged, "wb").close())
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["apm.tflite", "other.json", os.path.basename(live)]
    )


@pytest.mark.skipif(
    keras.backend.backend() != "jax" or not sys.platform.startswith("linux"),
    reason="the export subprocess runs under JAX and torch (same code); "
    "one backend is enough; reads /proc",
)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_export_stops_its_subprocess_and_cleans_up(tmp_path, sig):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(
        f"""
        import numpy as np, keras_apm
        model = keras_apm.APM(image_shape=(16, 16, 3), patch_size=4,
                              trunk_widths=(16,), feature_dim=8)
        keras_apm.export(model, {str(out / "apm.tflite")!r}, format="tflite")
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        env=_env(TMPDIR=str(tmp), KERAS_BACKEND="jax"),
        stderr=subprocess.DEVNULL,
    )
    try:
        children = []
        assert _wait(
            lambda: children.extend(
                _processes_with(f"--jobs {tmp}")
            ) or children,
            120,
        ), "the TensorFlow subprocess never started"
        os.kill(parent.pid, sig)
        parent.wait(timeout=60)
        # The child goes with its parent, before it can write the export.
        assert _wait(lambda: not any(map(_alive, children)), 60)
        assert not (out / "apm.tflite").exists()
        if sig == signal.SIGTERM:
            # A terminated parent unwinds: its temporary folder is gone.
            assert os.listdir(tmp) == []
        # Whatever a SIGKILLed parent left is removed by the next export.
        old, tempfile.tempdir = tempfile.tempdir, str(tmp)
        try:
            with files.temporary_directory("keras_apm_export_") as fresh:
                assert os.listdir(tmp) == [os.path.basename(fresh)]
        finally:
            tempfile.tempdir = old
        assert os.listdir(tmp) == []
        assert os.listdir(out) == []
    finally:
        if parent.poll() is None:
            parent.kill()
