"""PyTorch fast paths of `keras_apm.backend.fused_ops` (torch backend only).

Why: the torch backend runs each Keras op eagerly, so `x @ kernel + bias`
then ReLU is three kernels and three fresh `(B, L, width)` buffers (each a
page-faulting allocation on a CPU). Here:

- matmul and bias run as one call: on the CPU oneDNN's
  `mkldnn._linear_pointwise` (the kernel TorchInductor uses for the same
  pattern; on this project's AMD CPUs it ran ~1.4x the FLOP/s of the MKL
  `sgemm` behind `torch.matmul`), elsewhere `torch.nn.functional.linear`
  (`addmm` with the bias in the GEMM epilogue), then an in-place ReLU.
  oneDNN's own fused ReLU post-op is not used: it computes `max(x, 0)`,
  which turns NaN into 0, so a NaN pixel would give finite, wrong answers
  on PyTorch where JAX and TensorFlow (and `torch.relu`) propagate NaN;
- with autograd off (inference, `torch.no_grad()`) elementwise sums and the
  ReLU are done in place.

With autograd recording, the oneDNN kernel is skipped (it has no backward):
`linear` and out-of-place ops keep the usual gradients. Every function
returns `None` for cases it does not handle, and the caller falls back to
the generic `keras.ops` form.
"""

import keras
import torch
import torch.nn.functional as F

_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def _tensor(x):
    # Keras variables hold their torch tensor in `.value`.
    return x.value if isinstance(x, keras.Variable) else x


def _is_relu(activation):
    return activation is keras.activations.relu


def _handled(activation):
    return activation is None or activation is keras.activations.linear or (
        _is_relu(activation)
    )


def _records_grad(*tensors):
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors
    )


def _onednn_linear():
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    return op


_LINEAR_POINTWISE = _onednn_linear()


class _OneDNNDense(torch.autograd.Function):
    """`activation(x @ kernel + bias)` with oneDNN kernels both ways: the
    forward as above, the input gradient `g @ kernel^T` and the kernel
    gradient `x^T @ g` as oneDNN products too (strided views, no copies
    of the weights)."""

    @staticmethod
    def forward(ctx, x, kernel, bias, relu):
        y = _linear_relu(x, kernel, bias, relu)
        ctx.relu = relu
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, kernel, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, kernel, y = ctx.saved_tensors
        if ctx.relu:
            grad = grad * (y > 0)
        grad_x = grad_kernel = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _LINEAR_POINTWISE(grad, kernel, None, "none", [], "")
        flat_grad = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            flat_x = x.reshape(-1, x.shape[-1])
            grad_kernel = _LINEAR_POINTWISE(
                flat_x.t(), flat_grad.t(), None, "none", [], ""
            )
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_x, grad_kernel, grad_bias, None


def _linear_relu(x, kernel, bias, relu):
    # `kernel.t()` is the (out, in) weight `linear` expects (a view). The
    # ReLU is torch's (NaN stays NaN), not oneDNN's post-op (NaN -> 0).
    y = _LINEAR_POINTWISE(x, kernel.t(), bias, "none", [], "")
    return y.relu_() if relu else y


def dense(x, kernel, bias, activation):
    if not _handled(activation):
        return None
    x, kernel, bias = _tensor(x), _tensor(kernel), _tensor(bias)
    if not isinstance(x, torch.Tensor) or kernel.dtype != x.dtype or (
        bias is not None and bias.dtype != x.dtype
    ):
        return None
    relu = _is_relu(activation)
    grad = _records_grad(x, kernel, bias)
    if (
        _LINEAR_POINTWISE is not None
        and x.device.type == "cpu"
        and x.dtype in _ONEDNN_DTYPES
    ):
        if grad:
            # oneDNN forward and backward (`_OneDNNDense`).
            return _OneDNNDense.apply(x, kernel, bias, relu)
        return _linear_relu(x, kernel, bias, relu)
    y = F.linear(x, kernel.t(), bias)
    if relu:
        y = F.relu(y) if grad else y.relu_()
    return y


def add_activation(terms, activation):
    if not _handled(activation):
        return None
    terms = [_tensor(t) for t in terms]
    if not all(isinstance(t, torch.Tensor) for t in terms):
        return None
    relu = _is_relu(activation)
    if _records_grad(*terms):
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return F.relu(total) if relu else total
    # Allocate the broadcast result once, then accumulate into it.
    total = terms[0] + terms[1] if len(terms) > 1 else terms[0].clone()
    for term in terms[2:]:
        if torch.broadcast_shapes(total.shape, term.shape) != total.shape:
            total = total + term
        else:
            total.add_(term)
    return total.relu_() if relu else total


def quantize_rows(x):
    """Keras' abs-max row quantization with three fresh tensors (`|x|`, the
    scaled `x` rounded and clipped in place, the int8 cast) where eager
    `keras.ops` makes six; the same numbers. Inference only."""
    x = _tensor(x)
    if not isinstance(x, torch.Tensor) or _records_grad(x):
        return None
    # (`linalg.vector_norm(x, inf)` skips the |x| tensor but ran slower.)
    peak = x.abs().amax(-1, keepdim=True)
    scale = torch.div(127.0, peak.add_(keras.config.epsilon()))
    x_q = torch.mul(x, scale).round_().clamp_(-127, 127).to(torch.int8)
    return x_q, scale


def dequantize_add_activation(products, kernel_scale, bias, activation):
    """The int8 products rescaled, summed, biased and activated in place
    (one fresh tensor where `keras.ops` makes one per step); the same
    numbers. Inference only."""
    if not _handled(activation):
        return None
    tensors = [_tensor(t) for pair in products for t in pair]
    kernel_scale, bias = _tensor(kernel_scale), _tensor(bias)
    if not all(isinstance(t, torch.Tensor) for t in tensors + [kernel_scale, bias]):
        return None
    if _records_grad(*tensors, kernel_scale, bias):
        return None
    total = None
    for product, scale in products:
        # int32 / float: promoted to the scale's dtype in the same pass.
        term = torch.div(_tensor(product), _tensor(scale))
        if total is None or torch.broadcast_shapes(
            total.shape, term.shape
        ) != total.shape:
            total = term if total is None else total + term
        else:
            total.add_(term)
    total.div_(kernel_scale).add_(bias)
    return total.relu_() if _is_relu(activation) else total


def _int_mm_takes(x, kernel):
    # `torch._int_mm` takes any 2-D int8 shapes on the CPU; CUDA's kernel
    # wants more than 16 rows and sizes in multiples of 8 (Keras' own
    # `matmul` checks the same).
    if x.device.type == "cpu":
        return True
    if x.device.type != "cuda":
        return False
    (m, k), n = x.shape, kernel.shape[1]
    return m > 16 and k >= 16 and k % 8 == 0 and n % 8 == 0


def int8_matmul(x, kernel):
    """int8 x int8 -> int32 through `torch._int_mm` (`fused_ops.int8_matmul`):
    on a 2-core AMD EPYC (AVX-512 VNNI), 1024^3 ran at 638 GOP/s where
    float32 ran at 148 GFLOP/s (4.3x). None for shapes it does not take."""
    x, kernel = _tensor(x), _tensor(kernel)
    if (
        x.dtype != torch.int8
        or kernel.dtype != torch.int8
        or x.ndim != 2
        or kernel.ndim != 2
        or not _int_mm_takes(x, kernel)
    ):
        return None
    return torch._int_mm(x, kernel)


def constant(array, dtype, cache):
    from keras.src.backend.torch.core import get_device

    from keras import ops

    key = (get_device(), keras.backend.standardize_dtype(dtype))
    if key not in cache:
        cache[key] = ops.cast(ops.convert_to_tensor(array), dtype)
    return cache[key]
