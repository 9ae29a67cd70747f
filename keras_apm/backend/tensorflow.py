"""TensorFlow: `tf.GradientTape` and `tf.function` (see `keras_apm.backend`).

Imported only when the Keras backend is TensorFlow.
"""

import contextlib
import json
import os

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


def join_processes(addresses, num_processes, process_id):
    """Multi-process set-up (`keras_apm.distill.distribution.initialize`): a
    global `tf.distribute.MultiWorkerMirroredStrategy` configured by
    `TF_CONFIG` (written from the settings). Returns the strategy."""
    if len(addresses) != num_processes:
        raise ValueError(
            f"TensorFlow workers each listen on their own address: give all "
            f"{num_processes} addresses, comma-separated, process 0 first "
            "(`--coordinator`, KERAS_DISTRIBUTION_JOB_ADDRESSES) or set "
            f"TF_CONFIG. Received {','.join(addresses)!r}."
        )
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": list(addresses)},
            "task": {"type": "worker", "index": process_id},
        }
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # Global, like the JAX distribution: models built anywhere after this
    # (teacher, student, optimizer, restored checkpoints) are mirrored.
    tf.distribute.experimental_set_strategy(strategy)
    return strategy


@contextlib.contextmanager
def without_distribution(strategy):
    """Models built inside live on this process only (`ProcessGroup.local`)."""
    tf.distribute.experimental_set_strategy(None)
    with contextlib.ExitStack() as restore:
        restore.callback(tf.distribute.experimental_set_strategy, strategy)
        yield


def barrier(strategy):
    """Returns when every process has reached it (`ProcessGroup.barrier`)."""
    ones = strategy.run(lambda: tf.constant(1.0))
    # An all-reduce over the workers: each has to contribute.
    total = strategy.reduce("SUM", ones, axis=None).numpy()
    if round(float(total)) != strategy.num_replicas_in_sync:
        raise RuntimeError(f"The barrier counted {total} replicas.")


# No fast kernels: XLA and Grappler fuse the generic form (`fused_ops`).
fused_ops = None


def process_count():
    """Processes sharing the Keras distribution's global batch: a
    `keras.distribution` (the only user) spans one process here."""
    return 1


# No int8 GEMM (`fused_ops.int8_matmul`): TensorFlow's CPU
# `matmul(int8, int8, output_type=int32)` ran 1024^3 at 73 GOP/s where its
# float32 matmul ran at 167 GFLOP/s (2-core AMD EPYC, AVX-512 VNNI), so layers quantized
# by Keras multiply their dequantized float kernels here.
int8_matmul = None
