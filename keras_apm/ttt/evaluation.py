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


def _label_space_error(classifier, what, fix_names):
    names = classifier.class_names
    ours = f"{classifier.num_classes} classes" + (
        f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
        if names
        else " (the teacher's own head, which names none)"
    )
    return ValueError(
        f"The classifier scores {ours}, but {what}. Accuracy against these "
        "labels would mean nothing (a label is right only by the accident "
        "of its index). Map the data set's labels to the classifier's "
        f"classes explicitly with `label_map` (--label-map FILE.json: "
        f"{{{fix_names}}}), or pass `accuracy=False` (--no-accuracy) to "
        "report only how often the APM agrees with the teacher."
    )


def label_mapping(classifier, label_names=None, label_map=None, folder=False):
    """How the data set's labels index the classifier's classes.

    Accuracy means something only when label `i` and class `i` are the same
    class. Without `label_map` that must be evident: the classifier was
    built from the data set's own class names (CLIP zero-shot, named
    embeddings), or the teacher's head (no names) meets a TFDS label with
    as many classes, or folders named by the class indices `"0"`,
    `"1"`, ... Anything else is refused with a ValueError that says how to
    map the labels.

    Args:
        classifier: the trainer's classifier (`num_classes`, `class_names`).
        label_names: the data set's label names (`dataset_class_names`), or
            None when unknown (labels are then checked to be in range).
        label_map: dict from a data set label (name, or index as int or
            str) to a classifier class (index, or name when the classifier
            has names). Labels not in it are not scored.
        folder: whether the labels are a folder's subfolder indices.

    Returns:
        An int array `mapping` (`mapping[label]` is the class, -1 not
        scored), or None when the labels are the classes themselves.

    Example:
    >>> label_mapping(clf, ["cat", "dog"], {"cat": 3, "dog": 5})
    array([3, 5])
    """
    num_classes = int(classifier.num_classes)
    class_names = classifier.class_names
    if label_map is not None:
        if not isinstance(label_map, dict) or not label_map:
            raise ValueError(
                "`label_map` must be a non-empty dict {data set label: "
                f"classifier class}}. Received {label_map!r}."
            )
        index_of = {str(n): i for i, n in enumerate(label_names or [])}
        size = len(label_names) if label_names else 0
        pairs = []
        for key, value in label_map.items():
            label = index_of.get(str(key))
            if label is None:
                try:
                    label = int(key)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"`label_map` key {key!r} is not one of the data "
                        f"set's labels ({label_names or 'indices only'})."
                    ) from None
            if isinstance(value, str) and class_names and value in class_names:
                value = class_names.index(value)
            if isinstance(value, bool) or not isinstance(value, int) or not (
                0 <= value < num_classes
            ):
                raise ValueError(
                    f"`label_map` maps {key!r} to {value!r}; expected a class "
                    f"index in [0, {num_classes})"
                    + (f" or one of {class_names}" if class_names else "")
                    + "."
                )
            pairs.append((label, value))
            size = max(size, label + 1)
        mapping = np.full(size, -1, "int64")
        for label, value in pairs:
            mapping[label] = value
        return mapping
    if label_names is None:
        return None
    label_names = [str(n) for n in label_names]
    if class_names is not None:
        if list(class_names) == label_names:
            return None
        raise _label_space_error(
            classifier,
            f"the data set's labels are {len(label_names)} other classes "
            f"({', '.join(label_names[:4])}, ...)",
            f'"{label_names[0]}": 0, ...',
        )
    indices = [str(i) for i in range(len(label_names))]
    if folder:
        if sorted(label_names, key=lambda n: (len(n), n)) == indices and (
            len(label_names) <= num_classes
        ):
            # Folders named by class index: sorted as text ("10" < "2").
            return np.array([int(n) for n in label_names], "int64")
        raise _label_space_error(
            classifier,
            f"the data set's labels are its {len(label_names)} subfolders "
            f"({', '.join(label_names[:4])}, ...), whose order says nothing "
            "about the teacher's classes",
            f'"{label_names[0]}": 0, ...',
        )
    if len(label_names) != num_classes:
        raise _label_space_error(
            classifier,
            f"the data set's label has {len(label_names)} classes",
            f'"{label_names[0]}": 0, ...',
        )
    return None


def _check_labels_in_range(labels, num_classes):
    bad = labels >= num_classes
    if bad.any():
        raise ValueError(
            f"The data set holds label {int(labels[bad][0])}, but the "
            f"classifier scores only {num_classes} classes (0..."
            f"{num_classes - 1}). Map the labels with `label_map` "
            "(--label-map FILE.json), or pass `accuracy=False` "
            "(--no-accuracy) to report only the agreement."
        )


def evaluate(
    trainer,
    dataset,
    verbose=1,
    settings=None,
    label_names=None,
    label_map=None,
    accuracy=True,
    folder_labels=False,
):
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
        label_names: the data set's label names (`dataset_class_names`):
            checked against the classifier's classes before any work
            (`label_mapping`). Labels are always checked to be in range.
        label_map: dict {data set label: classifier class}, for label
            spaces that differ (see `label_mapping`).
        accuracy: False reports no accuracies (only the agreement of the
            APM with the teacher): for labels that are not the classes.
        folder_labels: whether the labels are a folder's subfolders.

    Returns:
        A JSON-serialisable dict: `accuracy_teacher` and `accuracy_apm`
        (None without labels or with `accuracy=False`; `label` in
        `predictions` is the mapped class), `agreement` (fraction of images where the
        student and the teacher predict the same class), `seconds_per_image`
        (teacher plus adaptation, compilation included), `num_images`,
        `settings`, and `predictions` (one entry per image).

    Raises:
        ValueError: as soon as an image's adaptation diverges (NaN/Inf).
    """
    mapping = None
    if accuracy:
        # Before any work: scores against another label space mean nothing.
        mapping = label_mapping(
            trainer.classifier, label_names, label_map, folder=folder_labels
        )
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
        batch_labels = np.asarray(batch_labels).astype("int64")
        if not accuracy:
            batch_labels = np.full_like(batch_labels, -1)
        elif mapping is not None:
            known = (batch_labels >= 0) & (batch_labels < len(mapping))
            batch_labels = np.where(
                known, mapping[np.clip(batch_labels, 0, len(mapping) - 1)], -1
            )
        else:
            _check_labels_in_range(batch_labels, trainer.classifier.num_classes)
        result = trainer.adapt(np.asarray(images))
        _check_finite_result(result, sum(len(x) for x in labels))
        seconds += result["seconds"]
        labels.append(batch_labels)
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
