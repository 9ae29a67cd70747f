"""Input checks shared by the layers, the model, the engines and the CLI.

Every message says what was expected and what was given. Numbers (settings,
hyper-parameters, flags) go through one checker, `check_number`: the API
functions check their arguments under their Python names
(`` `learning_rate` ``), the command line its flags under the flag names
(`--learning-rate`, `check_flags`), so each error speaks the caller's words.
Keras is imported on use: the command checks its flags before any heavy
import.
"""

import math
import numbers

import numpy as np


def _describe(integer, low, high, low_open, high_open):
    kind = "an int" if integer else "a finite number"
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low}, {high}" + (
            ")" if high_open else "]"
        )
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high}"
    return kind


def check_number(
    value, name, low=None, high=None, low_open=False, high_open=False,
    integer=False, allow_none=False,
):
    """Returns `value` if it is a finite number in range; else raises.

    Args:
        value: the value to check.
        name: how the caller calls it (`` "`learning_rate`" `` or
            `"--learning-rate"`).
        low, high: the bounds (None: unbounded), inclusive unless
            `low_open` / `high_open`.
        integer: an int is required (bools are refused).
        allow_none: None passes (an optional setting left unset).

    Raises:
        ValueError: "NAME must be a finite number > 0, got nan".

    Example:
    >>> check_number(1e-3, "`learning_rate`", low=0, low_open=True)
    0.001
    >>> check_number(float("nan"), "--learning-rate", low=0, low_open=True)
    ValueError: --learning-rate must be a finite number > 0, got nan.
    """
    if value is None and allow_none:
        return value
    ok = isinstance(value, numbers.Real) and not isinstance(
        value, (bool, np.bool_)
    )
    if ok and integer:
        ok = isinstance(value, numbers.Integral)
    if ok:
        ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(
            f"{name} must be "
            f"{_describe(integer, low, high, low_open, high_open)}, "
            f"got {value!r}."
        )
    return value


def check_flags(args, **ranges):
    """Checks command-line flags (set ones only) with `check_number`.

    Args:
        args: the `argparse.Namespace`.
        **ranges: `dest=dict(...)` keyword arguments of `check_number`.

    Example:
    >>> check_flags(args, epochs=dict(low=1, integer=True),
    ...             learning_rate=dict(low=0, low_open=True))
    """
    for dest, kwargs in ranges.items():
        value = getattr(args, dest, None)
        if value is not None:
            check_number(value, "--" + dest.replace("_", "-"), **kwargs)


def static_shape(x):
    """The shape of `x` as a tuple of ints, `None` where unknown."""
    shape = getattr(x, "shape", None)
    if shape is None and hasattr(x, "as_list"):
        # A `tf.TensorShape` (what Keras passes to `build` on TensorFlow)
        # is the shape itself; `np.shape` would read it as rank 1.
        shape = x
    elif shape is None:
        shape = np.shape(x)
    return tuple(_static_dim(d) for d in shape)


def _static_dim(d):
    """An int, or None for an unknown or symbolic dimension.

    Under `model.export` on JAX (jax2tf) the batch is a symbolic dimension,
    `int()` of which raises (InconclusiveDimensionOperation): it is as
    unknown as TensorFlow's `None` batch.
    """
    if d is None or isinstance(d, (int, np.integer)):
        return None if d is None else int(d)
    try:
        return int(d)
    except Exception:
        return None


def check_positive_int(value, name, allow_none=False):
    """Returns `int(value)`, raising unless it is a positive integer.

    An integral float (`14.0`, as a JSON config may hold) is taken as its
    int; the check is `check_number`'s.

    Example:
    >>> check_positive_int(14, "patch_size")  # 14
    """
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    value = check_number(
        value, f"`{name}`", low=1, integer=True, allow_none=allow_none
    )
    return None if value is None else int(value)


def check_positive_ints(values, name):
    """Returns a tuple of ints, raising unless all are positive integers."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(
            f"`{name}` must be a tuple of positive integers. Received: "
            f"{name}={values!r}"
        )
    values = tuple(values)
    for i, value in enumerate(values):
        check_positive_int(value, f"{name}[{i}]")
    return tuple(int(v) for v in values)


def _dtype_name(x):
    """Keras' name for the dtype of `x`, or the raw name if Keras has none."""
    import keras

    dtype = getattr(x, "dtype", None)
    try:
        return keras.backend.standardize_dtype(dtype)
    except Exception:
        return str(dtype)


def check_array_like(x, what, expected):
    """Raises unless `x` is an array or tensor of real numbers.

    Lists are refused (Keras treats a list as several inputs), as are
    strings, ragged and complex values, with what was expected and given.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        if isinstance(x, (list, tuple)):
            try:
                kind = np.asarray(x).dtype.kind
                given = f"a {type(x).__name__} (convert it with np.asarray)"
                if kind not in "iuf":
                    given = f"a {type(x).__name__} of {np.asarray(x).dtype} values"
            except ValueError:
                given = f"a ragged nested {type(x).__name__} (rows of unequal length)"
        else:
            given = f"a {type(x).__name__}"
        raise ValueError(f"Expected {what} as an array or tensor {expected}. Received {given}.")
    name = _dtype_name(x)
    if not ("float" in name or "int" in name) or "complex" in name:
        raise ValueError(
            f"Expected {what} holding real numbers {expected}. Received dtype {name}."
        )


def check_image_batch(shape_or_images, patch_size=None, image_shape=None):
    """Checks rank, channels and size of an image batch `(B, H, W, C)`.

    Args:
        shape_or_images: a shape tuple or anything with a `.shape`.
        patch_size: if given, `H` and `W` must be divisible by it.
        image_shape: if given, the expected `(H, W, C)`.

    Raises:
        ValueError: naming the expected and the received shape.
    """
    if isinstance(shape_or_images, (tuple, list)) and all(
        d is None or isinstance(d, (int, np.integer)) for d in shape_or_images
    ):
        shape = tuple(shape_or_images)
    else:
        shape = static_shape(shape_or_images)
    if len(shape) != 4:
        expected = (
            f"(batch, {image_shape[0]}, {image_shape[1]}, {image_shape[2]})"
            if image_shape
            else "(batch, height, width, channels)"
        )
        raise ValueError(
            f"Expected a rank-4 batch of channels-last images {expected}. "
            f"Received a tensor of rank {len(shape)} with shape {shape}. "
            "Add a batch axis with `x[None]` for a single image."
        )
    if (
        shape[1] in (1, 3)
        and shape[3] is not None
        and shape[3] not in (1, 3, 4)
        and (image_shape is None or image_shape[0] != shape[1])
    ):
        raise ValueError(
            "Expected channels-last images (batch, height, width, channels); "
            "an APM reads them so whatever `keras.config.image_data_format()` "
            f"is. Received shape {shape}, which looks channels-first: "
            "transpose it, e.g. `np.moveaxis(images, 1, -1)`."
        )
    if image_shape is not None:
        for axis, name in ((1, "height"), (2, "width"), (3, "channels")):
            want, got = image_shape[axis - 1], shape[axis]
            if want is not None and got is not None and want != got:
                raise ValueError(
                    f"Expected images of shape (batch, {image_shape[0]}, "
                    f"{image_shape[1]}, {image_shape[2]}) (channels last). "
                    f"Received shape {shape}: the {name} is {got}, not "
                    f"{want}. Resize with the model's image converter."
                )
    if patch_size is not None:
        for axis, name in ((1, "height"), (2, "width")):
            if shape[axis] is not None and shape[axis] % patch_size:
                raise ValueError(
                    f"Image {name} must be divisible by the patch size "
                    f"{patch_size}. Received shape {shape} ({name} "
                    f"{shape[axis]} = {shape[axis] // patch_size} x "
                    f"{patch_size} + {shape[axis] % patch_size})."
                )


def check_float_dtype(x, what="images"):
    """Raises if `x` does not have a floating dtype."""
    import keras

    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    dtype = keras.backend.standardize_dtype(dtype)
    if "float" not in dtype:
        raise ValueError(
            f"Expected floating-point {what} (float16, bfloat16, float32 or "
            f"float64). Received dtype {dtype}. Convert "
            + (
                "integer images with the model's image converter or "
                if what == "images"
                else "them with "
            )
            + "`keras.ops.cast(x, 'float32')`."
        )


def check_pixel_dtype(x):
    """Raises unless `x` holds numbers (floats or ints) usable as pixels.

    Raw pixel values in [0, 255] may come as uint8 or float; a bool or
    string tensor is a mistake in the pipeline.
    """
    import keras

    dtype = keras.backend.standardize_dtype(x.dtype)
    if not ("float" in dtype or "int" in dtype):
        raise ValueError(
            "Expected RGB pixel values as floats (or ints) in [0, 255]. "
            f"Received dtype {dtype}."
        )


def check_finite(x, what="images"):
    """Raises if a concrete `x` holds NaN or Inf.

    Inside a traced function (jit, tf.function) the values cannot be read
    back, so the check is skipped there: it guards eager calls.
    """
    from keras import ops

    try:
        values = np.asarray(ops.convert_to_numpy(x), dtype="float32")
    except Exception:  # a tracer or graph tensor: nothing to read.
        return
    bad = ~np.isfinite(values)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"Expected finite {what}. Received {int(bad.sum())} NaN/Inf "
            f"values of {values.size} (first at index {first}: "
            f"{values[first]})."
        )


def check_locations(locations, grid_shape):
    """Checks `(L, 2)` `(y, x)` locations against an `(h, w)` grid.

    Fractional locations are allowed anywhere in `[0, h - 1] x [0, w - 1]`.
    Lists of numbers are accepted; strings, ragged lists and complex values
    are refused (a cast would silently drop imaginary parts).
    """
    import keras
    from keras import ops

    if isinstance(locations, (list, tuple)):
        try:
            array = np.asarray(locations)
        except ValueError:
            raise ValueError(
                "Expected locations of shape (num_locations, 2) holding "
                "(y, x). Received a ragged nested list (rows of unequal "
                "length)."
            ) from None
        if array.size and array.dtype.kind not in "iuf":
            raise ValueError(
                "Expected numeric (y, x) locations. Received a list of "
                f"{array.dtype} values."
            )
    elif hasattr(locations, "dtype"):
        name = _dtype_name(locations)
        if "complex" in name or not ("float" in name or "int" in name or name == "bool"):
            raise ValueError(
                f"Expected real (y, x) locations (int or float). Received dtype {name}."
            )
    else:
        raise ValueError(
            "Expected locations as an array, tensor or list of shape "
            f"(num_locations, 2). Received a {type(locations).__name__}."
        )
    shape = static_shape(locations)
    if len(shape) != 2 or shape[1] != 2:
        raise ValueError(
            "Expected locations of shape (num_locations, 2) holding (y, x). "
            f"Received shape {shape}."
        )
    dtype = getattr(locations, "dtype", None)
    if dtype is None:
        dtype = np.asarray(locations).dtype
    if keras.backend.standardize_dtype(dtype) == "bool":
        raise ValueError("Expected numeric (y, x) locations. Received bool.")
    try:
        values = ops.convert_to_numpy(ops.cast(locations, "float32"))
    except Exception:  # symbolic or traced: checked at trace time only.
        return
    if values.size == 0:
        return
    h, w = grid_shape
    if not np.isfinite(values).all():
        raise ValueError("Expected finite (y, x) locations. Received NaN/Inf.")
    lo, hi = values.min(axis=0), values.max(axis=0)
    if lo[0] < 0 or lo[1] < 0 or hi[0] > h - 1 or hi[1] > w - 1:
        raise ValueError(
            f"Locations must lie inside the {h}x{w} grid: 0 <= y <= {h - 1} "
            f"and 0 <= x <= {w - 1}. Received y in [{lo[0]}, {hi[0]}] and x "
            f"in [{lo[1]}, {hi[1]}]."
        )


# Largest value a batch of converted floats can have and still be refused:
# converters map pixels to [0, 1] ("unit", "minmax") or around 0
# (standardised, which also gives negative values).
CONVERTED_MAX = 1.0 + 1e-3

RAW_PIXELS_HINT = (
    "Pass raw pixels (uint8, or floats in [0, 255]): the distiller and the "
    "test-time trainer apply the student's and the teacher's own image "
    "converters themselves, so do not map an image converter into the "
    "pipeline."
)


def check_raw_pixels(images, what="images"):
    """Raises a ValueError if a concrete float batch looks already converted.

    Integer images are raw pixels by type. A float batch is refused if it
    has a negative value (standardised input) or if its maximum is at most
    `1 + 1e-3` (input scaled to `[0, 1]`): raw photos of `[0, 255]` never
    are that dark over a whole batch. Symbolic tensors pass (nothing to read).

    Example:
    >>> check_raw_pixels(np.full((2, 8, 8, 3), 0.5, "float32"))
    Traceback (most recent call last):
    ValueError: Expected raw RGB pixels in [0, 255] ...
    """
    dtype = getattr(images, "dtype", None)
    name = getattr(dtype, "name", str(dtype))
    if "float" not in name:
        return
    try:
        values = np.asarray(images, dtype="float32")
    except Exception:  # symbolic or traced: the pipeline's assert checks it
        try:
            from keras import ops

            values = np.asarray(ops.convert_to_numpy(images), "float32")
        except Exception:
            return
    if values.size == 0:
        return
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    if low < 0.0 or high <= CONVERTED_MAX:
        raise ValueError(
            f"Expected raw RGB pixels in [0, 255] as {what}. Received float "
            f"values in [{low:.4g}, {high:.4g}], which look already "
            f"converted (scaled to [0, 1] or standardised). {RAW_PIXELS_HINT}"
        )
