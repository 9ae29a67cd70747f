"""The offline digits recipe behind `keras-apm demo` and `apm_tiny_digits`.

It builds the `sklearn_digits` TFDS data set (scikit-learn's real 8x8
digits, no download), distills the shipped `vit_tiny_digits` teacher into a
fresh APM with `fit` on cached teacher targets, and reports on the test
split how closely the student follows the teacher.
"""

import os
import time

import keras
import numpy as np

from keras_apm.distill.recipes import RECIPES
from keras_apm.utils.files import write_json

# The settings (teacher, data set, epochs, trunk, learning rate) are the
# "digits" entry of `keras_apm.distill.recipes.RECIPES`.
RECIPE = RECIPES["digits"]


def teacher_accuracy(teacher, split="test", data_dir=None, batch_size=120):
    """Top-1 accuracy of the teacher's own classifier head on a split.

    Example:
    >>> teacher_accuracy(Teacher.from_preset("vit_tiny_digits"))
    0.99...
    """
    from keras_apm.data import image_dataset

    kwargs = {} if data_dir is None else {"data_dir": data_dir}
    ds = image_dataset(
        RECIPE.dataset, split=split, batch_size=batch_size, with_labels=True,
        **kwargs,
    )
    correct = total = 0
    for images, labels in ds.as_numpy_iterator():
        logits = keras.ops.convert_to_numpy(teacher.classifier_logits(images))
        correct += int(np.sum(np.argmax(logits, axis=-1) == labels))
        total += len(labels)
    return correct / total


def distill_digits(output, epochs=None, seed=0, data_dir=None,
                   verbose="auto", resume=False, overwrite=False):
    """Distills `vit_tiny_digits` into a fresh APM; writes `summary.json`.

    Under `output`: `student/` (the APM preset), `metrics.json` (see
    `keras_apm.distill.distill`), `cache/` (the teacher's targets) and
    `summary.json` with `grid_cosine` and `global_cosine` (student vs
    teacher, mean over the test split), `teacher_accuracy` and `seconds`.
    `resume` and `overwrite` are `keras_apm.distill.distill`'s.

    Example:
    >>> summary = distill_digits("apm_demo")
    >>> summary["grid_cosine"]
    0.9...
    """
    import keras_apm.data.sklearn_digits  # noqa: F401  (registers the builder)
    from keras_apm.distill.recipe import distill
    from keras_apm.distill.recipe import load_teacher

    start = time.perf_counter()
    overrides = {"seed": seed}
    if epochs is not None:
        overrides["epochs"] = epochs
    recipe = RECIPE.replace(**overrides)
    teacher = load_teacher(recipe.teacher)
    accuracy = teacher_accuracy(teacher, data_dir=data_dir)
    metrics = distill(
        teacher,
        output=output,
        recipe="digits",
        **overrides,
        cache=os.path.join(output, "cache"),
        data_dir=data_dir,
        verbose=verbose,
        resume=resume,
        overwrite=overwrite,
    )
    test = metrics["validation"]
    summary = {
        "grid_cosine": test["grid_cosine"],
        "global_cosine": test["global_cosine"],
        "teacher_accuracy": accuracy,
        "seconds": time.perf_counter() - start,
        "teacher": recipe.teacher,
        "dataset": f"{recipe.dataset} (train: fit, test: figures)",
        "epochs": recipe.epochs,
        "student": os.path.join(output, "student"),
        "backend": keras.backend.backend(),
    }
    write_json(os.path.join(output, "summary.json"), summary)
    return summary
