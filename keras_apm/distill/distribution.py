"""Multi-process data-parallel distillation: process group and data shards.

One call, `initialize`, joins the processes of a run into a group before
any model is built, on the engine Keras runs on (the engine's part is
`join_processes` in `keras_apm.backend`'s module for that backend):

- JAX: `keras.distribution.initialize` (`jax.distributed`, CPU collectives
  through gloo) and a `keras.distribution.DataParallel` over the devices of
  all processes, set as the global distribution;
- TensorFlow: a `tf.distribute.MultiWorkerMirroredStrategy` configured by
  `TF_CONFIG` (built from the settings when they are given as arguments);
- PyTorch: Keras has no distribution support there, so asking for more than
  one process raises a `ValueError` before any work (rather than training
  one copy per process, or waiting forever for peers).

Settings come from the arguments, else from the engines' standard
environment variables: `KERAS_DISTRIBUTION_JOB_ADDRESSES`,
`KERAS_DISTRIBUTION_NUM_PROCESSES`, `KERAS_DISTRIBUTION_PROCESS_ID` (what
`keras.distribution.initialize` reads; `JAX_COORDINATOR_ADDRESS` too) and
`TF_CONFIG`. With none of them, the run is a single process and nothing is
set up.

Data: every process builds the same pipeline, batched at the per-process
batch size (the global batch divided by the number of processes), and
`ProcessGroup.shard` keeps its own batch out of each group of
`num_processes` consecutive batches: global step `k` then trains on exactly
the examples a single process would see in its step `k` with the global
batch, and every process runs the same number of steps (an incomplete last
group of batches, and a short last batch, are dropped: a collective step
needs every process). Only the chief (process 0) writes checkpoints,
presets and metrics (`ProcessGroup.is_chief`).
"""

import contextlib
import json
import os

import keras

from keras_apm.backend import backend_module
from keras_apm.utils.validation import check_number

JOB_ADDRESSES_ENV = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
NUM_PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID_ENV = "KERAS_DISTRIBUTION_PROCESS_ID"
JAX_COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
TF_CONFIG_ENV = "TF_CONFIG"

# The group this process joined (engines can be initialized once only).
_GROUP = None


def _int_setting(value, name, minimum):
    # Environment variables hold text: "2" is the int 2.
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    return check_number(value, name, low=minimum, integer=True)


def _tf_config_settings():
    """`(addresses, num_processes, process_id)` from `TF_CONFIG`, or None."""
    text = os.environ.get(TF_CONFIG_ENV)
    if not text:
        return None
    try:
        config = json.loads(text)
        workers = list(config["cluster"]["worker"])
        task = config["task"]
        index = int(task["index"])
        kind = task["type"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f"{TF_CONFIG_ENV} must be JSON like {{\"cluster\": {{\"worker\": "
            '["host1:port", "host2:port"]}, "task": {"type": "worker", '
            f'"index": 0}}}}. Received {text!r}.'
        ) from None
    if kind not in ("worker", "chief") or set(config["cluster"]) - {"worker"}:
        raise ValueError(
            f"Distillation runs on a cluster of `worker` tasks only; "
            f"{TF_CONFIG_ENV} has {sorted(config['cluster'])} and task type "
            f"{kind!r}."
        )
    return ",".join(workers), len(workers), index


def resolve(coordinator=None, num_processes=None, process_id=None):
    """The group's settings: arguments first, then environment variables.

    Args:
        coordinator: `"host:port"` of process 0, or the comma-separated
            addresses of all processes in order (TensorFlow needs the
            list: each worker listens on its own address).
        num_processes: int >= 1.
        process_id: int in `[0, num_processes)`.

    Returns:
        A dict with `"addresses"` (a list, process 0 first),
        `"num_processes"` and `"process_id"`; `num_processes` is 1 for a
        single-process run.

    Example:
    >>> resolve("10.0.0.1:1234", 2, 1)["process_id"]
    1
    """
    from_tf = _tf_config_settings()
    env = {
        "coordinator": os.environ.get(JOB_ADDRESSES_ENV)
        or os.environ.get(JAX_COORDINATOR_ENV),
        "num_processes": os.environ.get(NUM_PROCESSES_ENV),
        "process_id": os.environ.get(PROCESS_ID_ENV),
    }
    if from_tf is not None:
        for key, value in zip(env, from_tf):
            env[key] = env[key] or value
    coordinator = coordinator or env["coordinator"]
    if num_processes is None:
        num_processes = env["num_processes"]
    if process_id is None:
        process_id = env["process_id"]
    if num_processes is None:
        # A coordinator alone names the group: one address per process.
        num_processes = len(coordinator.split(",")) if coordinator else 1
    num_processes = _int_setting(
        num_processes, "`num_processes` (--num-processes)", 1
    )
    if num_processes == 1:
        return {"addresses": [], "num_processes": 1, "process_id": 0}
    if not coordinator:
        raise ValueError(
            f"A run of {num_processes} processes needs the coordinator's "
            f"address (`coordinator`, `--coordinator`, {JOB_ADDRESSES_ENV} "
            f"or {TF_CONFIG_ENV}). Received none."
        )
    if process_id is None:
        raise ValueError(
            f"A run of {num_processes} processes needs this process's id "
            f"(`process_id`, `--process-id`, {PROCESS_ID_ENV} or "
            f"{TF_CONFIG_ENV}). Received none."
        )
    process_id = _int_setting(process_id, "`process_id` (--process-id)", 0)
    if process_id >= num_processes:
        raise ValueError(
            f"`process_id` (--process-id) must be in [0, {num_processes}) for "
            f"{num_processes} processes. Received {process_id}."
        )
    addresses = [a.strip() for a in str(coordinator).split(",") if a.strip()]
    if len(addresses) > 1 and len(addresses) != num_processes:
        raise ValueError(
            f"`coordinator` (--coordinator) lists {len(addresses)} "
            f"addresses for {num_processes} processes. Give one address "
            f"(process 0's) or one per process. Received {coordinator!r}."
        )
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                f"Process addresses must look like `host:port`. Received "
                f"{address!r}."
            )
    return {
        "addresses": addresses,
        "num_processes": num_processes,
        "process_id": process_id,
    }


class ProcessGroup:
    """The processes of one data-parallel run, as seen from one of them.

    Made by `initialize`. `num_processes`, `process_id` and `is_chief` say
    where this process stands; `scope()` is where models are built (the
    TensorFlow strategy's scope; the JAX distribution is global);
    `per_process_batch_size(global)`, `shard(dataset)` and
    `distribute(dataset)` turn one pipeline into this process's part.

    Example:
    ```python
    group = initialize()  # from the flags' or engines' settings
    with group.scope():
        distiller = APMDistiller(student, teacher)
    batch = group.per_process_batch_size(64)
    ds = group.distribute(group.shard(images.batch(batch), batch))
    distiller.fit(ds, callbacks=[checkpoint] if group.is_chief else [])
    ```
    """

    def __init__(self, num_processes=1, process_id=0, strategy=None):
        self.num_processes = num_processes
        self.process_id = process_id
        self.strategy = strategy

    @property
    def is_chief(self):
        """True on process 0, the one that writes files."""
        return self.process_id == 0

    def scope(self):
        """The TF strategy's scope (already global after `initialize`)."""
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def local(self):
        """Models built inside live on this process only (no distribution).

        For work one process does alone, e.g. the chief running the teacher
        to fill the feature cache: a model spread over all processes would
        wait for the others in every call.
        """
        if self.num_processes == 1:
            yield
            return
        with backend_module().without_distribution(self.strategy):
            yield

    def barrier(self):
        """Returns when every process has reached it."""
        if self.num_processes == 1:
            return
        backend_module().barrier(self.strategy)

    @contextlib.contextmanager
    def chief_first(self):
        """The chief runs the block first (e.g. preparing data or a cache
        on a shared disk), then the others."""
        if not self.is_chief:
            self.barrier()
        yield
        if self.is_chief:
            self.barrier()

    def per_process_batch_size(self, global_batch_size):
        """Each process's share of a global batch (which must divide)."""
        if global_batch_size % self.num_processes:
            raise ValueError(
                f"The global batch size ({global_batch_size}) must be a "
                f"multiple of the number of processes ({self.num_processes})."
            )
        return global_batch_size // self.num_processes

    def shard(self, dataset, batch_size):
        """This process's batches of a pipeline batched at `batch_size`.

        Of each `num_processes` consecutive full batches the process keeps
        the one at its `process_id`; short batches and an incomplete last
        group are dropped, so every process runs the same number of steps.
        A single process gets `dataset` back unchanged.
        """
        if self.num_processes == 1:
            return dataset
        import tensorflow as tf

        count, index = self.num_processes, self.process_id

        def full(*batch):
            first = tf.nest.flatten(batch)[0]
            return tf.shape(first)[0] == batch_size

        def pick(*group):
            group = group[0] if len(group) == 1 else group
            return tf.nest.map_structure(lambda t: t[index], group)

        groups = dataset.filter(full).batch(count, drop_remainder=True)
        return groups.map(pick).prefetch(tf.data.AUTOTUNE)

    def distribute(self, dataset):
        """What `fit` takes: under TF, the strategy's per-worker dataset.

        MultiWorkerMirroredStrategy would otherwise shard (and rebatch) the
        already sharded per-process pipeline again.
        """
        if self.strategy is None or self.num_processes == 1:
            return dataset
        local = self.strategy.num_replicas_in_sync // self.num_processes
        if local > 1:
            # Split each per-process batch among the local replicas, in order.
            spec = keras.tree.flatten(dataset.element_spec)[0]
            dataset = dataset.rebatch(int(spec.shape[0]) // local)
        return self.strategy.distribute_datasets_from_function(
            lambda context: dataset
        )

    def __repr__(self):
        return (
            f"ProcessGroup(num_processes={self.num_processes}, "
            f"process_id={self.process_id})"
        )


def initialize(coordinator=None, num_processes=None, process_id=None):
    """Joins this process to the run's group; call before building models.

    See the module docstring for the settings and what each engine does.
    A single-process run (no settings anywhere) sets nothing up. Calling it
    again returns the group already joined (with the same settings).

    Args:
        coordinator: `"host:port"` of process 0, or all processes'
            addresses, comma-separated (TensorFlow needs all).
        num_processes: int, the number of processes.
        process_id: int, this process's index (0 is the chief).

    Returns:
        A `ProcessGroup`.

    Raises:
        ValueError: on the PyTorch backend with more than one process, or
            for incomplete or out-of-range settings.

    Example:
    ```python
    # On host 0 (and with process_id=1 on host 1):
    group = keras_apm.distill.distribution.initialize(
        "10.0.0.1:1234,10.0.0.2:1234", num_processes=2, process_id=0)
    ```
    """
    global _GROUP
    settings = resolve(coordinator, num_processes, process_id)
    if _GROUP is not None:
        if (settings["num_processes"], settings["process_id"]) != (
            _GROUP.num_processes,
            _GROUP.process_id,
        ):
            raise ValueError(
                f"This process already joined {_GROUP!r}; it cannot join "
                f"another group ({settings})."
            )
        return _GROUP
    if settings["num_processes"] == 1:
        return ProcessGroup()
    # The engine's part (the process group, the global distribution or
    # strategy) lives in `keras_apm.backend`; PyTorch refuses.
    strategy = backend_module().join_processes(
        settings["addresses"], settings["num_processes"], settings["process_id"]
    )
    _GROUP = ProcessGroup(
        settings["num_processes"], settings["process_id"], strategy
    )
    return _GROUP


# --- Hooks for Keras's TensorFlow trainer under MultiWorkerMirroredStrategy.
# Keras 3.15 handles that strategy's per-replica values in two places the
# single-worker MirroredStrategy does not reach: it reduces the first data
# batch (a tuple or dict of PerReplica values) as if it were one tensor
# before fit, and it averages each step's logs over axis 0. Both fail for
# the distiller; these two hooks make the distiller's steps fit them.


def _multi_worker_strategy():
    return _GROUP is not None and _GROUP.strategy is not None


def build_without_data(model):
    """Builds a built model's optimizer in the strategy's scope, when the
    group runs MultiWorkerMirroredStrategy; returns whether it did (then the
    trainer's symbolic build, which needs nothing else, must be skipped)."""
    if not _multi_worker_strategy():
        return False
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        with _GROUP.strategy.scope():
            optimizer.build(model.trainable_variables)
    return True


def step_logs(logs):
    """A TensorFlow step's logs as Keras reduces them across workers.

    Keras averages each log over axis 0 of the values of all replicas: a
    scalar gets an axis of length one (the result is the scalar again).
    """
    if not _multi_worker_strategy():
        return logs
    return {k: keras.ops.reshape(v, (1,)) for k, v in logs.items()}
