"""Which grid locations a test-time-training step trains on.

TTT costs `steps x locations x MLP`. An APM answers any subset of its
grid, so a step may regress the global vector pooled over a random subset
of `locations_per_step` grid locations instead of all `h * w`: fewer MLP
evaluations per step, on a phone as in Keras (`TestTimeTrainer(...,
locations_per_step=n)`, the `train` signature of an on-device TTT file).

The subsets are drawn once from the seed, one per step, and are the same
for every image: an image's result still depends only on the image, the
teacher and the settings, not on the images adapted beside it, and a
LiteRT driver reproduces Keras' subsets exactly (`step_indices`).
"""

import numpy as np


def check_locations_per_step(value, grid_shape):
    """`None` (the whole grid) or an int in `[1, h * w]`; returns it."""
    total = int(grid_shape[0]) * int(grid_shape[1])
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or not 1 <= value <= total
    ):
        raise ValueError(
            "`locations_per_step` must be None (every location) or an int "
            f"between 1 and the student's {total} grid locations "
            f"({grid_shape[0]}x{grid_shape[1]}). Received {value!r}."
        )
    return int(value)


def step_indices(grid_shape, locations_per_step, steps, seed=0):
    """The grid locations each step trains on, row-major indices.

    Args:
        grid_shape: the student's `(h, w)` grid.
        locations_per_step: `None` (all `h * w`, in order) or an int `n`.
        steps: number of steps.
        seed: int; step `k`'s subset is `n` distinct locations drawn from
            `numpy.random.default_rng([seed, k])`.

    Returns:
        list of `steps` int32 arrays of shape `(n,)`.

    Example:
    >>> step_indices((8, 8), 16, steps=2, seed=0)[0].shape
    (16,)
    """
    total = int(grid_shape[0]) * int(grid_shape[1])
    n = check_locations_per_step(locations_per_step, grid_shape)
    if n is None or n == total:
        return [np.arange(total, dtype="int32") for _ in range(steps)]
    return [
        np.sort(np.random.default_rng([int(seed), k]).permutation(total)[:n]).astype(
            "int32"
        )
        for k in range(steps)
    ]
