"""Dense math from explicit weights, with an optional per-image axis.

Every APM layer computes from a structure of weights it is given (its own
variables in `call`, one stacked copy per image in `keras_apm.BatchedTTT`).
A weight of its usual rank is shared by all images; one with an extra
leading axis `B` is *stacked*: image `b` of the activations meets only
`weight[b]`.

A `Dense` layer quantized by Keras (`model.quantize("int8")`) hands its
int8 kernel and per-output scale (`{"kernel_int8", "kernel_scale",
"bias"}`) where the backend has an int8 GEMM (`fused_ops.int8_matmul`):
`dense` and `split_dense` then compute as Keras' own int8 `Dense` does, the
activations quantized per row. Quantized weights are for inference only:
`check_float_weights` names them to the trainers.
"""

import keras
import numpy as np
from keras import ops
from keras import quantizers

from keras_apm.backend import fused_ops

# Keras' default `AbsMaxQuantizer` range for int8 activations.
INT8_RANGE = (-127, 127)


def float_kernel(layer):
    """The float kernel of a Keras `Dense` or `EinsumDense`, quantized or not.

    A layer quantized by `model.quantize("int8")` stores an int8 `_kernel`
    and a per-output `kernel_scale` (`float = int8 / scale`); one quantized
    to `"float8"` keeps a float kernel that its call rounds to float8
    through `kernel_scale`. Either way the APM's math stays the one path of
    `dense`: it reads the weights Keras' own call would multiply by, in the
    layer's compute dtype. Used where no int8 GEMM runs (`dense_weights`):
    float8 layers, the attention pool's `EinsumDense` projections (its
    folded one-query attention multiplies kernels by vectors) and backends
    whose int8 GEMM is not faster than float (TensorFlow).

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


def _runs_int8_gemm(layer):
    # Keras' int8 `Dense` quantizes its inputs with an `AbsMaxQuantizer`
    # (abs-max per row to [-127, 127]) unless its config turns that off
    # (weight-only int8, a float product): the int8 GEMM path follows the
    # default quantizer; any other stays on the float kernel.
    quantizer = getattr(layer, "inputs_quantizer", None)
    return (
        getattr(layer, "quantization_mode", None) == "int8"
        and isinstance(layer, keras.layers.Dense)
        and isinstance(quantizer, quantizers.AbsMaxQuantizer)
        and tuple(quantizer.value_range) == INT8_RANGE
        and fused_ops.has_int8_matmul()
    )


def dense_weights(layer):
    """The weights of a built `keras.layers.Dense`, as `dense` takes them.

    `{"kernel", "bias"}`: its variables, or its float kernel if Keras
    quantized it (`float_kernel`). A layer quantized to int8 on a backend
    with an int8 GEMM (`fused_ops.int8_matmul`) gives `{"kernel_int8",
    "kernel_scale", "bias"}` instead (`float = int8 / scale`): `dense` then
    multiplies int8 by int8, as Keras' own int8 `Dense` does.

    Example:
    >>> weights = dense_weights(mlp.trunk[0])
    """
    if _runs_int8_gemm(layer):
        return {
            "kernel_int8": layer._kernel,
            "kernel_scale": layer.kernel_scale,
            "bias": layer.bias,
        }
    return {"kernel": float_kernel(layer), "bias": layer.bias}


def quantized_layers(model):
    """Paths of the layers of `model` that Keras quantized (any mode)."""
    return [
        layer.path
        for layer in model._flatten_layers()
        if getattr(layer, "quantization_mode", None) is not None
    ]


def check_float_weights(model, purpose):
    """Raises a ValueError if Keras quantized any layer of `model`.

    Quantized APM layers run inference only: their int8 or float8 kernels
    are not trainable and the int8 product has no gradient. `purpose`
    names the training that refuses them (e.g. "Test-time training").

    Example:
    >>> check_float_weights(student, "Distillation")
    """
    paths = quantized_layers(model)
    if paths:
        raise ValueError(
            f"{purpose} trains float weights; {len(paths)} layers of "
            f"{model.name!r} are quantized by Keras (e.g. {paths[0]!r}). "
            "Train the float model, then `model.quantize(...)` it for "
            "inference."
        )


def per_image(weight, rank, ndim):
    """`weight` ready to broadcast against activations of rank `ndim`.

    A weight of rank `rank` (shared) is returned as it is; a stacked one
    `(B, ...)` gets singleton axes after its image axis, so that it meets
    activations `(B, ..., ·)` image by image.
    """
    for _ in range(ndim - len(weight.shape) if len(weight.shape) > rank else 0):
        weight = ops.expand_dims(weight, 1)
    return weight


def _int8_product(x, kernel_int8):
    """`(x_q @ kernel_int8, x_scale)`: `x` quantized per row, as Keras'
    int8 `Dense` quantizes its inputs (`x ~= x_q / x_scale`), multiplied
    by the int8 GEMM; the int32 product in `x`'s rank, the scale
    `(..., 1)`. `x` may have any rank (rows flattened for the 2-D GEMM)."""
    x_q, x_scale = fused_ops.quantize_rows(x)
    lead = tuple(x.shape[:-1])
    rows = ops.reshape(x_q, (-1, x.shape[-1]))
    product = fused_ops.int8_matmul(rows, ops.convert_to_tensor(kernel_int8))
    return ops.reshape(product, lead + (product.shape[-1],)), x_scale


def _check_shared_int8(weights):
    if len(weights["kernel_int8"].shape) != 2:
        raise ValueError(
            "int8 kernels are shared weights for inference; received a "
            f"stacked one of shape {tuple(weights['kernel_int8'].shape)}. "
            "Batched test-time training adapts float weights: run it on "
            "the float model, then quantize."
        )


def _int8_dense(weights, x, activation):
    # Keras' int8 Dense: x ~= x_q / s_x (per row), K = K_q / s_k (per
    # output), so x @ K = (x_q @ K_q) / (s_x * s_k), the product exact in
    # int32.
    _check_shared_int8(weights)
    return fused_ops.dequantize_add_activation(
        [_int8_product(x, weights["kernel_int8"])],
        ops.cast(weights["kernel_scale"], x.dtype),
        ops.cast(weights["bias"], x.dtype),
        activation,
    )


def dense(weights, x, activation=None):
    """`activation(x @ kernel + bias)`, as `keras.layers.Dense` computes it.

    The weights are cast to the dtype of `x` (the layer's compute dtype
    under a mixed-precision policy). Stacked weights need `x` of shape
    `(B, ..., in)`. Int8 weights (`dense_weights` of a layer Keras
    quantized) multiply `x` quantized per row by the int8 kernel.

    Example:
    >>> y = dense({"kernel": k, "bias": b}, x, keras.activations.relu)
    """
    if "kernel_int8" in weights:
        return _int8_dense(weights, x, activation)
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
        weights: `{"kernel": (..., sum of widths, out), "bias": (..., out)}`,
            or `dense_weights`' int8 form.
        parts: the tensors in concatenation order (one dtype).
        activation: applied to the sum.

    Example:
    >>> y = split_dense(weights, [trigger[:, None, :], codes])  # (B, L, out)
    """
    if "kernel_int8" in weights:
        return _int8_split_dense(weights, parts, activation)
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


def _int8_split_dense(weights, parts, activation):
    """`split_dense` with an int8 kernel.

    Each part is quantized per row on its own (`a ~= a_q / s_a`, `b ~= b_q
    / s_b`), as if it were a layer's input: a part never shares a scale
    with a part of another range (the trigger and the position codes
    differ), and each product keeps its broadcast shape. The kernel's
    scale is per output column, the same for every row block, so
    `[a ; b] @ K = (a_q @ K_q[:len(a)] / s_a + b_q @ K_q[len(a):] / s_b)
    / s_k`, each product exact in int32.
    """
    _check_shared_int8(weights)
    dtype = parts[0].dtype
    ndim = max(len(x.shape) for x in parts)
    bounds = list(np.cumsum([x.shape[-1] for x in parts[:-1]]))
    kernel = ops.convert_to_tensor(weights["kernel_int8"])
    pieces = ops.split(kernel, bounds, axis=0) if bounds else [kernel]
    products = []
    for x, piece in zip(parts, pieces):
        product, x_scale = _int8_product(x, piece)
        while len(product.shape) < ndim:
            product = ops.expand_dims(product, 0)
            x_scale = ops.expand_dims(x_scale, 0)
        products.append((product, x_scale))
    return fused_ops.dequantize_add_activation(
        products,
        ops.cast(weights["kernel_scale"], dtype),
        ops.cast(weights["bias"], dtype),
        activation,
    )
