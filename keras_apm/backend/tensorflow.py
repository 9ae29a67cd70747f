"""TensorFlow: `tf.GradientTape` and `tf.function` (see `keras_apm.backend`).

Imported only when the Keras backend is TensorFlow.
"""

import tensorflow as tf


def compile_step(loss_fn, optimizer, variables, jit_compile=True):
    """Batched-TTT step as a `tf.function` (XLA-compiled when `jit_compile`)."""

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


def fast_optimizer(optimizer):
    # Keras' own update compiles into the step already.
    return optimizer


def replica_mean_loss(loss):
    # Under a tf.distribute strategy each replica sees 1/N of the global
    # batch and the replicas' gradients are summed: scale by 1/N so the
    # update is the gradient of the global batch's mean loss.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss
