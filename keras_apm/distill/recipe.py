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

from keras_apm.distill import distribution
from keras_apm.utils.files import write_json


def load_teacher(preset, levels=1):
    """A frozen teacher with `levels` GLOM levels (an int or layer indices).

    With an int `L > 1` the levels are `L` evenly spaced teacher layers
    ending with the last (`default_level_layers`).

    Example:
    >>> teacher = load_teacher("vit_tiny_digits", levels=2)
    """
    from keras_apm.distill.distiller import default_level_layers
    from keras_apm.teachers import Teacher

    if isinstance(levels, int):
        if levels < 1:
            raise ValueError(f"`levels` must be >= 1. Received {levels}.")
        if levels == 1:
            return Teacher.from_preset(preset)
        depth = Teacher.from_preset(preset, load_weights=False).num_layers
        levels = default_level_layers(depth, levels)
    return Teacher.from_preset(preset, layers=tuple(int(i) for i in levels))


def build_student(teacher, student=None, num_levels=1, trunk_widths=None):
    """The student: `student` (preset or JSON config file) or a default.

    Without `student`, an APM sized from the teacher's grid and embedding
    (`default_student_config`, with `trunk_widths` if given). A student
    whose level count differs from the teacher's is refused.

    Example:
    >>> student = build_student(teacher)  # fresh, random weights
    """
    from keras_apm.distill.distiller import default_student_config
    from keras_apm.models.apm import APM

    if student is None:
        return APM(
            **default_student_config(
                teacher, num_levels=num_levels, trunk_widths=trunk_widths
            )
        )
    if trunk_widths is not None:
        raise ValueError(
            "`trunk_widths` sizes the default student; it cannot change a "
            f"given one ({student!r}). Pass one or the other."
        )
    if str(student).endswith(".json"):
        if not os.path.isfile(student):
            raise ValueError(f"Student config file {student!r} does not exist.")
        import json

        with open(student, encoding="utf-8") as f:
            config = json.load(f)
        # Accept a bare APM config or a `keras.saving.serialize_keras_object`
        # / preset `config.json` ({"class_name": ..., "config": {...}}).
        config = config.get("config", config)
        try:
            model = APM.from_config(config)
        except TypeError as e:
            raise ValueError(
                f"{student!r} is not an APM config: {e}. Expected a JSON "
                "object of `keras_apm.APM` arguments, e.g. "
                '{"image_shape": [32, 32, 3], "patch_size": 4, ...}.'
            ) from None
    else:
        model = APM.from_preset(student)
    if model.num_levels != num_levels:
        raise ValueError(
            f"The student has {model.num_levels} GLOM levels but {num_levels} "
            "were asked for (`levels`). Give a student with as many levels, "
            "or change `levels`."
        )
    return model


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

    kwargs = {"image_size": image_size}
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    if cache is None:
        return image_dataset(
            dataset, split=split, batch_size=batch_size, shuffle=shuffle,
            seed=seed, **kwargs,
        )
    # One sub-folder per split expression ("train[:10%]" -> "train_10_").
    folder = os.path.join(cache, re.sub(r"[^A-Za-z0-9_.-]", "_", split))
    images = image_dataset(dataset, split=split, **kwargs)
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


def distill(
    teacher,
    dataset,
    output,
    split="train",
    validation_split="auto",
    student=None,
    levels=1,
    epochs=10,
    batch_size=64,
    learning_rate=1e-3,
    schedule="constant",
    trunk_widths=None,
    cache=None,
    resume=False,
    seed=0,
    data_dir=None,
    verbose="auto",
    coordinator=None,
    num_processes=None,
    process_id=None,
):
    """Distills a teacher preset into an APM on a dataset; saves everything.

    Writes, under `output`: `checkpoints/` (one per epoch, the newest
    kept, so `resume=True` continues an interrupted run), `student/` (the
    distilled APM preset, loadable with `keras_apm.APM.from_preset`) and
    `metrics.json` (final train and validation losses and cosines, and the
    settings).

    Args:
        teacher: a teacher preset (name, handle or directory), or a
            `keras_apm.teachers.Teacher` built with the right levels.
        dataset: a TFDS name or a folder of images (see
            `keras_apm.data.image_dataset`).
        output: output directory.
        split: training split.
        validation_split: a split, None, or `"auto"`: `"test"` when the
            dataset has one.
        student: None (a fresh APM sized from the teacher), an APM preset,
            or a `.json` file holding an APM config.
        levels: GLOM levels: an int, or the teacher layer of each level.
        epochs, batch_size, learning_rate, seed: training settings (Adam).
        schedule: `"constant"` learning rate, or `"cosine"` decay from
            `learning_rate` to 0 over all epochs.
        trunk_widths: the default student's trunk widths (None: the
            `default_student_config` widths).
        cache: a directory for the teacher-feature cache, or None to run
            the teacher inside every training step.
        resume: continue from the newest checkpoint in `output`.
        data_dir: TFDS data directory.
        verbose: `fit`'s verbosity (the progress bar by default).
        coordinator, num_processes, process_id: a multi-process run's
            settings (default: the engines' environment variables; see
            `keras_apm.distill.distribution.initialize`). `batch_size` is
            the global batch; only process 0 writes files.

    Returns:
        The `metrics.json` dict.

    Example:
    ```python
    metrics = keras_apm.distill.distill(
        "vit_tiny_digits", "sklearn_digits", "runs/digits", epochs=20,
        cache="runs/digits/cache")
    student = keras_apm.APM.from_preset("runs/digits/student")
    ```
    """
    from keras_apm.distill.checkpoint import DistillCheckpoint
    from keras_apm.distill.distiller import APMDistiller
    from keras_apm.teachers import Teacher

    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"`epochs` must be an int >= 1. Received {epochs!r}.")
    if schedule not in ("constant", "cosine"):
        raise ValueError(
            f'`schedule` must be "constant" or "cosine". Received {schedule!r}.'
        )
    student_arg = student
    group = distribution.initialize(coordinator, num_processes, process_id)
    keras.utils.set_random_seed(seed)
    # A cached teacher runs on the chief alone (`group.local`).
    with group.local() if cache else contextlib.nullcontext():
        if not isinstance(teacher, Teacher):
            teacher_name = str(teacher)
            teacher = load_teacher(teacher, levels)
        else:
            teacher_name = teacher.name
    num_levels = teacher.num_levels or 1
    student = build_student(
        teacher, student, num_levels=num_levels, trunk_widths=trunk_widths
    )
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

    distiller = APMDistiller(student, None if cache else teacher)
    distiller.compile(
        optimizer=_optimizer(
            learning_rate, schedule, epochs * _steps_per_epoch(train)
        )
    )
    checkpoint = DistillCheckpoint(os.path.join(output, "checkpoints"))
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
            callbacks=[checkpoint] if group.is_chief else [],
            verbose=verbose,
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
