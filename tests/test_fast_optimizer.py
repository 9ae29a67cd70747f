"""`backend_module().fast_optimizer`: a faster update, the same math.

On PyTorch, Keras' `Adam` is switched to `torch._fused_adam_`
(`keras_apm.backend.torch_adam`); the weights after several steps must be
Keras' own, with a learning-rate schedule, and weight decay done by Keras.
"""

import keras
import numpy as np
import pytest

from keras_apm.backend import backend_module

TORCH = keras.backend.backend() == "torch"


def _run(optimizer, fast, steps=6):
    rng = np.random.default_rng(0)
    shapes = [(7, 5), (5,), (3, 4, 2)]
    variables = [
        keras.Variable(rng.standard_normal(s).astype("float32")) for s in shapes
    ]
    if fast:
        optimizer = backend_module().fast_optimizer(optimizer)
    optimizer.build(variables)
    for _ in range(steps):
        scale = 10.0 ** rng.integers(-6, 1)
        grads = [
            # Views as autograd hands them back (PyTorch: strided and
            # broadcast, not dense): a transpose, a broadcast row, a dense one.
            keras.ops.transpose(keras.ops.convert_to_tensor(
                rng.standard_normal((5, 7)).astype("float32") * scale
            )),
            keras.ops.broadcast_to(keras.ops.convert_to_tensor(
                np.float32(rng.standard_normal() * scale)
            ), (5,)),
            keras.ops.convert_to_tensor(
                rng.standard_normal((3, 4, 2)).astype("float32") * scale
            ),
        ]
        optimizer.apply(grads, variables)
    return [keras.ops.convert_to_numpy(v) for v in variables], optimizer


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.Adam(1e-2),
        lambda: keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(3e-2, 10), beta_2=0.9,
            epsilon=1e-3, weight_decay=0.1,
        ),
    ],
    ids=["constant", "schedule_decay"],
)
def test_same_weights_as_keras_adam(make):
    expected, _ = _run(make(), fast=False)
    got, optimizer = _run(make(), fast=True)
    assert ("_parallel_update_step" in vars(optimizer)) == TORCH
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_other_optimizers_are_left_alone():
    class MyAdam(keras.optimizers.Adam):
        pass

    for optimizer in (
        MyAdam(1e-3),
        keras.optimizers.Adam(1e-3, amsgrad=True),
        keras.optimizers.SGD(1e-3),
    ):
        assert backend_module().fast_optimizer(optimizer) is optimizer
        assert "_parallel_update_step" not in vars(optimizer)


@pytest.mark.skipif(not TORCH, reason="the fused update is PyTorch's")
def test_distiller_and_loss_scaling_use_it():
    import keras_apm

    student = keras_apm.APM(
        image_shape=(16, 16, 3), patch_size=4, feature_dim=8,
        trunk_widths=(16,), dtype="mixed_float16",
    )
    distiller = keras_apm.APMDistiller(student)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    inner = distiller.optimizer.inner_optimizer
    assert "_parallel_update_step" in vars(inner)
