"""PyTorch: `torch.autograd`, eager (see `keras_apm.backend`).

Imported only when the Keras backend is PyTorch. Steps run eagerly: every
operation of a batched TTT step is already one batched kernel over all
images, so there is little to fuse.
"""

import torch

from keras_apm.backend import torch_fused_ops as fused_ops  # noqa: F401
from keras_apm.backend.torch_fused_ops import int8_matmul  # noqa: F401
from keras_apm.backend.torch_adam import fused_adam


def compile_step(loss_fn, optimizer, variables, jit_compile=True):
    """Batched-TTT step; `jit_compile` is ignored (eager execution)."""
    del jit_compile
    optimizer = fast_optimizer(optimizer)

    def step(batch):
        values = [v.value for v in variables]
        with torch.enable_grad():
            total, per_image = loss_fn(values, batch)
            grads = torch.autograd.grad(total, values)
        with torch.no_grad():
            optimizer.apply(grads, variables)
        return per_image.detach()

    return step


def compile_function(fn, jit_compile=True):
    """`fn` run without building an autograd graph."""
    del jit_compile

    def run(*args):
        with torch.no_grad():
            return fn(*args)

    return run


def fast_optimizer(optimizer):
    """Keras' eager `Adam` update is ten passes over the weights; PyTorch's
    fused kernel does the same math in one (`keras_apm.backend.torch_adam`)."""
    return fused_adam(optimizer)


def replica_mean_loss(loss):
    # Keras runs PyTorch on one device per process: nothing to rescale.
    return loss


def all_gather_text(text, num_processes, process_id, *, key, timeout_s,
                    strategy=None):
    """Every process's `text`, by process id, through
    `torch.distributed.all_gather_object` on the default process group
    (gloo on CPU)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"A run of {num_processes} processes on PyTorch needs "
            "`torch.distributed.init_process_group` called first."
        )
    if dist.get_world_size() != num_processes:
        raise ValueError(
            f"The torch.distributed group has {dist.get_world_size()} "
            f"processes; the run expects {num_processes}."
        )
    gathered = [None] * num_processes
    dist.all_gather_object(gathered, text)
    return gathered


def join_processes(addresses, num_processes, process_id):
    """Keras has no distribution support on PyTorch: a `ValueError` before
    any work (rather than training one copy per process, or waiting forever
    for peers)."""
    del addresses, process_id
    raise ValueError(
        "Multi-process distillation runs on the jax and tensorflow "
        "backends; Keras has no distribution support for "
        f"KERAS_BACKEND='torch'. Received num_processes={num_processes}. "
        "Run one process, or set KERAS_BACKEND=jax or tensorflow."
    )


def process_count():
    """Processes sharing the Keras distribution's global batch: a
    `keras.distribution` (the only user) spans one process here."""
    return 1
