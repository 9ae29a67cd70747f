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


def all_gather_text(text, num_processes, process_id, *, key, timeout_s,
                    strategy=None):
    """Every process's `text`, by process id, through two all-reduces of
    the group's `MultiWorkerMirroredStrategy`: the lengths, then each
    process's bytes in its own row of a table that is zero elsewhere."""
    import numpy as np

    strategy = strategy or tf.distribute.get_strategy()
    # Every local replica adds its process's row: divide the count out.
    local = max(strategy.num_replicas_in_sync // num_processes, 1)

    def sum_over_processes(table):
        values = strategy.run(lambda: tf.constant(table))
        total = strategy.reduce("SUM", values, axis=None).numpy()
        return np.rint(total / local)  # float32 is exact for bytes x local

    data = np.frombuffer(text.encode("utf-8"), np.uint8)
    lengths = np.zeros((num_processes,), np.float32)
    lengths[process_id] = data.size
    lengths = sum_over_processes(lengths).astype(np.int64)
    table = np.zeros((num_processes, int(lengths.max())), np.float32)
    table[process_id, : data.size] = data
    table = sum_over_processes(table).astype(np.uint8)
    return [
        table[i, : lengths[i]].tobytes().decode("utf-8")
        for i in range(num_processes)
    ]
