"""JAX fast path of `keras_apm.backend.fused_ops`: bfloat16 products that
accumulate in float32 (JAX backend only).

Why: under `mixed_bfloat16`, `keras.ops.matmul` asks XLA for a dot with
bfloat16 operands and a bfloat16 result. XLA's CPU backend runs such a dot
in float32: it converts both operands to float32 first (JAX's half-precision
CPU dots, jax-ml/jax#7462), so a bf16 model runs at the float32 GEMM rate
plus the converts. A dot with bfloat16 operands and a float32 result
(`preferred_element_type=float32`) keeps the operands in bfloat16 and runs
at the bf16 GEMM rate (oneDNN / YNNPACK). Here `dense` (and `matmul`, the
products of the split first layers) asks for that
product, adds the bias and applies the activation in float32 (fused by XLA
into the dot's epilogue) and rounds once to bfloat16: the numbers of
Keras' `Dense` under the policy, with one rounding fewer.

The gradient is a `jax.custom_vjp` with the same form: JAX's own transpose
of a float32-result dot would multiply the float32 cotangent by the
bfloat16 weights in float32 (the slow path again); here the cotangent is
rounded to bfloat16 (the compute dtype, as in the generic path) and both
backward products are bf16 x bf16 -> float32 dots (the kernel's in a form
XLA keeps in bf16, see `_backward`).

Float32 operands and other dtypes return `None`: the generic `keras.ops`
form is already what XLA runs best.
"""

import jax
import jax.numpy as jnp

_FAST = (jnp.bfloat16,)


@jax.custom_vjp
def bf16_matmul(x, kernel):
    """`x @ kernel` of bfloat16 `x (..., in)` and `kernel (in, out)`, as a
    float32 `(..., out)` accumulated by one bf16 x bf16 -> f32 dot.

    Example:
    >>> y = bf16_matmul(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    """
    return jnp.matmul(x, kernel, preferred_element_type=jnp.float32)


def _forward(x, kernel):
    return bf16_matmul(x, kernel), (x, kernel)


def _backward(residuals, grad):
    x, kernel = residuals
    grad = grad.astype(x.dtype)
    grad_x = jnp.matmul(
        grad, kernel.T, preferred_element_type=jnp.float32
    ).astype(x.dtype)
    # Every leading axis of x is a row of the kernel's product. Contracted
    # as one (1, rows) pair of axes, not as a 2-D `x.T @ grad`: XLA's CPU
    # operand upcaster turns a bf16 dot contracting the lhs's major axis
    # into a float32 one (at 2-D only), which halves the rate (1024 x
    # 4096 x 4096 on 2 cores: 317 GFLOP/s this way, 168 as `x.T @ grad`).
    rows_x = x.reshape(1, -1, x.shape[-1])
    rows_grad = grad.reshape(1, -1, grad.shape[-1])
    grad_kernel = jax.lax.dot_general(
        rows_x, rows_grad, (((0, 1), (0, 1)), ((), ())),
        preferred_element_type=jnp.float32,
    ).astype(kernel.dtype)
    return grad_x, grad_kernel


bf16_matmul.defvjp(_forward, _backward)


def _handled(x, kernel):
    return (
        x.dtype in _FAST
        and kernel.dtype == x.dtype
        and len(kernel.shape) == 2
        and len(x.shape) >= 1
    )


def dense(x, kernel, bias=None, activation=None):
    """`activation(x @ kernel + bias)` for bfloat16 operands, else None."""
    if not _handled(x, kernel):
        return None
    y = bf16_matmul(x, kernel)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    if activation is not None:
        y = activation(y)
    return y.astype(x.dtype)


def matmul(x, kernel):
    """`x @ kernel` for bfloat16 operands (rounded once to bf16), else None."""
    if not _handled(x, kernel):
        return None
    return bf16_matmul(x, kernel).astype(x.dtype)
