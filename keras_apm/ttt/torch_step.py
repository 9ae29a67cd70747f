"""PyTorch: autograd for the batched test-time-training step (eager).

Imported only when the Keras backend is PyTorch
(`batched.backend_step_module`). The step runs eagerly: every operation is
already one batched kernel over all images, so there is little to fuse.
"""

import torch


def compile_step(loss_fn, optimizer, variables, jit_compile=True):
    """Builds `step(batch) -> per_image_losses`, updating `variables`.

    Args:
        loss_fn: `(values, batch) -> (total_loss, per_image_losses)`, written
            with `keras.ops`; `values` are the tensors of `variables`.
        optimizer: a Keras optimizer built on `variables`.
        variables: list of `keras.Variable`, the stacked weights.
        jit_compile: ignored (eager execution).
    """
    del jit_compile

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
