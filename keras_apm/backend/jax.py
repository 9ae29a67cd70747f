"""JAX: `jax.value_and_grad` and `jax.jit` (see `keras_apm.backend`).

Imported only when the Keras backend is JAX.
"""

import contextlib

import jax
import keras


def compile_step(loss_fn, optimizer, variables, jit_compile=True):
    """Batched-TTT step: a pure function of the variables' values, jitted."""

    def pure_step(values, optimizer_values, batch):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, per_image), grads = grad_fn(values, batch)
        values, optimizer_values = optimizer.stateless_apply(
            optimizer_values, grads, values
        )
        return values, optimizer_values, per_image

    if jit_compile:
        pure_step = jax.jit(pure_step)

    def step(batch):
        values, optimizer_values, per_image = pure_step(
            [v.value for v in variables],
            [v.value for v in optimizer.variables],
            batch,
        )
        for variable, value in zip(variables, values):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, optimizer_values):
            variable.assign(value)
        return per_image

    return step


def compile_function(fn, jit_compile=True):
    """`jax.jit(fn)` (or `fn` itself when `jit_compile=False`)."""
    return jax.jit(fn) if jit_compile else fn


def fast_optimizer(optimizer):
    # Keras' own update compiles into the step already.
    return optimizer


def replica_mean_loss(loss):
    # `keras.distribution.DataParallel` shards one global batch inside one
    # jitted program: the loss already is the global batch's mean.
    return loss


def all_gather_text(text, num_processes, process_id, *, key, timeout_s,
                    strategy=None):
    """Every process's `text`, by process id, through `jax.distributed`'s
    key-value store (the coordination service the group already runs, so
    nothing is compiled and no device collective is needed)."""
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise ValueError(
            f"A run of {num_processes} processes on JAX needs "
            "`jax.distributed` initialized first "
            "(`keras_apm.distill.distribution.initialize`)."
        )
    client.key_value_set(f"{key}/{process_id}", text)
    return [
        text if i == process_id
        else client.blocking_key_value_get(f"{key}/{i}", int(timeout_s * 1000))
        for i in range(num_processes)
    ]


def join_processes(addresses, num_processes, process_id):
    """Multi-process set-up (`keras_apm.distill.distribution.initialize`):
    `jax.distributed` through `keras.distribution.initialize` (CPU
    collectives through gloo) and a global `keras.distribution.DataParallel`
    over the devices of all processes. Returns None (no strategy object)."""
    # jax.distributed takes process 0's address; Keras splits the list.
    keras.distribution.initialize(
        job_addresses=",".join(addresses),
        num_processes=num_processes,
        process_id=process_id,
    )
    devices = keras.distribution.list_devices()
    # Each process already feeds only its own batches (`ProcessGroup.shard`):
    # Keras must not shard them again.
    distribution = keras.distribution.DataParallel(
        devices=devices, auto_shard_dataset=False
    )
    keras.distribution.set_distribution(distribution)
    return None


@contextlib.contextmanager
def without_distribution(strategy):
    """Models built inside live on this process only (`ProcessGroup.local`)."""
    del strategy
    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def barrier(strategy):
    """Returns when every process has reached it (`ProcessGroup.barrier`)."""
    del strategy
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("keras_apm")


# bfloat16 products accumulated in float32 (XLA's CPU backend upcasts a
# bf16-result dot); everything else is the generic `keras.ops` form.
from keras_apm.backend import jax_fused_ops as fused_ops  # noqa: E402,F401


def int8_matmul(x, kernel):
    """int8 x int8 -> int32 through XLA's integer dot (`fused_ops.int8_matmul`):
    on a 2-core AMD EPYC (AVX-512 VNNI), 1024^3 ran at 281 GOP/s where float32 ran at
    174 GFLOP/s (1.6x)."""
    import jax.numpy as jnp

    return jax.lax.dot(x, kernel, preferred_element_type=jnp.int32)


def process_count():
    """Processes sharing the Keras distribution's global batch."""
    return jax.process_count()
