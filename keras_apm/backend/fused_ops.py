"""The MLP's arithmetic primitives, with backend fast paths behind one door.

`PerceptionMLP` spends nearly all its time in `activation(x @ kernel + bias)`
and in the broadcast sum of the split first layer. Written with `keras.ops`,
each of those is a matmul, then a bias add, then an activation: three passes
over a `(B, L, width)` tensor, three fresh allocations. JAX and TensorFlow
graphs fuse the two elementwise passes (XLA, Grappler); the PyTorch backend
runs eagerly and does not. A backend module (`keras_apm.backend`) may name
in `fused_ops` a module of functions that return the same numbers faster,
or `None` to decline a case; the generic `keras.ops` form is used otherwise.

The PyTorch backend has one (`torch_fused_ops`): fused matmul + bias +
ReLU kernels on the CPU and in-place elementwise ops when autograd is off
(also for the int8 layers' row quantization and rescale, `quantize_rows`
and `dequantize_add_activation`). So has JAX (`jax_fused_ops`): bfloat16
products accumulated in float32, the form XLA's CPU backend runs at the
bf16 GEMM rate.

`int8_matmul` has no generic form: a backend module offers
`int8_matmul(x, kernel)` (int8 x int8 -> int32) where its int8 GEMM beats
its float one, and layers quantized by Keras multiply through it
(`keras_apm.layers.explicit_weights`); elsewhere they use the dequantized
float kernel.

Example:
>>> x = fused_ops.dense(queries, layer.kernel, layer.bias, layer.activation)
"""

import keras
from keras import ops
from keras import quantizers

from keras_apm.backend import BACKENDS
from keras_apm.backend import backend_module

_LOADED = {}


def _backend_module():
    backend = keras.backend.backend()
    if backend not in _LOADED:
        # Other backends (numpy: inference only) use the generic form.
        _LOADED[backend] = (
            backend_module().fused_ops if backend in BACKENDS else None
        )
    return _LOADED[backend]


def _apply(activation, x):
    return x if activation is None else activation(x)


def dense(x, kernel, bias=None, activation=None):
    """`activation(x @ kernel + bias)`, `x` of any rank, `bias` 1-D or None.

    `kernel` and `bias` must already be in `x`'s dtype (cast them first).
    """
    fast = _fast("dense")
    out = None if fast is None else fast(x, kernel, bias, activation)
    if out is not None:
        return out
    y = ops.matmul(x, kernel)
    if bias is not None:
        y = y + bias
    return _apply(activation, y)


def matmul(x, kernel):
    """`x @ kernel`, `x` of any rank, `kernel` 2-D in `x`'s dtype; the
    result in `x`'s dtype (a backend may accumulate in a wider one)."""
    fast = _fast("matmul")
    out = None if fast is None else fast(x, kernel)
    return ops.matmul(x, kernel) if out is None else out


def add_activation(terms, activation=None):
    """`activation(sum(terms))`, the terms broadcast against each other."""
    fast = _fast("add_activation")
    out = None if fast is None else fast(terms, activation)
    if out is not None:
        return out
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return _apply(activation, total)


def _fast(name):
    # A backend's fused-ops module offers only the entries it speeds up.
    module = _backend_module()
    return None if module is None else getattr(module, name, None)


def quantize_rows(x):
    """`(x_q, scale)`: `x` quantized per row (last axis) as Keras'
    `AbsMaxQuantizer` does, `x_q = clip(round(x * scale), -127, 127)` int8
    and `scale = 127 / (max |row| + epsilon)` `(..., 1)` in `x`'s dtype."""
    fast = _fast("quantize_rows")
    out = None if fast is None else fast(x)
    if out is not None:
        return out
    return quantizers.abs_max_quantize(x, axis=-1, value_range=(-127, 127))


def dequantize_add_activation(products, kernel_scale, bias, activation=None):
    """`activation(sum(p / s for p, s in products) / kernel_scale + bias)`.

    `products`: `(int32 product, its rows' scale)` pairs, broadcasting
    against each other; `kernel_scale` (per output) and `bias` 1-D in the
    compute dtype, which the result takes.
    """
    fast = _fast("dequantize_add_activation")
    out = None if fast is None else fast(products, kernel_scale, bias, activation)
    if out is not None:
        return out
    dtype = bias.dtype
    total = None
    for product, scale in products:
        term = ops.divide(ops.cast(product, dtype), scale)
        total = term if total is None else total + term
    total = ops.divide(total, kernel_scale)
    return add_activation([total, bias], activation)


def has_int8_matmul():
    """Whether the backend multiplies int8 by int8 faster than floats
    (`int8_matmul` then never declines a 2-D product on the CPU)."""
    return _int8_matmul() is not None


def _int8_matmul():
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        return None
    return getattr(backend_module(), "int8_matmul", None)


def int8_matmul(x, kernel):
    """`x @ kernel` of 2-D int8 tensors, exact, as an int32 tensor.

    Through the backend's int8 GEMM (`has_int8_matmul`); the generic
    `keras.ops.matmul` of int8 tensors where it declines.
    """
    op = _int8_matmul()
    out = None if op is None else op(x, kernel)
    if out is None:
        out = ops.matmul(x, kernel)
    return ops.cast(out, "int32")


def constant(array, dtype, cache):
    """`array` (NumPy) as a backend tensor of `dtype`.

    `cache` is a dict the caller owns (one per array): a backend that keeps
    tensors on a device between calls stores the converted tensor there, so
    a constant is copied to the device once, not on every call.
    """
    fast = _fast("constant")
    out = None if fast is None else fast(array, dtype, cache)
    if out is not None:
        return out
    return ops.cast(ops.convert_to_tensor(array), dtype)
