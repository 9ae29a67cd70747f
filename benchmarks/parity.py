"""Numerical parity of keras_apm: converted official checkpoints vs a NumPy
forward of the spec, and the same preset across TensorFlow, JAX and PyTorch.

Prints one JSON line per (backend, variant, output) with the error relative
to the largest reference magnitude, then one per backend pair.

    python benchmarks/parity.py [--variants coco ttt] [--batch 1]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = r"""
import json, sys, numpy as np, keras, keras_apm
preset, inputs, output = sys.argv[1:]
model = keras_apm.APM.from_preset(preset)
out = model(np.load(inputs)["images"])
np.savez(output, **{k: keras.ops.convert_to_numpy(v) for k, v in out.items()})
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["coco", "ttt"])
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from official_reference import random_official_state
    from official_reference import reference_forward

    from keras_apm.convert import OFFICIAL_VARIANTS
    from keras_apm.convert import convert_official_checkpoint

    backends = ("tensorflow", "jax", "torch")
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        images = rng.random((args.batch, 448, 448, 3)).astype("float32")
        inputs = os.path.join(tmp, "inputs.npz")
        np.savez(inputs, images=images)
        for variant in args.variants:
            spec = OFFICIAL_VARIANTS[variant]
            state = random_official_state(spec["shapes"], seed=0)
            checkpoint = os.path.join(tmp, f"{variant}.npz")
            np.savez(checkpoint, **state)
            preset = os.path.join(tmp, variant)
            convert_official_checkpoint(checkpoint, variant, preset)
            ref = reference_forward(
                state, images.transpose(0, 3, 1, 2), spec["trunk_names"]
            )
            outputs = {}
            for backend in backends:
                path = os.path.join(tmp, f"{variant}-{backend}.npz")
                subprocess.run(
                    [sys.executable, "-c", WORKER, preset, inputs, path],
                    env=dict(os.environ, KERAS_BACKEND=backend),
                    check=True,
                    capture_output=True,
                )
                outputs[backend] = dict(np.load(path))
                for key, value in ref.items():
                    error = np.abs(outputs[backend][key] - value).max()
                    print(json.dumps({
                        "check": "official_reference", "variant": variant,
                        "backend": backend, "output": key,
                        "max_rel_error": float(error / np.abs(value).max()),
                    }))
            for a, b in (("tensorflow", "jax"), ("tensorflow", "torch"), ("jax", "torch")):
                for key, value in outputs[a].items():
                    error = np.abs(outputs[b][key] - value).max()
                    print(json.dumps({
                        "check": "cross_backend", "variant": variant,
                        "backends": f"{a}-{b}", "output": key,
                        "max_rel_error": float(error / np.abs(value).max()),
                    }))


if __name__ == "__main__":
    main()
