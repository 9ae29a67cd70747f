"""The backend-specific code of keras_apm, behind one dispatcher.

Everything else is `keras.ops`. What cannot be (differentiating and
compiling a step by hand) lives in one module per Keras backend, each with
the same functions:

- `compile_step(loss_fn, optimizer, variables, jit_compile=True)`: builds
  `step(batch) -> per_image_losses` for batched test-time training
  (`keras_apm.ttt.BatchedTTT`). `loss_fn` is `(values, batch) ->
  (total_loss, per_image_losses)`, written with `keras.ops`, `values` the
  tensors of `variables` (a list of `keras.Variable`, the stacked weights);
  `optimizer` is a Keras optimizer built on `variables`; the step applies
  the gradient of `total_loss` to `variables`.
- `compile_function(fn, jit_compile=True)`: `fn` compiled for repeated calls
  without gradients.
- `fast_optimizer(optimizer)`: `optimizer`, switched to the backend's
  fastest update of the same math where there is one (PyTorch: Keras'
  `Adam` through `torch._fused_adam_`, see `keras_apm.backend.torch_adam`);
  the others return it as is.
- `replica_mean_loss(loss)`: the loss a replica differentiates so that the
  replicas' summed gradients are the gradient of the global batch's mean
  loss (`keras_apm.APMDistiller.compute_loss`).
- `all_gather_text(text, num_processes, process_id, *, key, timeout_s,
  strategy=None)`: every process's `text`, by process id, through the
  engine's own group (`keras_apm.backend.run_agreement`).

- `join_processes(addresses, num_processes, process_id)`: joins a
  multi-process data-parallel run (JAX: `keras.distribution`, TensorFlow:
  `MultiWorkerMirroredStrategy`; PyTorch raises a `ValueError`); returns the
  strategy object or None. `without_distribution(strategy)` (a context)
  and `barrier(strategy)` go with it (`keras_apm.distill.distribution`,
  which keeps the engine-agnostic settings and data sharding).
- `fused_ops`: None, or the module of fast kernels behind
  `keras_apm.backend.fused_ops` (PyTorch: `torch_fused_ops`, JAX:
  `jax_fused_ops`).
- `int8_matmul(x, kernel)` (optional; None or absent: none): int8 x int8 ->
  int32 of 2-D tensors through the engine's int8 GEMM, where it beats float32
  (PyTorch `torch._int_mm`, JAX's integer dot), behind
  `keras_apm.backend.fused_ops.int8_matmul`.

Helpers of one backend sit beside its module, named for it
(`torch_adam.py`, `torch_fused_ops.py`, `jax_fused_ops.py`). Nothing outside this package
(and `keras_apm.convert`, which reads `.pth` files) imports `jax` or
`torch` (`tests/test_import_graph.py` checks).

`backend_module()` returns the module of the current Keras backend.

Example:
```python
from keras_apm.backend import backend_module
step = backend_module().compile_step(loss_fn, optimizer, variables)
```
"""

import importlib

import keras

BACKENDS = ("jax", "tensorflow", "torch")


def backend_module():
    """The keras_apm module for the current Keras backend.

    Raises a `ValueError` naming the supported backends on any other (e.g.
    `KERAS_BACKEND=numpy`, which cannot train).
    """
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise ValueError(
            f"keras_apm trains on the {', '.join(BACKENDS)} Keras backends. "
            f"The current backend is {backend!r}: set KERAS_BACKEND to one "
            "of them."
        )
    return importlib.import_module(f"{__name__}.{backend}")
