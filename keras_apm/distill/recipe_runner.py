"""`distill`: the whole distillation recipe, from names to a saved student.

This is what `keras-apm distill` and `keras-apm demo` run: load a teacher
preset, build (or load) a student sized to it, turn a TFDS name or a folder
into `tf.data` pipelines, optionally cache the teacher's targets on disk
first (the official recipe: the teacher runs once), `fit` with a checkpoint
every epoch, and write the student preset and `metrics.json`.
"""

import contextlib
import os
import re

import keras

from keras_apm.models.apm.apm_student import check_student_teacher
from keras_apm.models.apm.apm_student import load_teacher
from keras_apm.models.apm.apm_student import resolve_student
from keras_apm.distill import distribution
from keras_apm.utils.files import write_json
from keras_apm.utils.progress import fit_verbosity


def _split_or_none(dataset, split, **kwargs):
    """`image_dataset(dataset, split)` or None when the split does not exist."""
    from keras_apm.data import image_dataset

    try:
        return image_dataset(dataset, split=split, **kwargs)
    except ValueError:
        return None


def _batched_inputs(
    teacher, dataset, split, image_size, batch_size, cache, shuffle, seed,
    data_dir, verbose,
):
    """A batched pipeline: cached target dicts, or images for the teacher."""
    from keras_apm.data import cache_teacher_features
    from keras_apm.data import image_dataset
    from keras_apm.data import load_feature_cache

    from keras_apm.data.inputs import model_inputs

    kwargs = {"image_size": image_size}
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    if cache is None:
        # Raw images of each example's own size, resized once to the
        # student's and once to the teacher's size (not the student's image
        # upscaled again by the teacher).
        kwargs.pop("image_size")
        images = image_dataset(
            dataset, split=split, shuffle=shuffle, seed=seed, **kwargs
        )
        return model_inputs(
            images, image_size, batch_size=batch_size,
            teacher_image_size=teacher.image_size, check_first_batch=False,
        )
    # One sub-folder per split expression ("train[:10%]" -> "train_10_").
    folder = os.path.join(cache, re.sub(r"[^A-Za-z0-9_.-]", "_", split))
    if tuple(teacher.image_size) == tuple(image_size):
        images = image_dataset(dataset, split=split, **kwargs)
    else:
        # The teacher gets the original image at its own size; the cache
        # stores the student-sized one.
        kwargs.pop("image_size")
        raw = image_dataset(dataset, split=split, **kwargs)
        images = model_inputs(
            raw, image_size, batch_size=batch_size,
            teacher_image_size=teacher.image_size,
            with_labels=isinstance(raw.element_spec, tuple),
            check_first_batch=False,
        )
    cache_teacher_features(
        teacher, images, folder, image_dtype="float32", verbose=verbose
    )
    return load_feature_cache(
        folder, batch_size=batch_size, shuffle=shuffle, seed=seed,
        teacher=teacher,
    )


def _steps_per_epoch(dataset):
    steps = int(dataset.cardinality())
    if steps < 0:  # unknown (e.g. after a filter): count once.
        steps = sum(1 for _ in dataset)
    return max(steps, 1)


def _optimizer(learning_rate, schedule, total_steps):
    if schedule == "constant":
        return keras.optimizers.Adam(learning_rate)
    # Cosine anneals to 0 over the whole run (all epochs, not just this
    # call's after a resume: the restored step count picks up the curve).
    rate = keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)
    return keras.optimizers.Adam(rate)


def _final(history, prefix=""):
    return {
        k[len(prefix):]: float(v[-1])
        for k, v in history.items()
        if k.startswith(prefix) and (prefix or not k.startswith("val_"))
    }


def distill(teacher=None, dataset=None, output=None, recipe="default",
            student=None, cache=None, resume=False, data_dir=None,
            verbose="auto", overwrite=False, coordinator=None,
            num_processes=None, process_id=None, callbacks=None,
            **overrides):
    """Distills a teacher preset into an APM on a dataset; saves everything.

    Writes, under `output`: `checkpoints/` (one per epoch, the newest
    kept, so `resume=True` continues an interrupted run), `student/` (the
    distilled APM preset, loadable with `keras_apm.APM.from_preset`),
    `metrics.json` (final train and validation losses and cosines, and the
    settings) and `run.json`, the run's manifest: `output` belongs to one
    run (see `keras_apm.utils.run_directory.RunDirectory`). Settings are
    checked, and `output` (and `cache`) proven writable, before any work;
    a NaN/Inf training loss stops the run with an error.

    Args:
        teacher: a teacher preset (name, handle or directory), or a
            `keras_apm.teachers.Teacher` built with the right levels;
            default: the recipe's.
        dataset: a TFDS name or a folder of images (see
            `keras_apm.data.image_dataset`); default: the recipe's.
        output: output directory.
        recipe: a name in `keras_apm.distill.recipes.RECIPES` (`"default"`,
            `"digits"`) or a `DistillRecipe`: the training settings.
        student: None (a fresh APM sized from the teacher), an APM preset,
            or a `.json` file holding an APM config.
        cache: a directory for the teacher-feature cache, or None to run
            the teacher inside every training step.
        resume: continue the run in `output` from its newest checkpoint
            (it must be this run: the same settings but `epochs`).
        data_dir: TFDS data directory.
        verbose: `fit`'s verbosity; `"auto"` (default): a progress bar on
            a terminal, one line per epoch when the output is a log
            (`keras_apm.utils.progress.fit_verbosity`).
        **overrides: settings of the recipe to change (`split`,
            `validation_split`, `levels`, `epochs`, `batch_size`,
            `learning_rate`, `schedule`, `trunk_widths`, `seed`,
            `loss_weights`; see `DistillRecipe`).
        overwrite: delete another run's outputs in `output` (otherwise
            such a directory is refused) and start fresh.
        coordinator, num_processes, process_id: a multi-process run's
            settings (default: the engines' environment variables; see
            `keras_apm.distill.distribution.initialize`). `batch_size` is
            the global batch; only process 0 writes files.
        callbacks: more `keras.callbacks.Callback`s for `fit` (e.g. to
            record the curves or report progress); they change nothing
            learned.

    Returns:
        The `metrics.json` dict.

    Example:
    ```python
    metrics = keras_apm.distill.distill(
        "vit_tiny_digits", "sklearn_digits", "runs/digits", epochs=20,
        cache="runs/digits/cache")
    # or the shipped digits recipe (teacher, data and settings), shortened:
    keras_apm.distill.distill(output="runs/d", recipe="digits", epochs=5)
    student = keras_apm.APM.from_preset("runs/digits/student")
    ```
    """
    from keras_apm.distill.recipes import get_recipe
    from keras_apm.utils.run_directory import RunDirectory
    from keras_apm.utils.run_directory import check_writable

    settings = get_recipe(recipe, **overrides)
    teacher = settings.teacher if teacher is None else teacher
    dataset = settings.dataset if dataset is None else dataset
    for name, value in (("teacher", teacher), ("dataset", dataset)):
        if value is None:
            raise ValueError(
                f"`distill` needs `{name}=` or a recipe that names one; "
                f"recipe {recipe!r} does not."
            )
    if output is None:
        raise ValueError("`distill` needs `output=`, the run directory.")
    arguments = dict(
        teacher=teacher, dataset=dataset, output=output,
        recipe=recipe if isinstance(recipe, str) else None,
        split=settings.split, validation_split=settings.validation_split,
        student=student, levels=settings.levels, epochs=settings.epochs,
        batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        schedule=settings.schedule, trunk_widths=settings.trunk_widths,
        cache=cache, resume=resume, seed=settings.seed, data_dir=data_dir,
        verbose=verbose, overwrite=overwrite,
        loss_weights=settings.loss_weights,
    )
    config = _check_settings(arguments)
    group = distribution.initialize(coordinator, num_processes, process_id)
    # Every process of a group runs with the same settings, or none starts.
    from keras_apm.backend.run_agreement import check_same_settings

    check_same_settings(
        dict(config, epochs=settings.epochs, resume=bool(resume)),
        group.num_processes, group.process_id, strategy=group.strategy,
    )
    # Only the chief claims (and may clear) the shared output directory;
    # the others start once it has, and resume exactly when it does.
    claim = (
        RunDirectory(
            output, "distill", config, outputs=RUN_OUTPUTS, resume=resume,
            overwrite=overwrite,
        )
        if group.is_chief
        else _Joined(resume)
    )
    with claim as run:
        if cache is not None and group.is_chief:
            check_writable(cache)
        group.barrier()
        arguments.update(resume=run.resuming, run_id=run.run_id, group=group)
        del arguments["overwrite"]
        return _distill(**arguments, callbacks=callbacks)


class _Joined:
    """A non-chief process's side of the chief's `RunDirectory` claim."""

    def __init__(self, resume):
        self.resuming = bool(resume)
        self.run_id = None  # the chief checks that checkpoints are this run's

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# What `distill` writes in its output directory (and `overwrite` deletes).
RUN_OUTPUTS = ("checkpoints", "student", "metrics.json")


def _check_settings(arguments):
    """Checks `distill`'s settings; returns those that identify the run.

    Everything but `epochs` (a resumed run may go on longer), `resume`,
    `overwrite`, `data_dir` and `verbose` (they change nothing learned).
    """
    from keras_apm.distill.recipes import SCHEDULES
    from keras_apm.teachers import Teacher
    from keras_apm.utils.validation import check_number

    def positive_int(name):
        check_number(arguments[name], f"`{name}`", low=1, integer=True)

    positive_int("epochs")
    positive_int("batch_size")
    check_number(arguments["seed"], "`seed`", low=0, integer=True)
    check_number(
        arguments["learning_rate"], "`learning_rate`", low=0, low_open=True
    )
    if arguments["schedule"] not in SCHEDULES:
        raise ValueError(
            f"`schedule` must be one of {SCHEDULES}. Received "
            f"{arguments['schedule']!r}."
        )
    levels = arguments["levels"]
    if isinstance(levels, (list, tuple)):
        if not levels:
            raise ValueError("`levels` must not be empty. Received [].")
        for level in levels:
            check_number(level, "each of `levels`", integer=True)
    else:
        check_number(levels, "`levels`", low=1, integer=True)
    widths = arguments["trunk_widths"]
    if widths is not None:
        if not isinstance(widths, (list, tuple)) or not widths:
            raise ValueError(
                "`trunk_widths` must be a non-empty list of ints >= 1. "
                f"Received {widths!r}."
            )
        for width in widths:
            check_number(width, "each of `trunk_widths`", low=1, integer=True)
    _check_loss_weights(arguments["loss_weights"])
    teacher = arguments["teacher"]
    if isinstance(teacher, Teacher):
        from keras_apm.data.feature_cache import teacher_identity

        teacher = teacher_identity(teacher)  # its weights' hash included
    skip = ("epochs", "resume", "overwrite", "data_dir", "verbose", "output")
    if arguments["loss_weights"] is None:
        # Runs recorded before recipes had loss weights still resume.
        skip += ("loss_weights",)
    config = {k: v for k, v in arguments.items() if k not in skip}
    config["teacher"] = teacher
    for key in ("dataset", "student", "cache"):
        if isinstance(config[key], os.PathLike):
            config[key] = os.fspath(config[key])
    return config


def _check_loss_weights(loss_weights):
    """A recipe's `loss_weights`: None or `{term name: number >= 0}`."""
    from keras_apm.models.apm import apm_outputs
    from keras_apm.utils.validation import check_number

    if loss_weights is None:
        return
    terms = [h.term_name for h in apm_outputs.heads() if not h.per_level]
    if not isinstance(loss_weights, dict):
        raise ValueError(
            "`loss_weights` must be a dict from loss term to weight, e.g. "
            f"{{'grid': 1.0, 'rgb': 0.5}}. Received {loss_weights!r}."
        )
    for name, weight in loss_weights.items():
        if not (name in terms or re.fullmatch(r"level_[0-9]+", str(name))):
            raise ValueError(
                f"`loss_weights` names the term {name!r}; the terms are "
                f"{terms} and 'level_<i>' for GLOM levels."
            )
        check_number(weight, f"`loss_weights[{name!r}]`", low=0)


def _distill(
    teacher, dataset, output, recipe, split, validation_split, student, levels,
    epochs, batch_size, learning_rate, schedule, trunk_widths, cache, resume,
    seed, data_dir, verbose, run_id, group, callbacks=None, loss_weights=None,
):
    """`distill` in its claimed output directory."""
    from keras_apm.distill.checkpoint import DistillCheckpoint
    from keras_apm.distill.checkpoint import StopOnNonFiniteLoss
    from keras_apm.distill.distiller import APMDistiller
    from keras_apm.teachers import Teacher

    student_arg = student
    keras.utils.set_random_seed(seed)
    # A cached teacher runs on the chief alone (`group.local`).
    with group.local() if cache else contextlib.nullcontext():
        if not isinstance(teacher, Teacher):
            teacher_name = str(teacher)
            teacher = load_teacher(teacher, levels)
        else:
            teacher_name = teacher.name
    num_levels = teacher.num_levels or 1
    student, _, _ = resolve_student(
        student, teacher, num_levels=num_levels, trunk_widths=trunk_widths
    )
    check_student_teacher(student, teacher, num_levels=student.num_levels)
    image_size = tuple(student.image_shape[:2])
    if validation_split == "auto":
        validation_split = "test" if split != "test" else None
        with group.chief_first():  # may prepare the TFDS data
            if _split_or_none(
                dataset, validation_split, data_dir=data_dir
            ) is None:
                validation_split = None
    per_process = group.per_process_batch_size(batch_size)
    common = dict(
        teacher=teacher, dataset=dataset, image_size=image_size,
        batch_size=per_process, cache=cache, seed=seed, data_dir=data_dir,
        verbose=0 if verbose == 0 else 1,
    )
    with group.chief_first():  # prepares data and cache for the others
        train = _batched_inputs(split=split, shuffle=True, **common)
        validation = None
        if validation_split is not None:
            validation = _batched_inputs(
                split=validation_split, shuffle=False, **common
            )
    train = group.shard(train, per_process)
    if validation is not None:
        validation = group.shard(validation, per_process)

    distiller = APMDistiller(
        student,
        None if cache else teacher,
        distillation_loss_weights=loss_weights,
    )
    distiller.compile(
        optimizer=_optimizer(
            learning_rate, schedule, epochs * _steps_per_epoch(train)
        )
    )
    checkpoint = DistillCheckpoint(
        os.path.join(output, "checkpoints"), run_id=run_id
    )
    initial_epoch = checkpoint.restore(distiller) if resume else 0
    train = group.distribute(train)
    if validation is not None:
        validation = group.distribute(validation)
    history = {}
    if initial_epoch < epochs:
        history = distiller.fit(
            train,
            validation_data=validation,
            epochs=epochs,
            initial_epoch=initial_epoch,
            # Only the chief writes checkpoints; every process stops on NaN.
            callbacks=[StopOnNonFiniteLoss()]
            + ([checkpoint] if group.is_chief else [])
            + list(callbacks or []),
            verbose=fit_verbosity(verbose),
            shuffle=False,  # the pipeline shuffles (tf.data ignores it)
        ).history
    # After a resume that had nothing left to do, or to report figures of
    # the final weights rather than averages over the last epoch.
    final_train = distiller.evaluate(train, return_dict=True, verbose=0)
    metrics = {
        "train": final_train,
        "train_last_epoch": _final(history),
        "validation": (
            distiller.evaluate(validation, return_dict=True, verbose=0)
            if validation is not None
            else None
        ),
        "settings": {
            "recipe": recipe if isinstance(recipe, str) else None,
            "teacher": teacher_name,
            "dataset": str(dataset),
            "split": split,
            "validation_split": validation_split,
            "student": None if student_arg is None else str(student_arg),
            "levels": num_levels,
            "epochs": epochs,
            "initial_epoch": initial_epoch,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "schedule": schedule,
            "trunk_widths": list(student.trunk_widths),
            "cache": cache,
            "seed": seed,
            "backend": keras.backend.backend(),
            "num_processes": group.num_processes,
        },
    }
    metrics["train"] = {k: float(v) for k, v in metrics["train"].items()}
    if metrics["validation"] is not None:
        metrics["validation"] = {
            k: float(v) for k, v in metrics["validation"].items()
        }
    if group.is_chief:  # the others hold the same weights and figures
        distiller.save_student(os.path.join(output, "student"))
        write_json(os.path.join(output, "metrics.json"), metrics)
    return metrics
