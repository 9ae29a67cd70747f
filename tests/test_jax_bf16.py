"""JAX under `mixed_bfloat16`: bf16 products accumulated in float32
(`keras_apm.backend.jax_fused_ops`, issue 27).

XLA's CPU backend runs a bf16-result dot in float32 (converting both
operands first); the fast path asks for bf16 x bf16 -> f32 dots instead,
forward and backward, with the numbers of the generic path.
"""

import keras
import numpy as np
import pytest

import keras_apm
from keras_apm.backend import fused_ops

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="the fast path is JAX's"
)


def _bf16_dots(jaxpr):
    """(bf16 x bf16 -> f32 dots, bf16 x bf16 -> bf16 dots) in a jaxpr,
    sub-jaxprs (custom_vjp, pjit) included."""
    import jax.numpy as jnp

    fast = slow = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            ins = {v.aval.dtype for v in eqn.invars}
            if ins == {jnp.dtype(jnp.bfloat16)}:
                out = eqn.outvars[0].aval.dtype
                fast += out == jnp.float32
                slow += out == jnp.bfloat16
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                f, s = _bf16_dots(inner)
                fast, slow = fast + f, slow + s
    return fast, slow


def test_bf16_dense_matches_float32_with_gradients(rng):
    import jax
    import jax.numpy as jnp

    x = rng.standard_normal((2, 7, 32)).astype("float32")
    kernel = rng.standard_normal((32, 16)).astype("float32") / 6
    bias = rng.standard_normal((16,)).astype("float32")
    weight = rng.standard_normal((2, 7, 16)).astype("float32")
    relu = keras.activations.relu

    def loss(dtype, x, kernel, bias):
        args = [jnp.asarray(a, dtype) for a in (x, kernel, bias)]
        y = fused_ops.dense(*args, relu)
        assert y.dtype == dtype
        return jnp.sum(y.astype(jnp.float32) * weight)

    grad = jax.value_and_grad(loss, argnums=(1, 2, 3))
    ref_loss, ref_grads = grad(jnp.float32, x, kernel, bias)
    got_loss, got_grads = jax.jit(grad, static_argnums=0)(
        jnp.bfloat16, x, kernel, bias
    )
    np.testing.assert_allclose(got_loss, ref_loss, rtol=2e-2)
    for got, ref in zip(got_grads, ref_grads):
        assert got.dtype == jnp.float32  # d/d(float32 argument)
        scale = np.abs(ref).max()
        np.testing.assert_allclose(got, ref, atol=2e-2 * scale)

    # Forward and backward products are bf16 x bf16 -> f32 dots.
    jaxpr = jax.make_jaxpr(grad, static_argnums=0)(
        jnp.bfloat16, x, kernel, bias
    )
    assert _bf16_dots(jaxpr.jaxpr) == (3, 0)


def test_mixed_bfloat16_apm_gradient_uses_bf16_dots(rng):
    import jax

    keras.utils.set_random_seed(3)
    model = keras_apm.APM(
        image_shape=(16, 16, 3), patch_size=4, trunk_widths=(32, 32, 16),
        feature_dim=8, rgb_head=False, dtype="mixed_bfloat16",
    )
    images = rng.random((1, 16, 16, 3)).astype("float32")
    trainable = [v.value for v in model.trainable_variables]
    fixed = [v.value for v in model.non_trainable_variables]

    def loss(trainable):
        out, _ = model.stateless_call(trainable, fixed, images)
        return keras.ops.mean(keras.ops.cast(out["features"], "float32") ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss))(trainable)
    fast, slow = _bf16_dots(jaxpr.jaxpr)
    # The trunk's later layers and the feature head: 3 dots each (forward,
    # two backward); only the split first layer keeps Keras' matmuls.
    assert fast >= 9 and fast > slow, (fast, slow)
