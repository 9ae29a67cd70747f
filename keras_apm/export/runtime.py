"""Runs an exported APM (TFLite file or SavedModel) on NumPy arrays."""

import os

import numpy as np

from keras_apm.export.checks import SIGNATURES
from keras_apm.models.apm.apm_outputs import FEATURES
from keras_apm.utils.optional import require
from keras_apm.utils.validation import check_float_dtype
from keras_apm.utils.validation import check_image_batch
from keras_apm.utils.validation import check_locations


class ExportedAPM:
    """An exported APM, loaded and ready to run.

    The same three calls as the Keras model, on NumPy arrays: `predict`
    (the full grid), `trigger_column` and `evaluate_locations`. A `.tflite`
    file runs with the LiteRT interpreter (`ai_edge_litert`, else the copy
    inside TensorFlow); a SavedModel with `tf.saved_model.load`. Neither
    needs Keras, so this works under any backend.

    Args:
        path: a `.tflite` file or SavedModel directory from
            `keras_apm.export`.
        num_threads: TFLite only: interpreter threads (default: LiteRT's).

    Example:
    ```python
    from keras_apm.export import load
    runner = load("apm.tflite", num_threads=2)
    grid = runner.predict(images)               # dict of (B, h, w, .)
    trigger = runner.trigger_column(images)     # (B, n), once per image
    some = runner.evaluate_locations(trigger, [[2.5, 3.0], [0.0, 7.0]])
    some["features"].shape                      # (B, 2, D)
    ```
    """

    def __init__(self, path, num_threads=None):
        path = os.fspath(path)
        if os.path.isfile(path) and path.endswith(".tflite"):
            self.format = "tflite"
            loaded = _load_tflite(path, num_threads)
        elif os.path.isdir(path):
            if num_threads is not None:
                raise ValueError(
                    "`num_threads` applies to TFLite files only; a SavedModel "
                    "uses TensorFlow's threads (`tf.config.threading`). "
                    f"Received num_threads={num_threads} for {path!r}."
                )
            self.format = "saved_model"
            loaded = _load_saved_model(path)
        else:
            raise ValueError(
                "Expected a '.tflite' file or a SavedModel directory written "
                f"by keras_apm.export. Received {path!r}, which "
                f"{'does not exist' if not os.path.exists(path) else 'is not'}."
            )
        self.path = path
        # The interpreter or the SavedModel object owns the functions.
        self._owner, self._functions, shapes = loaded
        self.image_shape = tuple(shapes["images"][1:])
        self.grid_shape = tuple(shapes[FEATURES][1:3])
        self.trigger_dim = int(shapes["trigger"][1])

    def _images(self, images):
        check_image_batch(images, image_shape=self.image_shape)
        check_float_dtype(images)
        return np.ascontiguousarray(images, dtype="float32")

    def _run_images(self, name, images):
        images = self._images(images)
        if images.shape[0] == 0:
            # TFLite's kernels (XNNPack) refuse a 0-row tensor: run one
            # blank image for the outputs' shapes and dtypes, keep 0 rows.
            one = np.zeros((1,) + self.image_shape, "float32")
            outputs = self._functions[name](images=one)
            return {k: v[:0] for k, v in outputs.items()}
        return self._functions[name](images=images)

    def predict(self, images):
        """The full grid: dict of `(B, h, w, .)` (and `"global"` `(B, D)`;
        `"logits"` `(B, classes)` for an exported classifier). 0 images
        give empty outputs, as the Keras model does."""
        return self._run_images("serving_default", images)

    __call__ = predict

    def trigger_column(self, images):
        """The `(B, n)` trigger columns of `images`."""
        return self._run_images("trigger_column", images)["trigger"]

    def evaluate_locations(self, trigger, locations):
        """Answers `(L, 2)` `(y, x)` locations: dict of `(B, L, .)`."""
        trigger = np.asarray(trigger)
        if trigger.ndim != 2 or trigger.shape[1] != self.trigger_dim:
            raise ValueError(
                f"Expected trigger columns of shape (batch, "
                f"{self.trigger_dim}). Received shape {trigger.shape}."
            )
        locations = np.asarray(locations, dtype="float32")
        check_locations(locations, self.grid_shape)
        batch, num_locations = trigger.shape[0], locations.shape[0]
        if batch == 0 or num_locations == 0:
            # As in `_run_images`: shapes from one real call, 0 rows kept.
            rows = max(batch, 1)
            outputs = self._functions["evaluate_locations"](
                trigger=np.zeros((rows, self.trigger_dim), "float32"),
                locations=np.zeros((1, 2), "float32"),
            )
            return {k: v[:batch, :num_locations] for k, v in outputs.items()}
        return self._functions["evaluate_locations"](
            trigger=np.ascontiguousarray(trigger, dtype="float32"),
            locations=np.ascontiguousarray(locations),
        )


def _check_signatures(path, found):
    missing = [k for k in SIGNATURES if k not in found]
    if missing:
        raise ValueError(
            f"{path!r} lacks the signatures {missing} of an exported APM "
            f"(found {sorted(found)})."
        )


def _load_tflite(path, num_threads):
    """`(interpreter, functions, input shapes, output shapes)` of a file."""
    # TensorFlow 2.21 no longer ships `tf.lite.Interpreter`: LiteRT it is.
    litert = require("ai_edge_litert.interpreter", extra="export")
    Interpreter = litert.Interpreter

    interpreter = Interpreter(model_path=path, num_threads=num_threads)
    _check_signatures(path, interpreter.get_signature_list())
    # A signature runner resizes its inputs (any batch, any number of
    # locations) before it runs.
    functions = {k: interpreter.get_signature_runner(k) for k in SIGNATURES}
    details = {
        **functions["serving_default"].get_input_details(),
        **functions["evaluate_locations"].get_input_details(),
        **functions["serving_default"].get_output_details(),
    }
    shapes = {
        k: tuple(int(n) for n in v["shape_signature"])
        for k, v in details.items()
    }
    return interpreter, functions, shapes


def _load_saved_model(path):
    """`(loaded SavedModel, functions, shapes)` of a directory."""
    tf = require("tensorflow", extra="export")

    loaded = tf.saved_model.load(path)
    _check_signatures(path, loaded.signatures)

    def numpy_function(signature):
        def run(**inputs):
            outputs = signature(**{k: tf.constant(v) for k, v in inputs.items()})
            return {k: v.numpy() for k, v in outputs.items()}

        return run

    functions = {k: numpy_function(loaded.signatures[k]) for k in SIGNATURES}
    grid, evaluate = (
        loaded.signatures["serving_default"],
        loaded.signatures["evaluate_locations"],
    )
    specs = {
        **grid.structured_input_signature[1],
        **evaluate.structured_input_signature[1],
        **grid.structured_outputs,
    }
    return loaded, functions, {k: tuple(v.shape) for k, v in specs.items()}


def load(path, num_threads=None):
    """Loads an exported APM (`.tflite` file or SavedModel directory).

    Example:
    ```python
    from keras_apm.export import load
    runner = load("apm_int8.tflite", num_threads=2)
    runner.predict(images)["features"]
    ```
    """
    return ExportedAPM(path, num_threads=num_threads)
