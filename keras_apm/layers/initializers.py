"""Per-layer copies of a Keras initializer."""

import keras


def fresh_initializer(initializer, index):
    """Returns a copy of `initializer` for the `index`-th layer using it.

    Keras random initializers draw from a seed fixed when they are built,
    so one object shared by two layers of one shape gives both the same
    weights. The copy is rebuilt from the config: an unseeded initializer
    gets a new random seed, a seeded one the seed `seed + index` (so the
    whole model stays reproducible from one seed).

    Example:
    >>> init = keras.initializers.GlorotUniform(seed=1)
    >>> kernels = [fresh_initializer(init, i)((4, 4)) for i in range(2)]
    """
    initializer = keras.initializers.get(initializer)
    config = initializer.get_config()
    if isinstance(config.get("seed"), int):
        config["seed"] += index
    return type(initializer).from_config(config)
