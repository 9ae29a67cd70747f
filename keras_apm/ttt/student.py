"""The student of test-time training: its size, initial weights, inputs."""

import json
import os
import zlib

import keras
import numpy as np
from keras import ops

INITS = ("keras", "normal")


def default_student_config(teacher, target_dim, rgb_head=False):
    """An APM config sized from a teacher, for test-time training.

    The student sees the teacher's input size with the teacher's patch size
    (so its grid is the teacher's), its trunk is `(4n, 2n, n)` wide for
    `n = h * w` locations (the official TTT trunk 4096-2048-1024 at
    n = 1024), and its feature width and global head match `target_dim`, the
    length of the vector it regresses.

    Example:
    >>> default_student_config(teacher, 64)["trunk_widths"]  # 8x8 grid
    (256, 128, 64)
    """
    patch = teacher.patch_size
    if not isinstance(patch, (int, np.integer)):
        raise ValueError(
            f"The default student needs a square patch; the teacher's is "
            f"{patch}. Pass a student config."
        )
    target_dim = int(target_dim)
    if target_dim % 4:
        raise ValueError(
            "The student's global head adds a sine/cosine code of the "
            f"target's width, which must be divisible by 4: {target_dim}. "
            "Pass a student config."
        )
    h, w = teacher.native_grid_shape
    n = h * w
    return {
        "image_shape": tuple(teacher.image_size) + (3,),
        "patch_size": int(patch),
        "trunk_widths": (4 * n, 2 * n, n),
        "feature_dim": target_dim,
        "rgb_head": bool(rgb_head),
        "global_head": True,
        "global_num_heads": next(k for k in (8, 4, 2, 1) if target_dim % k == 0),
    }


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


def resolve_student(student, teacher, target_dim, rgb_head=False):
    """Returns `(model, preset_or_None, wants_seeded_init)`.

    `student` is None (sized from the teacher), an APM config dict, a path
    to a JSON file holding one, an APM preset, or an `APM`.
    """
    from keras_apm.models.apm import APM

    if student is None:
        config = default_student_config(teacher, target_dim, rgb_head)
        return APM(**config), None, True
    if isinstance(student, APM):
        return student, None, False
    if isinstance(student, dict):
        config = student.get("config", student)
        if not isinstance(config, dict):
            raise ValueError(f"Expected an APM config dict. Received {student!r}")
        return APM.from_config(dict(config)), None, True
    if isinstance(student, (str, os.PathLike)):
        student = os.fspath(student)
        if student.endswith(".json") and os.path.isfile(student):
            with open(student, encoding="utf-8") as f:
                try:
                    config = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"Student config {student!r} is not valid JSON ({e})."
                    ) from None
            return resolve_student(config, teacher, target_dim, rgb_head)
        return APM.from_preset(student), student, False
    raise ValueError(
        "`student` must be None (sized from the teacher), an APM config "
        "dict, a JSON file holding one, an APM preset, or an `APM`. "
        f"Received {type(student).__name__}."
    )


def student_preprocessor(model, preset=None):
    """The preset's image converter, else resize + ImageNet mean/std."""
    from keras_apm.models.apm import APMImageConverter

    if preset is not None:
        from keras_apm.utils.keras_hub_compat import check_file_exists

        if check_file_exists(preset, "image_converter.json"):
            return APMImageConverter.from_preset(preset)
    # The official TTT student input.
    return APMImageConverter(image_size=model.image_shape[:2], scaling="imagenet")
