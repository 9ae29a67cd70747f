"""Keras' own quantization (`model.quantize`) on APM layers.

APM layers compute from explicit weights (`keras_apm.layers.explicit_weights`);
a layer quantized by Keras hands them its dequantized kernel, so a quantized
APM runs the same math as a float one, on every backend.
"""

import os

import keras
import numpy as np
import pytest

import keras_apm
from keras_apm.layers import explicit_weights

# `Model.quantize` warns once per layer it has no quantizer for (Dropout,
# Softmax, ...): Keras' own noise, not the APM's.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Layer .* does not have a `quantize` method"
)

TINY = dict(
    image_shape=(16, 16, 3),
    patch_size=4,
    trunk_widths=(32,),
    feature_dim=16,
    rgb_widths=(8,),
    global_head=True,
    global_num_heads=2,
)


def _cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _outputs(model, images):
    return {
        k: keras.ops.convert_to_numpy(v).astype("float32")
        for k, v in model(images).items()
    }


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")


@pytest.mark.parametrize("mode", ["int8", "float8"])
def test_quantized_apm_matches_float(images, mode):
    keras.utils.set_random_seed(0)
    model = keras_apm.APM(**TINY)
    expected = _outputs(model, images)
    model.quantize(mode)
    quantized = [
        layer.path
        for layer in model._flatten_layers()
        if getattr(layer, "quantization_mode", None) == mode
    ]
    # The perception MLP's Dense layers and the attention pool's projections.
    assert any("attention" in path for path in quantized), quantized
    assert len(quantized) >= 5, quantized
    got = _outputs(model, images)
    for name in ("features", "rgb", "global"):
        assert _cosine(got[name], expected[name]) >= 0.99, name
    # Rounding reaches the outputs: the quantized weights are the ones used.
    assert not np.allclose(got["features"], expected["features"], atol=1e-7)


def test_int8_apm_saves_and_loads(images, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras_apm.APM(**TINY)
    model.quantize("int8")
    expected = _outputs(model, images)
    path = os.path.join(tmp_path, "apm_int8.keras")
    model.save(path)
    revived = keras.saving.load_model(path)
    trunk = revived.field.mlp.trunk[0]
    assert trunk.quantization_mode == "int8"
    assert keras.backend.standardize_dtype(trunk._kernel.dtype) == "int8"
    got = _outputs(revived, images)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-6)


def test_unsupported_quantization_mode_is_named():
    dense = keras.layers.Dense(8, name="trunk_0")
    dense.build((None, 16))
    dense.quantize("int4")
    with pytest.raises(ValueError, match="'int8' and 'float8'"):
        explicit_weights.dense_weights(dense)
