"""The offline digits recipes behind `keras-apm demo` and `apm_tiny_digits`.

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

# The settings of the shipped preset (teacher, data set, epochs, trunk,
# learning rate): the "digits" entry of `keras_apm.distill.recipes.RECIPES`.
# `keras-apm demo` runs the shorter "digits_demo" entry.
RECIPE = RECIPES["digits"]

STAGES = (
    "Building the {dataset} data set (TFDS, offline) and scoring the "
    "teacher",
    "Caching {teacher}'s targets for the train and test splits in {cache}",
    "Distilling {teacher} into a fresh APM: {epochs} epochs of fit",
    "Evaluating the student on the train and test splits",
    "Writing {output}/summary.json and summary.png",
)


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


class _Stages(keras.callbacks.Callback):
    """Prints the numbered stage lines and records fit's curves."""

    def __init__(self, log, **names):
        super().__init__()
        self.log = log
        self.names = names
        self.history = {}

    def stage(self, index):
        if self.log is not None:
            text = STAGES[index].format(**self.names)
            self.log(f"[{index + 1}/{len(STAGES)}] {text}")

    def on_train_begin(self, logs=None):
        self.stage(2)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))

    def on_train_end(self, logs=None):
        self.stage(3)


def distill_digits(output, epochs=None, seed=0, data_dir=None,
                   verbose="auto", resume=False, overwrite=False,
                   recipe="digits", log=None, figure=False):
    """Distills `vit_tiny_digits` into a fresh APM; writes `summary.json`.

    Under `output`: `student/` (the APM preset), `metrics.json` (see
    `keras_apm.distill.distill`), `cache/` (the teacher's targets) and
    `summary.json` with `grid_cosine` and `global_cosine` (student vs
    teacher, mean over the test split), `teacher_accuracy`, `seconds`,
    the recipe, seed and backend, and the per-epoch `history`.
    `resume` and `overwrite` are `keras_apm.distill.distill`'s.

    Args:
        recipe: `"digits"` (the shipped preset's) or `"digits_demo"`
            (`keras-apm demo`'s).
        log: None, or a callable (e.g. `print`) given one line per stage.
        figure: also write `summary.png` (test digits, RGB decode, APM and
            teacher islands, and the training curves; needs matplotlib).

    Example:
    >>> summary = distill_digits("apm_demo", recipe="digits_demo")
    >>> summary["grid_cosine"]
    0.9...
    """
    import keras_apm.data.sklearn_digits  # noqa: F401  (registers the builder)
    from keras_apm.distill.recipe_runner import distill
    from keras_apm.distill.recipe_runner import load_teacher
    from keras_apm.distill.recipes import get_recipe

    start = time.perf_counter()
    overrides = {"seed": seed}
    if epochs is not None:
        overrides["epochs"] = epochs
    settings = get_recipe(recipe, **overrides)
    cache = os.path.join(output, "cache")
    stages = _Stages(
        log, dataset=settings.dataset, teacher=settings.teacher,
        cache=cache, epochs=settings.epochs, output=output,
    )
    stages.stage(0)
    teacher = load_teacher(settings.teacher)
    accuracy = teacher_accuracy(teacher, data_dir=data_dir)
    stages.stage(1)
    metrics = distill(
        # By name, so that metrics.json names the teacher by its preset.
        settings.teacher, output=output, recipe=recipe, **overrides,
        cache=cache, data_dir=data_dir, verbose=verbose, resume=resume,
        overwrite=overwrite, callbacks=[stages],
    )  # fmt: skip
    stages.stage(4)
    test = metrics["validation"]
    summary = {
        "grid_cosine": test["grid_cosine"],
        "global_cosine": test["global_cosine"],
        "teacher_accuracy": accuracy,
        "seconds": time.perf_counter() - start,
        "teacher": settings.teacher,
        "dataset": f"{settings.dataset} (train: fit, test: figures)",
        "recipe": recipe if isinstance(recipe, str) else None,
        "epochs": settings.epochs,
        "seed": seed,
        "student": os.path.join(output, "student"),
        "backend": keras.backend.backend(),
        "history": stages.history,
    }
    if figure:
        from keras_apm.visualize.files import save_figure

        save_figure(
            summary_figure(output, teacher, stages.history, data_dir),
            os.path.join(output, "summary.png"),
        )
    summary["seconds"] = time.perf_counter() - start
    write_json(os.path.join(output, "summary.json"), summary)
    return summary


def summary_figure(output, teacher, history, data_dir=None, num_images=4):
    """The demo's figure: test digits | RGB decode | APM and teacher islands,
    and the training curves (grid and global cosine per epoch).

    Args:
        output: the run directory (its `student/` is drawn).
        teacher: the `keras_apm.teachers.Teacher`.
        history: `{metric: [value per epoch]}` (fit's logs), may be empty.
        num_images: test digits shown, one row each.

    Returns:
        A `matplotlib.figure.Figure`.

    Example:
    >>> save_figure(summary_figure("apm_demo", teacher, {}), "summary.png")
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from keras_apm.data import image_dataset
    from keras_apm.models.apm import load_apm
    from keras_apm.visualize.figures import islands_figure
    from keras_apm.visualize.files import figure_to_array
    from keras_apm.visualize.images import to_display
    from keras_apm.visualize.islands import island_colors

    student_dir = os.path.join(output, "student")
    student, converter = load_apm(student_dir)
    kwargs = {} if data_dir is None else {"data_dir": data_dir}
    ds = image_dataset(
        RECIPE.dataset, split="test", batch_size=num_images,
        image_size=tuple(student.image_shape[:2]), **kwargs,
    )
    images = next(iter(ds.as_numpy_iterator()))
    out = student(converter(images))
    features = keras.ops.convert_to_numpy(out["features"])
    grids = keras.ops.convert_to_numpy(teacher(images)["grid"])
    rgb = out.get("rgb")
    # One colouring, fitted on the teacher's grids: same colour, same
    # feature, in the APM's and the teacher's columns alike.
    reference = list(grids)
    panels = islands_figure(
        list(images / 255.0),
        None if rgb is None else list(to_display(rgb, converter)),
        island_colors(list(features), reference=reference),
        island_colors(list(grids), reference=reference),
    )
    fig = Figure(figsize=(14, 8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(
        1, 2, gridspec_kw={"width_ratios": [1.6, 1]}
    )
    left.imshow(figure_to_array(panels))
    left.set_axis_off()
    for key, style in (
        ("grid_cosine", "-"), ("global_cosine", "-"),
        ("val_grid_cosine", "--"), ("val_global_cosine", "--"),
    ):
        values = history.get(key)
        if values:
            epochs = np.arange(1, len(values) + 1)
            label = key.replace("val_", "test ").replace("_", " ")
            if not key.startswith("val_"):
                label = "train " + label
            right.plot(epochs, values, style, label=label)
    right.set_xlabel("epoch")
    right.set_ylabel("cosine to the teacher")
    right.set_ylim(0, 1)
    right.grid(alpha=0.3)
    if history:
        right.legend(loc="lower right")
    right.set_title("training curves")
    return fig
