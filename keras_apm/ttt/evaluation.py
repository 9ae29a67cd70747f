"""Evaluating test-time training on a data set (what `keras-apm ttt` runs)."""

import os

import keras
import numpy as np
from keras_apm.models.apm.apm_outputs import GLOBAL
from keras_apm.utils.validation import check_number


def _is_folder(source):
    return isinstance(source, (str, os.PathLike)) and os.path.isdir(source)


def dataset_class_names(source, data_dir=None):
    """Class names of a folder (its subfolders) or of a TFDS `label`."""
    from keras_apm.data import list_image_files

    if _is_folder(source):
        return list_image_files(source)[2] or None
    import tensorflow_datasets as tfds

    builder = source
    if not isinstance(builder, tfds.core.DatasetBuilder):
        builder = tfds.builder(source, data_dir=data_dir)
    features = builder.info.features
    if "label" not in features.keys():
        return None
    return list(getattr(features["label"], "names", None) or []) or None


def ttt_dataset(
    source,
    split=None,
    image_size=None,
    batch_size=32,
    corruption=None,
    severity=5,
    seed=0,
    limit=None,
    data_dir=None,
):
    """A batched `tf.data.Dataset` of `(images, labels)` for TTT.

    Images are float32 RGB in `[0, 255]` (`keras_apm.data.image_dataset`),
    optionally corrupted (`keras_apm.data.corruptions`, seeded per image).
    Labels are -1 for an unlabelled folder. `split=None` means `"test"`
    for TFDS and the whole folder for a folder.

    Example:
    ```python
    ds = ttt_dataset("sklearn_digits", "test", corruption="fog", severity=5)
    ```
    """
    import tensorflow as tf

    from keras_apm.data import image_dataset
    from keras_apm.data import list_image_files
    from keras_apm.data.corruptions import corruption_map

    is_folder = _is_folder(source)
    labelled = list_image_files(source)[1] is not None if is_folder else True
    if split is None and not is_folder:
        split = "test"
    ds = image_dataset(
        source,
        split=split,
        image_size=image_size,
        with_labels=labelled,
        data_dir=data_dir,
    )
    if not labelled:
        ds = ds.map(lambda image: (image, tf.constant(-1, tf.int32)))
    if limit is not None:
        check_number(limit, "`limit`", low=1, integer=True)
        ds = ds.take(int(limit))
    if corruption is not None:
        ds = ds.map(corruption_map(corruption, severity, seed=seed))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _adapt_dataset(dataset, trainer):
    """`(images, labels)` batches from a user's `tf.data` pipeline.

    `tfds.load` feature dicts (other fields, e.g. string ids, dropped),
    `as_supervised=True` tuples and plain images, batched or not, of any and
    varying size, are resized to the teacher's input size (the student's
    converter resizes from there) and batched at the trainer's batch size.
    Batched `(images, labels)` pipelines (`ttt_dataset`) and other
    iterables pass unchanged.
    """
    if not type(dataset).__module__.startswith("tensorflow"):
        return dataset
    import tensorflow as tf

    if not isinstance(dataset, tf.data.Dataset):
        return dataset
    spec = dataset.element_spec
    if (
        isinstance(spec, tuple)
        and len(spec) == 2
        and isinstance(spec[0], tf.TensorSpec)
        and spec[0].shape.rank == 4
    ):
        return dataset
    from keras_apm.data.inputs import model_inputs

    ds = model_inputs(
        dataset,
        image_size=trainer.teacher.image_size,
        batch_size=trainer.batch_size,
        with_labels=True,
    )
    return ds.map(lambda inputs, labels: (inputs["images"], labels))


def _check_finite_result(result, first_index):
    """Stops on a diverged adaptation: its predictions would mean nothing."""
    bad = ~np.isfinite(result["loss"]).all(axis=1)
    if GLOBAL in result:
        bad |= ~np.isfinite(result[GLOBAL]).all(axis=1)
    if bad.any():
        where = np.flatnonzero(bad)
        raise ValueError(
            f"Test-time training diverged: the loss or the adapted student's "
            f"vector is NaN/Inf for {len(where)} of {len(bad)} images of a "
            f"batch (first: image {first_index + int(where[0])}). Lower the "
            "learning rate (`learning_rate`, --learning-rate) or the number "
            "of steps, or check the images for NaN/Inf values."
        )


def evaluate(trainer, dataset, verbose=1, settings=None):
    """Runs test-time training over a dataset of `(images, labels)` batches.

    Args:
        trainer: a `keras_apm.TestTimeTrainer`.
        dataset: iterable of `(images, labels)` batches (e.g. `ttt_dataset`;
            labels < 0 mean unknown), or a `tf.data.Dataset` as `tfds.load`
            returns it (feature dicts or `as_supervised=True` tuples,
            unbatched, images of any size: resized to the teacher's input
            size and batched at the trainer's batch size).
        verbose: 1 shows a `keras.utils.Progbar`.
        settings: dict of extra entries recorded under `"settings"`.

    Returns:
        A JSON-serialisable dict: `accuracy_teacher` and `accuracy_apm`
        (None without labels), `agreement` (fraction of images where the
        student and the teacher predict the same class), `seconds_per_image`
        (teacher plus adaptation, compilation included), `num_images`,
        `settings`, and `predictions` (one entry per image).

    Raises:
        ValueError: as soon as an image's adaptation diverges (NaN/Inf).
    """
    dataset = _adapt_dataset(dataset, trainer)
    num_batches = None
    if hasattr(dataset, "cardinality"):  # tf.data: known for TFDS and folders
        num_batches = int(dataset.cardinality())
    bar = keras.utils.Progbar(
        num_batches if num_batches and num_batches > 0 else None,
        unit_name="batch",
        verbose=verbose,
        stateful_metrics=["agreement"],
    )
    labels, apm, teacher, losses, seconds = [], [], [], [], 0.0
    for step, (images, batch_labels) in enumerate(dataset, start=1):
        result = trainer.adapt(np.asarray(images))
        _check_finite_result(result, sum(len(x) for x in labels))
        seconds += result["seconds"]
        labels.append(np.asarray(batch_labels))
        apm.append(result["predictions"])
        teacher.append(result["teacher_predictions"])
        losses.append(result["loss"][:, [0, -1]])
        agreement = np.mean(np.concatenate(apm) == np.concatenate(teacher))
        bar.update(step, [("agreement", float(agreement))])
    if not labels:
        raise ValueError("The dataset holds no images.")
    labels, apm, teacher = (np.concatenate(x) for x in (labels, apm, teacher))
    losses = np.concatenate(losses)
    if bar.target is None:
        bar.update(step, finalize=True)
    known = labels >= 0

    def accuracy(predictions):
        return (
            float(np.mean(predictions[known] == labels[known])) if known.any() else None
        )

    names = getattr(trainer.classifier, "class_names", None)
    return {
        "accuracy_teacher": accuracy(teacher),
        "accuracy_apm": accuracy(apm),
        "agreement": float(np.mean(apm == teacher)),
        "seconds_per_image": seconds / len(labels),
        "num_images": int(len(labels)),
        "settings": {**(settings or {}), **trainer.settings()},
        "predictions": [
            {
                "index": i,
                "label": int(labels[i]) if known[i] else None,
                "teacher": int(teacher[i]),
                "apm": int(apm[i]),
                "apm_name": names[apm[i]] if names else None,
                "loss_first": float(losses[i, 0]),
                "loss_last": float(losses[i, 1]),
            }
            for i in range(len(labels))
        ],
    }
