"""Runs exports in a TensorFlow-backend subprocess (for JAX and PyTorch).

Keras picks its backend once per process, and only the TensorFlow backend
writes a SavedModel that converts to TFLite. So under JAX and PyTorch the
parent saves the model as a preset and starts

    KERAS_BACKEND=tensorflow python -m keras_apm.export.tensorflow_subprocess \\
        --preset DIR --jobs JOBS.json [--representative-data X.npy] \\
        --error-file ERROR.json

which loads the preset and runs `tensorflow_export.export_jobs`. On failure
the child writes `{"type", "message"}` to the error file, so the parent
raises a `ValueError` with the same message (other errors as RuntimeError).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

MODULE = "keras_apm.export.tensorflow_subprocess"


def run_in_subprocess(preset_dir, jobs, representative_data=None):
    """Runs `export_jobs` on the preset at `preset_dir` in a subprocess.

    Example:
    ```python
    run_in_subprocess("/tmp/apm_preset", [{"path": "apm.tflite",
        "format": "tflite", "quantization": None, "overwrite": False}])
    ```
    """
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="keras_apm_export_") as tmp:
        jobs_file = os.path.join(tmp, "jobs.json")
        error_file = os.path.join(tmp, "error.json")
        with open(jobs_file, "w", encoding="utf-8") as f:
            json.dump(jobs, f)
        command = [
            sys.executable, "-m", MODULE, "--preset", preset_dir,
            "--jobs", jobs_file, "--error-file", error_file,
        ]  # fmt: skip
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
            p for p in (root, env.get("PYTHONPATH")) if p
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog=MODULE)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--representative-data", default=None)
    parser.add_argument("--error-file", required=True)
    args = parser.parse_args(argv)
    try:
        import keras
        import numpy as np

        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "Run this module with KERAS_BACKEND=tensorflow. Received "
                f"backend {keras.backend.backend()!r}."
            )
        from keras_apm.export.tensorflow_export import export_jobs
        from keras_apm.models.apm.apm_backbone import APM

        with open(args.jobs, encoding="utf-8") as f:
            jobs = json.load(f)
        data = None
        if args.representative_data:
            data = np.load(args.representative_data)
        export_jobs(APM.from_preset(args.preset), jobs, data)
    except Exception as e:  # handed to the parent, which raises it.
        with open(args.error_file, "w", encoding="utf-8") as f:
            json.dump({"type": type(e).__name__, "message": str(e)}, f)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
