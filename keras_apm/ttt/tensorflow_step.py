"""TensorFlow: gradients and `tf.function` for the batched TTT step.

Imported only when the Keras backend is TensorFlow
(`batched.backend_step_module`).
"""

import tensorflow as tf


def compile_step(loss_fn, optimizer, variables, jit_compile=True):
    """Builds `step(batch) -> per_image_losses`, updating `variables`.

    Args:
        loss_fn: `(values, batch) -> (total_loss, per_image_losses)`, written
            with `keras.ops`; `values` are the tensors of `variables`.
        optimizer: a Keras optimizer built on `variables`.
        variables: list of `keras.Variable`, the stacked weights.
        jit_compile: compile the `tf.function` with XLA.
    """

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        with tf.GradientTape() as tape:
            total, per_image = loss_fn([v.value for v in variables], batch)
        grads = tape.gradient(total, variables)
        optimizer.apply(grads, variables)
        return per_image

    return step


def compile_function(fn, jit_compile=True):
    """`fn` as a `tf.function` (XLA-compiled when `jit_compile`)."""
    return tf.function(fn, jit_compile=jit_compile)
