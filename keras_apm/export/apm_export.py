"""`keras_apm.export`: an APM (or APM classifier) -> SavedModel or TFLite."""

import os

import keras
import numpy as np

from keras_apm.export.checks import canonical_format
from keras_apm.export.checks import check_options
from keras_apm.export.checks import check_representative_data
from keras_apm.export.checks import check_target
from keras_apm.export.exportable import load_exportable
from keras_apm.export.checks import make_parent
from keras_apm.utils.files import temporary_directory
from keras_apm.utils.files import terminate_as_exit

# `export_variants` names: "float32" etc. are TFLite files.
VARIANTS = ("saved_model", "float32", "float16", "dynamic_int8", "int8")


def export(
    model_or_preset,
    path,
    format="saved_model",
    quantization=None,
    representative_data=None,
    overwrite=False,
):
    """Exports an APM as a TensorFlow SavedModel or a TFLite (LiteRT) file.

    Works under every Keras backend: under TensorFlow in this process, with
    Keras' `keras.export.ExportArchive`; under JAX and PyTorch the model is
    saved as a preset and exported by a TensorFlow-backend subprocess. The
    export computes in float32 whatever the model's dtype policy;
    `quantization` is how a TFLite file gets smaller. The artifact is
    written under a temporary name beside `path` and renamed at the end, so
    a failed export leaves nothing half-written.

    Three signatures, the same in both formats: `"serving_default"` (images
    -> the full grid: features, RGB, levels and global where the model has
    them), and the asynchronous pair `"trigger_column"` (images -> `(B, n)`
    trigger) and `"evaluate_locations"` (trigger, `(L, 2)` fractional
    `(y, x)` locations -> `(B, L, .)` answers). Run them with
    `from keras_apm.export import load; load(path)`.

    Args:
        model_or_preset: a `keras_apm.APM` or `keras_apm.APMImageClassifier`,
            or a preset (built-in name, handle or local directory) to load
            one from. A classifier (object or preset saved from one) is
            exported head and all: `"serving_default"` adds `"logits"`.
        path: a directory for `"saved_model"`, a file ending in `.tflite`
            for `"tflite"`. Missing parent directories are created.
        format: `"saved_model"` or `"tflite"` (Keras' names for them,
            `"tf_saved_model"` and `"litert"`, work too).
        quantization: TFLite only. None (float32), `"float16"` (float16
            weights), `"dynamic_int8"` (int8 weights, float activations) or
            `"int8"` (int8 weights and activations; float32 inputs and
            outputs).
        representative_data: for `quantization="int8"` only, where it is
            required: a float array `(N, H, W, C)` of model inputs (after
            the image converter), about 100 typical images.
        overwrite: whether to replace an existing `path`.

    Returns:
        `path`.

    Example:
    ```python
    keras_apm.export("apm_tiny_digits", "apm.tflite", format="tflite",
                     quantization="dynamic_int8")
    from keras_apm.export import load
    runner = load("apm.tflite")
    runner.predict(images)["features"].shape  # (B, 8, 8, D)
    ```
    """
    format = canonical_format(format)
    check_options(format, quantization, representative_data)
    path = check_target(path, format, overwrite)
    job = {
        "path": path,
        "format": format,
        "quantization": quantization,
        "overwrite": bool(overwrite),
    }
    _run_jobs(model_or_preset, [job], representative_data)
    return path


def export_variants(
    model_or_preset,
    directory,
    variants=VARIANTS,
    representative_data=None,
    overwrite=False,
):
    """Exports several variants of one APM at once, into `directory`.

    The model is loaded and its SavedModel written once (one subprocess
    under JAX and PyTorch), then each TFLite variant is converted from it.
    Files: `saved_model/`, `float32.tflite`, `float16.tflite`,
    `dynamic_int8.tflite`, `int8.tflite`.

    Args:
        model_or_preset: as in `export`.
        directory: a directory, created if missing.
        variants: names from `("saved_model", "float32", "float16",
            "dynamic_int8", "int8")`.
        representative_data: as in `export`; required with `"int8"`.
        overwrite: whether to replace existing files.

    Returns:
        dict `{variant: path}`.

    Example:
    ```python
    from keras_apm.export import export_variants
    paths = export_variants(
        "apm_tiny_digits", "exports", representative_data=inputs)
    paths["int8"]  # "exports/int8.tflite"
    ```
    """
    variants = tuple(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or len(set(variants)) != len(variants):
        raise ValueError(
            f"`variants` must be distinct names from {VARIANTS}. "
            f"Received: {variants}"
        )
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(
            f"`directory` must be a directory (created if missing), but "
            f"{directory!r} is a file."
        )
    jobs = []
    for variant in variants:
        format = "saved_model" if variant == "saved_model" else "tflite"
        quantization = variant if variant in VARIANTS[2:] else None
        name = variant if format == "saved_model" else f"{variant}.tflite"
        data = representative_data if variant == "int8" else None
        check_options(format, quantization, data)
        path = check_target(os.path.join(directory, name), format, overwrite)
        jobs.append(
            {
                "path": path,
                "format": format,
                "quantization": quantization,
                "overwrite": bool(overwrite),
            }
        )
    if "int8" not in variants:
        representative_data = None
    _run_jobs(model_or_preset, jobs, representative_data)
    return {variant: job["path"] for variant, job in zip(variants, jobs)}


def _run_jobs(model_or_preset, jobs, representative_data):
    model, preset_dir = _float32_model(model_or_preset)
    images = None
    if representative_data is not None:
        images = check_representative_data(
            representative_data, getattr(model, "backbone", model).image_shape
        )
    for job in jobs:  # every check passed: now the folders may be made
        make_parent(job["path"])
    if keras.backend.backend() == "tensorflow":
        from keras_apm.export.tensorflow_export import export_jobs

        export_jobs(model, jobs, images)
        return
    from keras_apm.export.tensorflow_subprocess import run_in_subprocess

    imports = _head_modules(model)
    if preset_dir is not None:
        run_in_subprocess(preset_dir, jobs, images, imports)
        return
    with terminate_as_exit(), temporary_directory("keras_apm_export_") as tmp:
        preset_dir = os.path.join(tmp, "preset")
        model.save_to_preset(preset_dir)
        run_in_subprocess(preset_dir, jobs, images, imports)


def _head_modules(model):
    """The modules outside Keras and keras_apm that define the layers of
    the model's added heads: the subprocess imports them to rebuild it."""
    backbone = getattr(model, "backbone", model)  # an APMImageClassifier's APM
    modules = []
    for name in backbone.extra_heads:
        module = type(backbone.head_layer(name)).__module__
        if module.split(".")[0] not in ("keras", "keras_hub", "keras_apm"):
            if module not in modules:
                modules.append(module)
    return modules


def _float32_model(model_or_preset):
    """`(float32 APM or APMImageClassifier, its local preset directory or
    None)`."""
    from keras_apm.models.apm.apm_backbone import APM
    from keras_apm.models.apm.apm_image_classifier import APMImageClassifier
    from keras_apm.utils.preset_files import resolve_handle

    preset_dir = None
    if isinstance(model_or_preset, (APM, APMImageClassifier)):
        model = model_or_preset
    elif isinstance(model_or_preset, (str, os.PathLike)):
        model = load_exportable(resolve_handle(os.fspath(model_or_preset)))
        handle = resolve_handle(os.fspath(model_or_preset))
        if os.path.isdir(handle):
            preset_dir = handle
    else:
        raise ValueError(
            "Expected a `keras_apm.APM`, a `keras_apm.APMImageClassifier` or "
            "a preset (name, handle or directory). Received: "
            f"{type(model_or_preset).__name__}"
        )
    if isinstance(model, APMImageClassifier):
        if model.dtype_policy.name != "float32" or (
            model.backbone.dtype_policy.name != "float32"
        ):
            raise ValueError(
                "Export a float32 classifier (the export picks its precision "
                "with `quantization`). Received dtype policy "
                f"{model.dtype_policy.name!r}: rebuild it with dtype='float32'."
            )
        return model, preset_dir
    policy = model.dtype_policy
    if getattr(policy, "quantization_mode", None):
        raise ValueError(
            "Export a float model and pick `quantization` here. The model "
            f"is already quantized by Keras (dtype policy {policy.name!r})."
        )
    if policy.name != "float32":
        # Deployment formats get their precision from `quantization`; a
        # bfloat16 graph does not convert to TFLite and is slow on CPUs.
        config = dict(model.get_config(), dtype="float32")
        copy = APM.from_config(config)
        copy.set_weights([np.asarray(w, "float32") for w in model.get_weights()])
        model, preset_dir = copy, None
    return model, preset_dir
