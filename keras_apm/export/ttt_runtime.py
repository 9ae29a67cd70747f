"""Running an on-device TTT file (`export_ttt`) with the LiteRT interpreter.

`LiteRTTestTimeTrainer(path)` drives the file's signatures the way a phone
would (`reset`, `targets`, `steps x train`, `classify` per image) with the
stock `ai_edge_litert` interpreter, no Flex delegate, and answers like
`keras_apm.TestTimeTrainer.adapt`, so `keras_apm.ttt.evaluate` and
`keras-apm ttt --tflite FILE` take it in place of the Keras trainer.
"""

import os
import time

import numpy as np

from keras_apm.ttt.subsets import step_indices


class _FileClassifier:
    """What `keras_apm.ttt.evaluate` reads of a classifier."""

    class_names = None

    def __init__(self, num_classes):
        self.num_classes = int(num_classes)

    def get_config(self):
        return {"class": "LiteRT file", "num_classes": self.num_classes}


class LiteRTTestTimeTrainer:
    """Test-time training through an on-device TTT LiteRT file.

    Args:
        path: a `.tflite` file written by `keras_apm.export.export_ttt`
            (`keras-apm export --ttt`).
        num_threads: interpreter threads (None: LiteRT's default).
        steps: optimizer steps per image (default: the file's).

    Example:
    ```python
    from keras_apm.export.ttt_runtime import LiteRTTestTimeTrainer
    trainer = LiteRTTestTimeTrainer("ttt.tflite", num_threads=1)
    result = trainer.adapt(images)  # raw RGB, values 0..255
    result["predictions"], result["loss"]  # (N,), (N, steps)
    ```
    """

    __test__ = False  # Not a pytest class, despite the name.

    def __init__(self, path, num_threads=None, steps=None):
        from keras_apm.utils.optional import require

        require("ai_edge_litert", extra="export")
        from ai_edge_litert.interpreter import Interpreter

        from keras_apm.export.ttt_litert import TTT_SIGNATURES

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"No on-device TTT file at {path!r}.")
        try:
            self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"{path!r} is not a LiteRT file: {e}") from None
        found = set(self.interpreter.get_signature_list())
        missing = [s for s in TTT_SIGNATURES if s not in found]
        if missing:
            raise ValueError(
                f"{path!r} is not an on-device TTT file: it lacks the "
                f"signatures {missing} (found {sorted(found)}). Write one with "
                "`keras-apm export --ttt`."
            )
        self.path = path
        self.num_threads = num_threads
        self._run = {
            name: self.interpreter.get_signature_runner(name)
            for name in TTT_SIGNATURES
        }
        settings = self._run["settings"]()
        self.grid_shape = tuple(int(x) for x in settings["grid_shape"])
        self.locations_per_step = int(settings["locations_per_step"]) or None
        self.seed = int(settings["seed"])
        self.steps = int(settings["steps"]) if steps is None else int(steps)
        if self.steps < 1:
            raise ValueError(f"`steps` must be >= 1. Received {steps!r}.")
        details = self._run["targets"].get_input_details()["images"]
        self.image_shape = tuple(int(x) for x in details["shape"][1:])
        self._indices = step_indices(
            self.grid_shape, self.locations_per_step, self.steps, self.seed
        )
        zeros = np.zeros((1,) + self.image_shape, "float32")
        probe = self._run["targets"](images=zeros)
        self.classifier = _FileClassifier(probe["teacher_scores"].shape[-1])
        self.batch_size = 32  # images per `evaluate` batch (one at a time here)

    def settings(self):
        """The settings, JSON-serialisable (what `keras-apm ttt` records)."""
        return {
            "engine": "litert",
            "tflite": self.path,
            "num_threads": self.num_threads,
            "steps": self.steps,
            "locations_per_step": self.locations_per_step,
            "seed": self.seed,
            "grid_shape": list(self.grid_shape),
        }

    def adapt_image(self, image):
        """Adapts the file's student to one raw image `(H, W, 3)`.

        Returns:
            dict: `"scores"` and `"teacher_scores"` `(C,)`, `"global"`
            `(D,)`, `"target"` `(D,)`, `"loss"` `(steps,)`.
        """
        images = np.asarray(image, "float32")[None]
        run = self._run
        targets = run["targets"](images=images)
        run["reset"]()
        losses = [
            float(run["train"](images=images, target=targets["target"], indices=i)[
                "loss"
            ][0])
            for i in self._indices
        ]
        out = run["classify"](images=images)
        return {
            "scores": out["scores"][0],
            "teacher_scores": targets["teacher_scores"][0],
            "global": out["global"][0],
            "target": targets["target"][0],
            "loss": np.asarray(losses, "float32"),
        }

    def adapt(self, images, callback=None):
        """Test-time-trains on each image in turn and classifies.

        Args:
            images: `(N, H, W, 3)` raw RGB images, values in `[0, 255]`, at
                the file's input size.
            callback: optional `callback(num_done)` after each image.

        Returns:
            dict of NumPy arrays, as `TestTimeTrainer.adapt`:
            `"predictions"`, `"teacher_predictions"`, `"scores"`,
            `"teacher_scores"`, `"global"`, `"target"`, `"loss"`
            `(N, steps)` and `"seconds"`.
        """
        images = np.asarray(images, "float32")
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"Expected raw RGB images of shape (N, {self.image_shape[0]}, "
                f"{self.image_shape[1]}, 3) for {self.path!r}. Received "
                f"shape {images.shape}."
            )
        if len(images) == 0:
            raise ValueError("Expected at least one image. Received an empty batch.")
        start = time.perf_counter()
        parts = []
        for i, image in enumerate(images):
            parts.append(self.adapt_image(image))
            if callback is not None:
                callback(i + 1)
        result = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
        result["predictions"] = np.argmax(result["scores"], axis=-1)
        result["teacher_predictions"] = np.argmax(result["teacher_scores"], axis=-1)
        result["seconds"] = time.perf_counter() - start
        return result

    def predict(self, images):
        """`(N,)` class indices of the test-time-trained students."""
        return self.adapt(images)["predictions"]
