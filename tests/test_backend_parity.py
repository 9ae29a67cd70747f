"""The same preset gives the same numbers under TensorFlow, JAX and PyTorch.

Each backend runs in its own subprocess (a process has one Keras backend).
The test spawns all three, so it runs once, in the TensorFlow suite.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_apm

BACKENDS = ("tensorflow", "jax", "torch")

SCRIPT = """
import sys, numpy as np, keras, keras_apm
preset, inputs, output = sys.argv[1:]
model = keras_apm.APM.from_preset(preset)
images = np.load(inputs)["images"]
locations = np.array([[0.25, 6.5], [3, 3], [7, 0.75]], "float32")
out = {k: keras.ops.convert_to_numpy(v) for k, v in model(images).items()}
far = model.evaluate_locations(images, locations, chunk_size=2)
out.update({"at_" + k: keras.ops.convert_to_numpy(v) for k, v in far.items()})
np.savez(output, **out)
"""


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="spawns all three backends itself; runs once, in the TF suite",
)
def test_same_outputs_on_all_backends(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras_apm.APM(
        image_shape=(64, 64, 3),
        patch_size=8,
        trunk_widths=(128, 64),
        feature_dim=32,
        num_levels=2,
        global_head=True,
        global_num_heads=4,
    )
    preset = str(tmp_path / "preset")
    model.save_to_preset(preset)
    from skimage import data
    from skimage.transform import resize

    images = np.stack(
        [resize(data.astronaut(), (64, 64)), resize(data.coffee(), (64, 64))]
    ).astype("float32")
    np.savez(tmp_path / "inputs.npz", images=images)
    results = {}
    for backend in BACKENDS:
        output = str(tmp_path / f"{backend}.npz")
        env = dict(os.environ, KERAS_BACKEND=backend)
        subprocess.run(
            [sys.executable, "-c", SCRIPT, preset, str(tmp_path / "inputs.npz"), output],
            env=env,
            check=True,
            capture_output=True,
        )
        results[backend] = dict(np.load(output))
    reference = results["tensorflow"]
    assert set(reference) == {
        "features", "rgb", "levels", "global", "at_features", "at_rgb", "at_levels"
    }
    for backend in ("jax", "torch"):
        for key, value in reference.items():
            error = np.abs(results[backend][key] - value).max() / np.abs(value).max()
            assert error < 1e-5, (backend, key, error)
