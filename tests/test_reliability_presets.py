"""Reliability: every preset file is verified, and a bad one is named (issue 22).

Shipped presets carry checksums; deleting `checksums.json` from a preset
keras_apm saved does not turn the check off; the task's files (`task.json`,
`task.weights.h5`) are checked like the backbone's.
"""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest

import keras_apm
from keras_apm.utils.preset_files import CHECKSUMS_RECORD
from keras_apm.utils.preset_files import verify_preset
from keras_apm.teachers import Teacher
from keras_apm.utils.keras_hub_compat import BUILTIN_PRESETS

SHIPPED = ("apm_tiny_digits", "vit_tiny_digits")


def small_apm():
    return keras_apm.APM(
        image_shape=(16, 16, 3), patch_size=4, trunk_widths=(8,), feature_dim=4
    )


@pytest.fixture(scope="module")
def classifier_preset(tmp_path_factory):
    keras.utils.set_random_seed(5)
    classifier = keras_apm.APMImageClassifier(small_apm(), num_classes=3)
    path = tmp_path_factory.mktemp("classifier") / "preset"
    classifier.save_to_preset(path)
    return path, classifier


@pytest.fixture
def classifier_copy(classifier_preset, tmp_path):
    import shutil

    copy = tmp_path / "preset"
    shutil.copytree(classifier_preset[0], copy)
    return copy


def _flip_a_bit(path, offset=-200):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_presets_carry_checksums_of_every_file(name):
    directory = BUILTIN_PRESETS[name]["kaggle_handle"]
    files = sorted(
        f for f in os.listdir(directory)
        if f != "checksums.json" and not f.startswith(".")
    )  # fmt: skip
    assert verify_preset(directory) == files
    with open(os.path.join(directory, "metadata.json")) as f:
        assert json.load(f)[CHECKSUMS_RECORD] == "checksums.json"


def test_a_deleted_checksums_file_is_refused(tmp_path):
    model = small_apm()
    model.save_to_preset(tmp_path / "apm")
    os.remove(tmp_path / "apm" / "checksums.json")
    with pytest.raises(ValueError, match=r"checksums\.json' is missing.*"
                       r"metadata\.json.*Restore checksums\.json"):
        keras_apm.APM.from_preset(str(tmp_path / "apm"))
    # Asked for explicitly, it loads unverified.
    keras_apm.APM.from_preset(str(tmp_path / "apm"), check_weights=False)
    # A preset saved by keras-hub itself (no record) still loads.
    keras_hub.models.Backbone.save_to_preset(model, str(tmp_path / "hub"))
    assert not os.path.exists(tmp_path / "hub" / "checksums.json")
    keras_apm.APM.from_preset(str(tmp_path / "hub"))


def test_task_files_are_in_the_checksums(classifier_preset):
    path, classifier = classifier_preset
    with open(path / "checksums.json") as f:
        listed = json.load(f)["sha256"]
    assert {"task.json", "task.weights.h5", "metadata.json"} <= set(listed)
    images = np.random.default_rng(0).random((2, 16, 16, 3), "float32")
    for loaded in (
        keras_apm.APMImageClassifier.from_preset(str(path)),
        keras_hub.models.ImageClassifier.from_preset(str(path)),
    ):
        np.testing.assert_allclose(
            loaded.predict(images, verbose=0),
            classifier.predict(images, verbose=0),
            rtol=1e-5, atol=1e-6,
        )  # fmt: skip


def test_bit_flipped_task_weights_are_named(classifier_copy):
    _flip_a_bit(classifier_copy / "task.weights.h5")
    for load in (
        keras_apm.APMImageClassifier.from_preset,
        keras_hub.models.ImageClassifier.from_preset,
    ):
        with pytest.raises(ValueError, match=r"task\.weights\.h5' is corrupt"):
            load(str(classifier_copy))


@pytest.mark.parametrize("content", ['{"config": ', "\x00garbage"])
def test_a_bad_task_json_is_named(classifier_copy, content):
    (classifier_copy / "task.json").write_text(content)
    with pytest.raises(ValueError, match=r"task\.json' is corrupt"):
        keras_apm.APMImageClassifier.from_preset(str(classifier_copy))
    # Without checksums (check_weights=False): the JSON error names it.
    with pytest.raises(ValueError, match=r"task\.json' is not valid JSON"):
        keras_apm.APMImageClassifier.from_preset(
            str(classifier_copy), check_weights=False
        )


def test_a_teacher_preset_with_a_bad_task_file_is_named(tmp_path):
    import shutil

    copy = tmp_path / "vit"
    shutil.copytree(BUILTIN_PRESETS["vit_tiny_digits"]["kaggle_handle"], copy)
    (copy / "task.json").write_text('{"config": ')
    with pytest.raises(ValueError, match=r"task\.json' is corrupt"):
        Teacher.from_preset(str(copy))
