"""The student of test-time training: its initial weights and its inputs.

Its size and how a student argument is read are shared with distillation:
`keras_apm.models.apm.apm_student` (`default_student_config(teacher,
"ttt", ...)`, `resolve_student`).
"""

import zlib

import keras
from keras import ops

INITS = ("keras", "normal")


def _variable_seed(seed, path):
    # A stable per-variable seed (Python's hash() is salted per process).
    return (int(seed) * 1_000_003 + zlib.crc32(path.encode())) % (2**31 - 1)


def initialize_student(model, seed=0, init="keras", init_std=0.01):
    """Re-draws every weight of an APM from a seeded initialiser.

    Args:
        model: a `keras_apm.APM`.
        seed: int; the same seed gives the same weights.
        init: `"keras"`: the initialisers the APM's layers use (Glorot
            uniform kernels, zero biases, N(0, 0.05) attention query);
            `"normal"`: every weight, biases included, from N(0, init_std)
            (the official TTT re-initialisation, std 0.01).
        init_std: float, the standard deviation of `"normal"`.

    Example:
    >>> initialize_student(student, seed=3, init="normal")
    """
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}. Received {init!r}")
    for variable in model.weights:
        seed_i = _variable_seed(seed, variable.path)
        name = variable.path.rsplit("/", 1)[-1]
        if init == "normal":
            initializer = keras.initializers.RandomNormal(0.0, init_std, seed_i)
        elif name == "kernel":
            initializer = keras.initializers.GlorotUniform(seed_i)
        elif name in ("bias", "beta"):
            initializer = keras.initializers.Zeros()
        elif name == "gamma":
            initializer = keras.initializers.Ones()
        elif name == "query":
            initializer = keras.initializers.RandomNormal(0.0, 0.05, seed_i)
        else:
            raise ValueError(
                f"No default initialiser for the weight {variable.path!r}; "
                "use init='normal'."
            )
        value = initializer(tuple(variable.shape), "float32")
        variable.assign(ops.cast(value, variable.dtype))


def student_preprocessor(model, preset=None):
    """The preset's image converter, else resize + ImageNet mean/std."""
    from keras_apm.models.apm import load_image_converter

    # The fallback is the official TTT student input.
    return load_image_converter(
        preset, model.image_shape[:2], scaling="imagenet"
    )
