"""Tests of the shipped `vit_tiny_digits` teacher preset (loaded by name)."""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow_datasets as tfds

import keras_apm
from keras_apm.data import image_dataset
from keras_apm.teachers import Teacher
from keras_apm.teachers import ViTTeacher
from keras_apm.teachers.teacher_presets import PRESETS_DIR

PRESET_DIR = os.path.join(PRESETS_DIR, "vit_tiny_digits")


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    """The `sklearn_digits` test split as float32 `[0, 255]` images."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    ds = image_dataset(
        "sklearn_digits",
        split="test",
        batch_size=360,
        with_labels=True,
        data_dir=data_dir,
    )
    ((images, labels),) = list(tfds.as_numpy(ds))
    return images, labels


@pytest.fixture(scope="module")
def teacher():
    return Teacher.from_preset("vit_tiny_digits")


def test_preset_is_shipped_and_small():
    assert os.path.isdir(PRESET_DIR)
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(PRESET_DIR)
        for name in names
    ]
    names = {os.path.basename(f) for f in files}
    assert {"config.json", "task.json", "model.weights.h5"} <= names
    assert sum(os.path.getsize(f) for f in files) < 5 * 1024 * 1024
    # Registered with keras-hub's own preset machinery.
    assert "vit_tiny_digits" in keras_hub.models.ViTBackbone.presets
    assert "vit_tiny_digits" in keras_hub.models.ViTImageClassifier.presets


def test_teacher_by_name(teacher):
    assert isinstance(teacher, ViTTeacher)
    assert teacher.image_size == (32, 32)
    assert teacher.patch_size == 4
    assert teacher.grid_shape == (8, 8)
    assert teacher.feature_dim == 64
    assert teacher.global_dim == 64
    assert teacher.has_classifier and teacher.num_classes == 10
    assert not teacher.trainable
    out = teacher(np.zeros((2, 32, 32, 3), "float32"))
    assert tuple(out["grid"].shape) == (2, 8, 8, 64)
    assert tuple(out["global"].shape) == (2, 64)
    assert tuple(out["logits"].shape) == (2, 10)


def test_teacher_accuracy_on_test_split(teacher, test_split):
    images, labels = test_split
    logits = keras.ops.convert_to_numpy(teacher.classifier_logits(images))
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == labels))
    assert accuracy >= 0.95
    # The number recorded at training time (on another backend, maybe)
    # agrees up to float round-off flipping a borderline example or two.
    with open(os.path.join(PRESET_DIR, "training.json")) as f:
        recorded = json.load(f)["test_accuracy"]
    assert recorded >= 0.95
    assert abs(accuracy - recorded) <= 2 / 360 + 1e-9


def test_keras_hub_classifier_by_name(teacher, test_split):
    # `import keras_apm` registered the name with keras-hub.
    assert keras_apm.teachers is not None
    classifier = keras_hub.models.ViTImageClassifier.from_preset(
        "vit_tiny_digits"
    )
    images = test_split[0][:16]
    np.testing.assert_allclose(
        classifier.predict(images, verbose=0),
        keras.ops.convert_to_numpy(teacher.classifier_logits(images)),
        atol=1e-4,
        rtol=1e-4,
    )
