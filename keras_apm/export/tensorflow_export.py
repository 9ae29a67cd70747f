"""The TensorFlow-backend side of the export: SavedModel and TFLite.

Runs under `KERAS_BACKEND=tensorflow` only (in this process, or in the
subprocess `keras_apm.export.export` starts under JAX and PyTorch).

Both formats carry the same three signatures:

- `"serving_default"`: `images` `(B, H, W, C)` float32 -> the full grid,
  `"features"` `(B, h, w, D)`, `"rgb"` `(B, h, w, 3)`, `"levels"`
  `(B, num_levels, h, w, D)` and `"global"` `(B, D)` where the model has
  them, exactly as `model(images)`; for an `APMImageClassifier`, also
  `"logits"` `(B, num_classes)`, its head's output.
- `"trigger_column"`: `images` -> `"trigger"` `(B, n)`, computed once per
  image.
- `"evaluate_locations"`: `trigger` `(B, n)` and `locations` `(L, 2)`
  float32 `(y, x)` in grid units (fractional allowed) -> `"features"`
  `(B, L, D)`, `"rgb"` `(B, L, 3)`, `"levels"` `(B, L, num_levels, D)`.

The batch `B` and the number of locations `L` are dynamic; the image size
is the model's.
"""

import os
import shutil
import warnings

import keras
import numpy as np

from keras_apm.export.checks import SIGNATURES
from keras_apm.utils.files import atomic_write
from keras_apm.utils.files import temporary_directory
from keras_apm.utils.files import terminate_as_exit
from keras_apm.utils.optional import require
from keras_apm.layers.position_encoding import grid_locations


def _check_backend():
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "This function needs the TensorFlow backend. Received backend "
            f"{keras.backend.backend()!r}; use `keras_apm.export`, which "
            "runs a TensorFlow subprocess under the other backends."
        )


def write_saved_model(model, directory):
    """Writes `model` as a SavedModel with the three APM signatures.

    Uses Keras' own `keras.export.ExportArchive` (what `model.export` uses),
    with one endpoint per signature: `model.export` alone would write only
    the full-grid function.

    Example:
    ```python
    write_saved_model(model, "/tmp/apm_saved_model")
    tf.saved_model.load("/tmp/apm_saved_model").signatures["trigger_column"]
    ```
    """
    _check_backend()
    classifier, model = _split(model)
    h, w = model.grid_shape
    trigger_dim = h * w * model.column_channels
    images = keras.InputSpec(
        shape=(None,) + tuple(model.image_shape), dtype="float32", name="images"
    )
    archive = keras.export.ExportArchive()
    archive.track(model if classifier is None else classifier)

    def serving(images):
        outputs = dict(model(images))
        if classifier is not None:
            outputs["logits"] = classifier_logits(classifier, outputs)
        return outputs

    archive.add_endpoint(
        "serving_default", serving, input_signature=[images]
    )
    archive.add_endpoint(
        "trigger_column",
        # A static width, so TFLite sees (B, n) and not (B, -1).
        lambda images: {
            "trigger": keras.ops.reshape(model.column(images), (-1, trigger_dim))
        },
        input_signature=[images],
    )
    archive.add_endpoint(
        "evaluate_locations",
        # All L locations in one call: an app picks L (its chunk) per call.
        lambda trigger, locations: dict(
            model.field(trigger, locations=locations, chunk_size=None)
        ),
        input_signature=[
            keras.InputSpec(
                shape=(None, trigger_dim), dtype="float32", name="trigger"
            ),
            keras.InputSpec(shape=(None, 2), dtype="float32", name="locations"),
        ],
    )
    archive.write_out(directory, verbose=False)


def _split(model):
    """`(classifier or None, its APM backbone)` of an APM or classifier."""
    from keras_apm.models.apm.apm_backbone import APM

    if isinstance(model, APM):
        return None, model
    return model, model.backbone


def classifier_logits(classifier, outputs):
    """The logits of an `APMImageClassifier` from its backbone's outputs
    (the head of `classifier(images)`, without running the APM twice)."""
    from keras_apm.models.apm.apm_outputs import FEATURES
    from keras_apm.models.apm.apm_outputs import GLOBAL

    if classifier.pooler is None:
        x = outputs[GLOBAL]
    else:
        x = classifier.pooler(outputs[FEATURES])
    return classifier.output_dense(classifier.output_dropout(x))


def _calibration_samples(model, images):
    """Samples of every signature, for the int8 calibrator."""
    model = _split(model)[1]
    triggers = keras.ops.convert_to_numpy(model.trigger_column(images))
    grid = keras.ops.convert_to_numpy(grid_locations(model.grid_shape))
    high = np.array(model.grid_shape, "float32") - 1
    rng = np.random.default_rng(0)

    def samples():
        # One signature after the other; every sample of a signature keeps
        # L = h * w locations, as the calibrator sizes tensors from the first.
        for name in ("serving_default", "trigger_column"):
            for image in images:
                yield name, {"images": image[None]}
        for i, trigger in enumerate(triggers):
            # The grid itself, and fractional locations between its points.
            locations = grid if i % 2 == 0 else (
                rng.random(grid.shape, dtype="float32") * high
            )
            yield "evaluate_locations", {
                "trigger": trigger[None],
                "locations": locations,
            }

    return samples


def saved_model_to_tflite(saved_model_dir, quantization=None, samples=None):
    """Converts an APM SavedModel into TFLite flatbuffer bytes.

    `quantization`: None (float32), `"float16"` (float16 weights),
    `"dynamic_int8"` (int8 weights, float activations) or `"int8"` (int8
    weights and activations calibrated on `samples`; inputs and outputs
    stay float32, so the signatures do not change).
    """
    tf = require("tensorflow", extra="export")

    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=list(SIGNATURES)
    )
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.representative_dataset = samples
    with warnings.catch_warnings():
        # The calibrator runs TensorFlow's deprecated tf.lite.Interpreter.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter")
        return converter.convert()


def export_jobs(model, jobs, representative_data=None):
    """Writes several exports of one float32 model (TensorFlow backend).

    The SavedModel is written once and every TFLite variant is converted
    from it. Each artifact is staged beside its path and renamed into place.

    Args:
        model: a float32 `keras_apm.APM` or `keras_apm.APMImageClassifier`.
        jobs: list of dicts with `"path"`, `"format"`, `"quantization"`,
            `"overwrite"` (already checked).
        representative_data: float32 `(N, H, W, C)` inputs for int8 jobs.
    """
    _check_backend()
    with terminate_as_exit(), temporary_directory("keras_apm_export_") as tmp:
        saved_model = os.path.join(tmp, "saved_model")
        write_saved_model(model, saved_model)
        for job in jobs:
            if job["format"] == "saved_model":

                def write(staged):
                    shutil.copytree(saved_model, staged)

            else:
                samples = None
                if job["quantization"] == "int8":
                    samples = _calibration_samples(model, representative_data)
                data = saved_model_to_tflite(
                    saved_model, job["quantization"], samples
                )

                def write(staged):
                    with open(staged, "wb") as f:
                        f.write(data)

            atomic_write(job["path"], write, overwrite=job["overwrite"])
