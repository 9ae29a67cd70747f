"""Argument checks of the export functions: they fail before any work."""

import os

import numpy as np

from keras_apm.utils.files import check_writable_dir

FORMATS = ("saved_model", "tflite")
# Keras' names (`model.export(path, format=...)`) for the same two formats.
FORMAT_ALIASES = {"tf_saved_model": "saved_model", "litert": "tflite"}
QUANTIZATIONS = ("float16", "dynamic_int8", "int8")
# The exported functions, with the same names in both formats.
SIGNATURES = ("serving_default", "trigger_column", "evaluate_locations")


def canonical_format(format):
    """`"saved_model"` or `"tflite"`; Keras' `"tf_saved_model"` and
    `"litert"` name the same formats."""
    if isinstance(format, str) and format in FORMAT_ALIASES:
        return FORMAT_ALIASES[format]
    if format not in FORMATS:
        raise ValueError(
            f"`format` must be one of {FORMATS} (or Keras' names "
            f"{tuple(FORMAT_ALIASES)}). Received: format={format!r}"
        )
    return format


def check_options(format, quantization, representative_data):
    """Checks `format` and `quantization`, and that the data fits them."""
    format = canonical_format(format)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be None or one of {QUANTIZATIONS}. "
            f"Received: quantization={quantization!r}"
        )
    if quantization is not None and format != "tflite":
        raise ValueError(
            "Quantization applies to TFLite only: a SavedModel is exported "
            "in float32. Use format='tflite' or drop `quantization`. "
            f"Received: format={format!r}, quantization={quantization!r}"
        )
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "quantization='int8' quantizes activations too, so it needs "
            "`representative_data`: a float array (N, H, W, C) of typical "
            "model inputs (about 100 images) to calibrate their ranges. "
            "Received: representative_data=None. Use quantization="
            "'dynamic_int8' to quantize the weights only."
        )
    if representative_data is not None and quantization != "int8":
        raise ValueError(
            "`representative_data` only calibrates quantization='int8'. "
            f"Received it with quantization={quantization!r}."
        )


def check_target(path, format, overwrite):
    """Checks an output path; returns it as a string.

    A missing parent directory is created by the export (`make_parent`), so
    the nearest existing one must be a writable directory; a TFLite path
    ends with `.tflite`, a SavedModel path does not; an existing `path` is
    replaced only with `overwrite`, and only by the same kind of thing (file
    or directory).
    """
    format = canonical_format(format)
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"`path` must be a non-empty path. Received {path!r}")
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    existing = parent
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"Cannot create the parent directory of {path!r}: {existing!r} "
            "is a file. Choose another path."
        )
    # Before any work: a read-only folder would otherwise fail at the end.
    check_writable_dir(existing, f"the folder of {path!r}")
    if format == "tflite" and not path.endswith(".tflite"):
        raise ValueError(
            "A TFLite export is one file whose name ends with '.tflite'. "
            f"Received: path={path!r}"
        )
    if format == "saved_model" and path.endswith(".tflite"):
        raise ValueError(
            f"A SavedModel is a directory, but {path!r} ends with '.tflite'. "
            "Pass format='tflite' for a TFLite file, or a directory name."
        )
    if os.path.lexists(path):
        if not overwrite:
            raise ValueError(
                f"{path!r} already exists. Pass overwrite=True "
                "(`--overwrite` on the command line) to replace it."
            )
        is_dir = os.path.isdir(path) and not os.path.islink(path)
        if is_dir != (format == "saved_model"):
            raise ValueError(
                f"{path!r} exists and is a {'directory' if is_dir else 'file'}"
                f", but a {format} export is a "
                f"{'directory' if format == 'saved_model' else 'file'}. "
                "Remove it yourself or choose another path."
            )
    return path


def make_parent(path):
    """Creates the missing parent directories of an output `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def check_representative_data(data, image_shape):
    """Returns calibration images as a float32 `(N, H, W, C)` array."""
    try:
        images = np.asarray(data)
    except Exception as e:
        raise ValueError(
            "`representative_data` must be an array of images (N, H, W, C). "
            f"Received a {type(data).__name__} that is not one ({e})."
        ) from None
    if images.ndim != 4 or images.shape[1:] != tuple(image_shape):
        raise ValueError(
            f"`representative_data` must have shape (N, {image_shape[0]}, "
            f"{image_shape[1]}, {image_shape[2]}): model inputs, resized and "
            f"scaled by the image converter. Received shape {images.shape}."
        )
    if len(images) == 0:
        raise ValueError(
            "`representative_data` holds no images. Expected about 100."
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            "`representative_data` must hold float model inputs (after the "
            f"image converter). Received dtype {images.dtype}."
        )
    if not np.isfinite(images).all():
        raise ValueError("`representative_data` holds NaN or Inf values.")
    return images.astype("float32")
