"""Keras' own quantization (`model.quantize`) on APM layers.

APM layers compute from explicit weights (`keras_apm.layers.explicit_weights`).
A `Dense` quantized to int8 multiplies int8 activations (quantized per row)
by its int8 kernel where the backend has an int8 GEMM (PyTorch, JAX), as
Keras' own int8 `Dense` does; elsewhere (TensorFlow, float8, the attention
pool's `EinsumDense`) a quantized layer hands its dequantized kernel.
"""

import gc
import os

import keras
import numpy as np
import pytest

import keras_apm
from keras_apm.backend import backend_module
from keras_apm.backend import fused_ops
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


# Keras' per-layer `gc.collect()` while quantizing (tests/conftest.py).
pytestmark = [pytestmark, pytest.mark.usefixtures("no_gc_per_layer")]


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")


@pytest.fixture
def int8_calls(monkeypatch):
    """Counts the backend's int8 GEMM calls (None: the backend has none)."""
    if not fused_ops.has_int8_matmul():
        return None
    module, calls = backend_module(), []
    op = module.int8_matmul

    def spy(x, kernel):
        calls.append(tuple(x.shape))
        return op(x, kernel)

    monkeypatch.setattr(module, "int8_matmul", spy)
    return calls


def _int8_reference(parts, kernel_q, kernel_scale, bias):
    """NumPy: each part quantized per row as Keras' `AbsMaxQuantizer`
    does, int8 x int8 summed exactly (int64), rescaled, bias, ReLU."""
    total, start = 0.0, 0
    for x in parts:
        x = x.astype("float64")
        scale = 127.0 / (np.abs(x).max(-1, keepdims=True) + keras.config.epsilon())
        x_q = np.clip(np.round(x * scale), -127, 127).astype("int64")
        width = x.shape[-1]
        product = x_q @ kernel_q[start:start + width].astype("int64")
        total = total + product / scale
        start += width
    return np.maximum(total / kernel_scale + bias, 0.0)


@pytest.mark.parametrize("mode", ["int8", "float8"])
def test_quantized_apm_matches_float(images, mode, int8_calls):
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
    if int8_calls is not None:
        # PyTorch and JAX run the MLP's int8 layers through int8 GEMMs.
        assert bool(int8_calls) == (mode == "int8"), int8_calls


def test_int8_dense_math_matches_numpy(int8_calls):
    """`dense` and `split_dense` of an int8 layer: on the int8 GEMM backends
    the NumPy int8 math (so PyTorch and JAX agree to float rounding), on
    TensorFlow the dequantized kernel's product; within activation
    rounding of each other everywhere."""
    rng = np.random.default_rng(1)
    layer = keras.layers.Dense(24, activation="relu")
    layer.build((None, 20))
    layer.kernel.assign(rng.normal(size=(20, 24)).astype("float32"))
    layer.bias.assign(rng.normal(size=(24,)).astype("float32"))
    layer.quantize("int8")
    kernel_q = keras.ops.convert_to_numpy(layer._kernel)
    scale = keras.ops.convert_to_numpy(layer.kernel_scale).astype("float64")
    bias = keras.ops.convert_to_numpy(layer.bias).astype("float64")
    weights = explicit_weights.dense_weights(layer)
    trigger = rng.normal(size=(2, 1, 12)).astype("float32")
    codes = (3 * rng.random((5, 8))).astype("float32")
    queries = np.concatenate(
        [np.broadcast_to(trigger, (2, 5, 12)), np.broadcast_to(codes, (2, 5, 8))],
        axis=-1,
    )
    relu = keras.activations.relu
    got = {
        "dense": explicit_weights.dense(weights, keras.ops.array(queries), relu),
        "split": explicit_weights.split_dense(
            weights, [keras.ops.array(trigger), keras.ops.array(codes)], relu
        ),
    }
    got = {k: keras.ops.convert_to_numpy(v) for k, v in got.items()}
    int8 = {
        "dense": _int8_reference([queries], kernel_q, scale, bias),
        "split": _int8_reference([trigger, codes], kernel_q, scale, bias),
    }
    dequantized = np.maximum(queries @ (kernel_q / scale) + bias, 0.0)
    for name in got:
        assert got[name].shape == (2, 5, 24), name
        expected = dequantized if int8_calls is None else int8[name]
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-4)
        # Activation rounding (half a step of 1/127 of the row's range
        # per input): within 0.07 of the int8 math here, outputs up to 17.
        np.testing.assert_allclose(got[name], int8[name], rtol=0, atol=0.1)
        assert not np.allclose(int8[name], dequantized, atol=1e-3)
    if int8_calls is not None:
        # One GEMM for the queries, one per part of the split form.
        assert int8_calls == [(10, 20), (2, 12), (5, 8)], int8_calls
        # Keras' own int8 call computes the same (the queries as rows).
        keras_call = keras.ops.convert_to_numpy(layer(queries))
        np.testing.assert_allclose(keras_call, int8["dense"], rtol=1e-5, atol=1e-4)
    else:
        assert "kernel" in weights


def test_int8_fast_paths_equal_keras_ops():
    """`fused_ops.quantize_rows` and `dequantize_add_activation` give the
    numbers of their `keras.ops` forms (PyTorch has fast paths)."""
    from keras import ops
    from keras import quantizers

    rng = np.random.default_rng(2)
    x = ops.array(rng.normal(size=(3, 4, 40)).astype("float32"))
    got_q, got_scale = fused_ops.quantize_rows(x)
    want_q, want_scale = quantizers.abs_max_quantize(x, axis=-1)
    assert keras.backend.standardize_dtype(got_q.dtype) == "int8"
    np.testing.assert_array_equal(
        ops.convert_to_numpy(got_q), ops.convert_to_numpy(want_q)
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(got_scale), ops.convert_to_numpy(want_scale)
    )
    first = ops.array(rng.integers(-9999, 9999, (2, 1, 6)).astype("int32"))
    second = ops.array(rng.integers(-9999, 9999, (1, 5, 6)).astype("int32"))
    scales = [ops.array(rng.random(s).astype("float32") + 0.5)
              for s in ((2, 1, 1), (1, 5, 1))]
    kernel_scale = ops.array(rng.random(6).astype("float32") + 0.5)
    bias = ops.array(rng.normal(size=6).astype("float32"))
    got = fused_ops.dequantize_add_activation(
        [(first, scales[0]), (second, scales[1])], kernel_scale, bias,
        keras.activations.relu,
    )
    total = (
        ops.cast(first, "float32") / scales[0]
        + ops.cast(second, "float32") / scales[1]
    )
    want = ops.relu(total / kernel_scale + bias)
    assert tuple(got.shape) == (2, 5, 6)
    np.testing.assert_array_equal(ops.convert_to_numpy(got), ops.convert_to_numpy(want))


def test_quantized_student_does_not_train():
    keras.utils.set_random_seed(0)
    model = keras_apm.APM(**TINY)
    model.field.mlp.trunk[0].quantize("int8")
    with pytest.raises(ValueError, match="Test-time training trains float"):
        keras_apm.BatchedTTT(model, steps=1, optimizer=keras.optimizers.SGD())
    with pytest.raises(ValueError, match="Distillation trains float"):
        keras_apm.APMDistiller(model, grid_weight=1.0)


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
