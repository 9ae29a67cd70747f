"""A group run agrees before it starts: every process has the same settings.

The processes of one multi-process run are started separately (one command
line each), so nothing stops one of them from getting `--epochs 2` and
another `--epochs 4`, or another learning rate. Left alone they train, and
fail only when their collectives stop matching, minutes later and with an
engine's error that names no setting. So at start-up, before any model is
built, every process hashes its run configuration (SHA-256 of its sorted
JSON) and exchanges it, with the configuration itself, through the
engine's own machinery (`all_gather_text` of the backend module):

- JAX: the `jax.distributed` coordination service's key-value store;
- PyTorch: `torch.distributed.all_gather_object` (gloo on CPU);
- TensorFlow: all-reduces of the `MultiWorkerMirroredStrategy`.

A process whose hash differs from process 0's makes every process stop
with the same `ValueError`, naming each differing setting and its values.

Example:
```python
check_same_settings({"epochs": 4, "learning_rate": 1e-3},
                    num_processes=2, process_id=0)
# on process 1 with epochs=2, in both processes:
# ValueError: The 2 processes of this run were started with different
# settings: process 1 runs with epochs=2, process 0 with epochs=4. ...
```
"""

import hashlib
import itertools
import json

from keras_apm.backend import backend_module

# Seconds to wait for the other processes to reach the check (they start
# at about the same time; a slow one is still importing its engine).
TIMEOUT_S = 600

# One key-value namespace per check made in this process.
_CHECKS = itertools.count()


def settings_hash(settings):
    """The SHA-256 hex digest of `settings` (a JSON-serialisable dict)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _show(value):
    return json.dumps(value, sort_keys=True, default=str)


def _differences(settings, reference, process_id):
    """`process P runs with k=v, process 0 with k=w` for each differing key."""
    missing = object()
    parts = []
    for key in sorted(set(settings) | set(reference)):
        mine, theirs = settings.get(key, missing), reference.get(key, missing)
        if mine == theirs:
            continue
        mine = "(not set)" if mine is missing else _show(mine)
        theirs = "(not set)" if theirs is missing else _show(theirs)
        parts.append(
            f"process {process_id} runs with {key}={mine}, process 0 with "
            f"{key}={theirs}"
        )
    return parts


def check_same_settings(settings, num_processes, process_id, strategy=None,
                        timeout_s=TIMEOUT_S):
    """Stops a group run whose processes were started with other settings.

    Call it in every process of the group, at the same point, after the
    engine's group is set up and before any work. A single process returns
    at once.

    Args:
        settings: a JSON-serialisable dict of what must be the same in
            every process (e.g. `epochs`, `learning_rate`, the data).
        num_processes: int, the number of processes in the group.
        process_id: int, this process's index.
        strategy: the `tf.distribute` strategy on TensorFlow (default: the
            current one).
        timeout_s: how long to wait for the other processes (JAX).

    Returns:
        The settings' hash (the same in every process).

    Raises:
        ValueError: in every process, naming each setting a process
            differs in from process 0, with both values.

    Example:
    ```python
    group = keras_apm.distill.distribution.initialize()
    check_same_settings({"epochs": 4}, group.num_processes,
                        group.process_id)
    ```
    """
    digest = settings_hash(settings)
    if num_processes <= 1:
        return digest
    payload = json.dumps(
        {"sha256": digest, "settings": settings}, sort_keys=True, default=str
    )
    texts = backend_module().all_gather_text(
        payload, num_processes, process_id,
        key=f"keras_apm/run_agreement/{next(_CHECKS)}", timeout_s=timeout_s,
        strategy=strategy,
    )
    received = [json.loads(text) for text in texts]
    reference = received[0]
    parts = []
    for index, other in enumerate(received[1:], start=1):
        if other["sha256"] != reference["sha256"]:
            parts += _differences(
                other["settings"], reference["settings"], index
            ) or [f"process {index}'s settings hash differently"]
    if parts:
        raise ValueError(
            f"The {num_processes} processes of this run were started with "
            f"different settings: {'; '.join(parts)}. Every process of a "
            "run must get the same settings (flags): start them all again "
            "with the same ones."
        )
    return digest
