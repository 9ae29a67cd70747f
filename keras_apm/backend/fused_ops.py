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
ReLU kernels on the CPU and in-place elementwise ops when autograd is off.
So has JAX (`jax_fused_ops`): bfloat16 products accumulated in float32, the
form XLA's CPU backend runs at the bf16 GEMM rate.

Example:
>>> x = fused_ops.dense(queries, layer.kernel, layer.bias, layer.activation)
"""

import keras
from keras import ops

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
    module = _backend_module()
    if module is not None:
        out = module.dense(x, kernel, bias, activation)
        if out is not None:
            return out
    y = ops.matmul(x, kernel)
    if bias is not None:
        y = y + bias
    return _apply(activation, y)


def matmul(x, kernel):
    """`x @ kernel`, `x` of any rank, `kernel` 2-D in `x`'s dtype; the
    result in `x`'s dtype (a backend may accumulate in a wider one)."""
    module = _backend_module()
    fast = None if module is None else getattr(module, "matmul", None)
    if fast is not None:
        out = fast(x, kernel)
        if out is not None:
            return out
    return ops.matmul(x, kernel)


def add_activation(terms, activation=None):
    """`activation(sum(terms))`, the terms broadcast against each other."""
    module = _backend_module()
    if module is not None:
        out = module.add_activation(terms, activation)
        if out is not None:
            return out
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return _apply(activation, total)


def constant(array, dtype, cache):
    """`array` (NumPy) as a backend tensor of `dtype`.

    `cache` is a dict the caller owns (one per array): a backend that keeps
    tensors on a device between calls stores the converted tensor there, so
    a constant is copied to the device once, not on every call.
    """
    module = _backend_module()
    if module is not None:
        out = module.constant(array, dtype, cache)
        if out is not None:
            return out
    return ops.cast(ops.convert_to_tensor(array), dtype)
