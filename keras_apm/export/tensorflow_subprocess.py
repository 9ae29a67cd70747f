"""Runs exports in a TensorFlow-backend subprocess (for JAX and PyTorch).

Keras picks its backend once per process, and only the TensorFlow backend
writes a SavedModel that converts to TFLite. So under JAX and PyTorch the
parent saves the model as a preset and starts

    KERAS_BACKEND=tensorflow python -m keras_apm.export.tensorflow_subprocess \\
        --preset DIR --jobs JOBS.json [--representative-data X.npy] \\
        --error-file ERROR.json [--import MODULE ...] [--runner MODULE:NAME]

which imports the modules that define the layers of added output heads
(`APM(extra_heads=...)`; like any Keras custom layer, their classes must be
imported to rebuild the model) and hands the preset and the jobs to the job
runner: `export_preset_jobs` here (loads the preset and runs
`tensorflow_export.export_jobs`), `ttt_litert.run_ttt_jobs` for on-device
TTT files. On failure
the child writes `{"type", "message"}` to the error file, so the parent
raises a `ValueError` with the same message (other errors as RuntimeError).

The child dies with its parent: a parent killed by SIGKILL cannot clean
up, so the child (Linux: `PR_SET_PDEATHSIG`; everywhere: a thread that
watches its parent's pid) receives SIGTERM, which unwinds it (temporary
folders removed, no export written after its caller is gone). SIGTERM or
Ctrl-C on the parent kills the child and removes the parent's temporary
folder; folders and stages left by SIGKILLed processes are removed by the
next export.
"""

import argparse
import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
import threading
import time

from keras_apm.utils.files import temporary_directory
from keras_apm.utils.files import terminate_as_exit

MODULE = "keras_apm.export.tensorflow_subprocess"
RUNNER = f"{MODULE}:export_preset_jobs"
TMP_PREFIX = "keras_apm_export_"
# How often the child looks for its parent, and how long it may take to
# unwind after its parent died before it exits hard.
WATCH_INTERVAL_S = 0.5
UNWIND_GRACE_S = 30.0


def run_in_subprocess(preset_dir, jobs, representative_data=None, imports=(),
                      runner=RUNNER):
    """Runs `export_jobs` on the preset at `preset_dir` in a subprocess.

    `imports`: modules (imported in this process) that the child imports
    first, found on the same path as here. `runner` (`"module:function"`)
    is what the child calls with `(preset_dir, jobs, representative_data)`:
    `export_preset_jobs` (exports), or `keras_apm.export.ttt_litert:
    run_ttt_jobs` (on-device TTT files).

    Example:
    ```python
    run_in_subprocess("/tmp/apm_preset", [{"path": "apm.tflite",
        "format": "tflite", "quantization": None, "overwrite": False}])
    ```
    """
    import numpy as np

    with terminate_as_exit(), temporary_directory(TMP_PREFIX) as tmp:
        jobs_file = os.path.join(tmp, "jobs.json")
        error_file = os.path.join(tmp, "error.json")
        with open(jobs_file, "w", encoding="utf-8") as f:
            json.dump(jobs, f)
        command = [
            sys.executable, "-m", MODULE, "--preset", preset_dir,
            "--jobs", jobs_file, "--error-file", error_file,
            "--parent-pid", str(os.getpid()), "--runner", runner,
        ]  # fmt: skip
        folders = []
        for name in imports:
            command += ["--import", name]
            folder = _module_root(name)
            if folder not in folders:
                folders.append(folder)
        if representative_data is not None:
            data_file = os.path.join(tmp, "representative.npy")
            np.save(data_file, representative_data)
            command += ["--representative-data", data_file]
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # Graph work for the CPU; a TensorFlow that saw the GPU would try to
        # take the memory this JAX or PyTorch process holds.
        env["CUDA_VISIBLE_DEVICES"] = "-1"
        # The child imports the same keras_apm, installed or not.
        # (This file is keras_apm/export/tensorflow_subprocess.py; importing
        # keras_apm here to find it would close an import circle.)
        root = os.path.dirname(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        )
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, *folders, env.get("PYTHONPATH")) if p
        )
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode == 0:
            return
        error = None
        if os.path.isfile(error_file):
            with open(error_file, encoding="utf-8") as f:
                error = json.load(f)
    if error and error["type"] == "ValueError":
        raise ValueError(error["message"])
    if error:
        raise RuntimeError(
            "The TensorFlow export subprocess failed: "
            f"{error['type']}: {error['message']}"
        )
    tail = "\n".join(result.stderr.strip().splitlines()[-20:])
    raise RuntimeError(
        f"The TensorFlow export subprocess exited with code "
        f"{result.returncode} (a negative code is a signal, e.g. out of "
        f"memory). Its last output:\n{tail}"
    )


def _module_root(module):
    """The folder from which `import module` finds it (a `sys.path` entry)."""
    path = os.path.abspath(sys.modules[module].__file__)
    depth = module.count(".") + (os.path.basename(path) == "__init__.py")
    folder = os.path.dirname(path)
    for _ in range(depth):
        folder = os.path.dirname(folder)
    return folder


def _die_with_parent(parent_pid):
    """Makes this process get SIGTERM (and unwind) when its parent dies."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError, TypeError):
            pass  # the watcher thread below covers it.
    if os.getppid() != parent_pid:  # the parent died before prctl.
        raise SystemExit(128 + signal.SIGTERM)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(WATCH_INTERVAL_S)
        os.kill(os.getpid(), signal.SIGTERM)
        # The handler runs when the main thread returns to Python; a long
        # native call (a TFLite conversion) may delay it, but not forever.
        time.sleep(UNWIND_GRACE_S)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def export_preset_jobs(preset_dir, jobs, representative_data=None):
    """The export job runner: `export_jobs` on the preset's model."""
    from keras_apm.export.exportable import load_exportable
    from keras_apm.export.tensorflow_export import export_jobs

    export_jobs(load_exportable(preset_dir), jobs, representative_data)


def main(argv=None):
    """The child's entry point: imports, then the job runner on the jobs."""
    parser = argparse.ArgumentParser(prog=MODULE)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--representative-data", default=None)
    parser.add_argument("--error-file", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--import", dest="imports", action="append", default=[])
    parser.add_argument("--runner", default=RUNNER)
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        _die_with_parent(args.parent_pid)
    try:
        import keras
        import numpy as np

        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "Run this module with KERAS_BACKEND=tensorflow. Received "
                f"backend {keras.backend.backend()!r}."
            )
        import importlib

        for module in args.imports:
            importlib.import_module(module)
        runner_module, runner_name = args.runner.split(":")
        runner = getattr(importlib.import_module(runner_module), runner_name)
        with open(args.jobs, encoding="utf-8") as f:
            jobs = json.load(f)
        data = None
        if args.representative_data:
            data = np.load(args.representative_data)
        runner(args.preset, jobs, data)
    except Exception as e:  # handed to the parent, which raises it.
        with open(args.error_file, "w", encoding="utf-8") as f:
            json.dump({"type": type(e).__name__, "message": str(e)}, f)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
