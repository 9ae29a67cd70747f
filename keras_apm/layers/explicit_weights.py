"""Dense math from explicit weights, with an optional per-image axis.

Every APM layer computes from a structure of weights it is given (its own
variables in `call`, one stacked copy per image in `keras_apm.BatchedTTT`).
A weight of its usual rank is shared by all images; one with an extra
leading axis `B` is *stacked*: image `b` of the activations meets only
`weight[b]`.
"""

import numpy as np
from keras import ops
from keras import quantizers

from keras_apm.backend import fused_ops


def float_kernel(layer):
    """The float kernel of a Keras `Dense` or `EinsumDense`, quantized or not.

    A layer quantized by `model.quantize("int8")` stores an int8 `_kernel`
    and a per-output `kernel_scale` (`float = int8 / scale`); one quantized
    to `"float8"` keeps a float kernel that its call rounds to float8
    through `kernel_scale`. Either way the APM's math stays the one path of
    `dense`: it reads the weights Keras' own call would multiply by, in the
    layer's compute dtype (int8 weights take a quarter of the memory; the
    product runs in the compute dtype, as on a backend without int8 GEMM).

    Example:
    >>> kernel = float_kernel(mlp.trunk[0])
    """
    mode = getattr(layer, "quantization_mode", None)
    if mode is None:
        return layer.kernel
    if mode == "int8":
        scale = layer.kernel_scale
        if hasattr(layer, "_adjust_scale_for_dequant"):  # EinsumDense
            scale = layer._adjust_scale_for_dequant(scale)
        kernel = ops.cast(layer._kernel, layer.compute_dtype)
        return ops.divide(kernel, ops.cast(scale, layer.compute_dtype))
    if mode == "float8":
        return quantizers.quantize_and_dequantize(
            ops.convert_to_tensor(layer._kernel),
            layer.kernel_scale,
            "float8_e4m3fn",
            layer.compute_dtype,
        )
    raise ValueError(
        f"Layer {layer.path!r} is quantized by Keras in mode {mode!r}; APM "
        "layers read Keras' 'int8' and 'float8' modes. Quantize with "
        "`model.quantize(\"int8\")`, or export a float model and quantize "
        "the export (`keras_apm.export`)."
    )


def dense_weights(layer):
    """`{"kernel", "bias"}` of a built `keras.layers.Dense` (its variables;
    the float kernel if Keras quantized the layer, see `float_kernel`).

    Example:
    >>> weights = dense_weights(mlp.trunk[0])
    """
    return {"kernel": float_kernel(layer), "bias": layer.bias}


def per_image(weight, rank, ndim):
    """`weight` ready to broadcast against activations of rank `ndim`.

    A weight of rank `rank` (shared) is returned as it is; a stacked one
    `(B, ...)` gets singleton axes after its image axis, so that it meets
    activations `(B, ..., ·)` image by image.
    """
    for _ in range(ndim - len(weight.shape) if len(weight.shape) > rank else 0):
        weight = ops.expand_dims(weight, 1)
    return weight


def dense(weights, x, activation=None):
    """`activation(x @ kernel + bias)`, as `keras.layers.Dense` computes it.

    The weights are cast to the dtype of `x` (the layer's compute dtype
    under a mixed-precision policy). Stacked weights need `x` of shape
    `(B, ..., in)`.

    Example:
    >>> y = dense({"kernel": k, "bias": b}, x, keras.activations.relu)
    """
    ndim = len(x.shape)
    kernel = ops.cast(weights["kernel"], x.dtype)
    bias = ops.cast(weights["bias"], x.dtype)
    if len(kernel.shape) == 2:
        # Shared weights (every `call`): one fused kernel where the backend
        # has one (PyTorch's eager matmul + bias + ReLU is three passes).
        return fused_ops.dense(x, kernel, bias, activation)
    y = ops.matmul(x, per_image(kernel, 2, ndim))
    y = y + per_image(bias, 1, len(y.shape))
    return y if activation is None else activation(y)


def split_dense(weights, parts, activation=None):
    """`dense` of the concatenation `[a ; b ; ...]` without building it.

    `[a ; b] @ K = a @ K[:len(a)] + b @ K[len(a):]`, and the parts may
    broadcast against each other: the APM feeds the trigger column `T` as
    `(B, 1, n)` and the position codes `PE` as `(L, d)`, so the `T` share is
    one product per image and the `PE` share one per location, where the
    concatenated queries `(B, L, n + d)` would cost `B * L` of both.

    Args:
        weights: `{"kernel": (..., sum of widths, out), "bias": (..., out)}`.
        parts: the tensors in concatenation order (one dtype).
        activation: applied to the sum.

    Example:
    >>> y = split_dense(weights, [trigger[:, None, :], codes])  # (B, L, out)
    """
    dtype = parts[0].dtype
    kernel = ops.cast(weights["kernel"], dtype)
    ndim = max(len(x.shape) for x in parts)
    # The kernel's row blocks by a split and new axes by expand_dims, not
    # by slicing: their gradients (concatenate, reshape) are builtin LiteRT
    # ops, a slice's (StridedSliceGrad) is not (on-device TTT).
    bounds = list(np.cumsum([x.shape[-1] for x in parts[:-1]]))
    pieces = ops.split(kernel, bounds, axis=-2) if bounds else [kernel]
    terms = []
    for x, piece in zip(parts, pieces):
        # Every term of one rank: with a `(L, w)` term next to `(B, 1, w)`,
        # TensorFlow's CPU graph rewrite fuses the matmul and the add into
        # one op that loses the broadcast axis (wrong gradient shapes).
        while len(x.shape) < ndim:
            x = ops.expand_dims(x, 0)
        # The backend's fast product where it has one (JAX, bf16).
        terms.append(fused_ops.matmul(x, per_image(piece, 2, len(x.shape))))
    bias = per_image(ops.cast(weights["bias"], dtype), 1, ndim)
    # One broadcast sum and activation (in place where a backend can).
    return fused_ops.add_activation(terms + [bias], activation)
