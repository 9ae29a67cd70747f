"""The perception examples in `examples/` run offline and write their files.

Each example is a short script over `keras_apm.visualize`, which
tests/test_visualize.py covers on every backend; here each script runs end
to end once, with 2 distillation steps, on scikit-image's bundled photos.
They take 15-35 s each on 2 CPU cores, so they run once, in the PyTorch
suite (the fastest here for these small eager models), to keep CI short.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="run once, in the PyTorch suite (see the module docstring)",
)


@pytest.mark.parametrize(
    "script,args,written",
    [
        ("overfit_one_image.py", ["--every", "1"], ["out.png", "out.gif"]),
        ("islands.py", [], ["out.png"]),
        ("interpolate.py", ["--frames", "3"], ["out.png", "out.gif"]),
        ("any_resolution.py", ["--factor", "2"], ["out.png"]),
    ],
)
def test_example_writes_its_pictures(tmp_path, script, args, written):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, script), "--steps", "2",
         "--output", str(tmp_path / "out.png"), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == sorted(written)
    for name in written:
        with Image.open(tmp_path / name) as image:
            pixels = np.asarray(image.convert("RGB"))
        # A real picture: a readable size, and not one flat colour.
        assert min(pixels.shape[:2]) >= 200
        assert pixels.std() > 10
