"""Tests of the shipped `apm_tiny_digits` student preset (loaded by name)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

import keras_apm
from keras_apm.data import image_dataset
from keras_apm.models.apm.apm_presets import PRESETS_DIR
from keras_apm.models.apm.apm_presets import backbone_presets
from keras_apm.teachers import Teacher

PRESET_DIR = os.path.join(PRESETS_DIR, "apm_tiny_digits")


def _cosine(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    ds = image_dataset(
        "sklearn_digits", split="test", batch_size=360, data_dir=data_dir
    )
    (images,) = list(tfds.as_numpy(ds))
    return images


def test_preset_is_shipped_small_and_listed():
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(PRESET_DIR)
        for name in names
    ]
    names = {os.path.basename(f) for f in files}
    assert {"config.json", "model.weights.h5", "training.json"} <= names
    assert sum(os.path.getsize(f) for f in files) < 5 * 1024 * 1024
    assert "apm_tiny_digits" in backbone_presets
    assert "apm_tiny_digits" in keras_apm.APM.presets


def test_student_follows_the_teacher_on_the_test_split(test_images):
    student = keras_apm.APM.from_preset("apm_tiny_digits")
    converter = keras_apm.APMImageConverter.from_preset("apm_tiny_digits")
    teacher = Teacher.from_preset("vit_tiny_digits")
    assert student.grid_shape == teacher.grid_shape
    # The teacher does its own preprocessing; the student takes its
    # preset's (per-image min-max scaling, as in the official code).
    out = student.predict(converter(test_images), batch_size=120, verbose=0)
    target = teacher(test_images)
    grid = float(np.mean(_cosine(
        out["features"], keras.ops.convert_to_numpy(target["grid"])
    )))
    glob = float(np.mean(_cosine(
        out["global"], keras.ops.convert_to_numpy(target["global"])
    )))
    # The goal, measured here from scratch with NumPy ...
    assert grid >= 0.9 and glob >= 0.9
    # ... and the figures recorded when the preset was distilled (possibly
    # on another backend) agree with it.
    with open(os.path.join(PRESET_DIR, "training.json")) as f:
        recorded = json.load(f)
    assert abs(grid - recorded["grid_cosine"]) < 1e-3
    assert abs(glob - recorded["global_cosine"]) < 1e-3
    # The RGB head decodes the patch-average-pooled input in [0, 1].
    pooled = test_images.reshape(-1, 8, 4, 8, 4, 3).mean(axis=(2, 4)) / 255
    assert np.sqrt(np.mean((out["rgb"] - pooled) ** 2)) < 0.1
