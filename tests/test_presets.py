"""Presets: local directories, built-in names, handles and broken presets."""

import json
import os
import shutil

import numpy as np
import pytest
from keras import ops

import keras_apm


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("preset"))
    model = keras_apm.APM(
        image_shape=(16, 16, 3), patch_size=4, trunk_widths=(16,), feature_dim=8
    )
    model.save_to_preset(directory)
    keras_apm.APMImageConverter((16, 16), scaling="minmax", channel_order="bgr").save_to_preset(directory)
    return directory


def copy_of(preset_dir, tmp_path, keep_checksums=False):
    """A copy to break; without its checksums (as keras-hub saves presets)
    unless asked, so the structural checks, not the checksums, are tested."""
    target = str(tmp_path / "copy")
    shutil.copytree(preset_dir, target)
    if not keep_checksums:
        os.remove(os.path.join(target, "checksums.json"))
        # ... and the record in metadata.json that there were any.
        metadata = os.path.join(target, "metadata.json")
        with open(metadata) as f:
            record = json.load(f)
        del record["keras_apm_checksums"]
        with open(metadata, "w") as f:
            json.dump(record, f)
    return target


def test_image_converter_is_saved_with_the_preset(preset_dir):
    converter = keras_apm.APMImageConverter.from_preset(preset_dir)
    assert (converter.scaling, converter.channel_order) == ("minmax", "bgr")
    raw = np.stack([np.arange(20 * 24 * 3).reshape(20, 24, 3)] * 2).astype("float32")
    x = ops.convert_to_numpy(converter(raw))
    assert x.shape == (2, 16, 16, 3)
    assert x.min() == 0.0 and abs(x.max() - 1.0) < 1e-6
    # BGR: the last channel of the output is the first of the input.
    rgb = ops.convert_to_numpy(
        keras_apm.APMImageConverter((16, 16), scaling="minmax")(raw)
    )
    np.testing.assert_allclose(x[..., 0], rgb[..., 2], atol=1e-6)


def test_one_lookup_for_a_presets_preprocessing(preset_dir, tmp_path):
    """`load_image_converter`: the preset's converter where it has one (TTT,
    visualize, export and the demo all ask it), else the caller's fallback;
    a bad directory is named."""
    from keras_apm.models.apm import load_image_converter

    saved = load_image_converter(preset_dir, (99, 99), scaling="imagenet")
    assert (saved.scaling, saved.channel_order) == ("minmax", "bgr")
    assert tuple(saved.image_size) == (16, 16)
    bare = copy_of(preset_dir, tmp_path)
    os.remove(os.path.join(bare, "image_converter.json"))
    fallback = load_image_converter(bare, (16, 16), scaling="imagenet")
    assert fallback.scaling == "imagenet" and tuple(fallback.image_size) == (16, 16)
    assert load_image_converter(None, (8, 8)).scaling == "unit"
    with pytest.raises(ValueError, match="does not exist"):
        load_image_converter(str(tmp_path / "nowhere"), (16, 16))
    shipped = load_image_converter("apm_tiny_digits")
    assert tuple(shipped.image_size) == (32, 32)


def test_load_apm_returns_the_model_and_its_converter(preset_dir, tmp_path):
    """`load_apm`: one call, one resolved preset, both halves from it."""
    from keras_apm.models.apm import load_apm

    model, converter = load_apm(preset_dir)
    assert tuple(model.image_shape) == (16, 16, 3)
    assert (converter.scaling, converter.channel_order) == ("minmax", "bgr")
    bare = copy_of(preset_dir, tmp_path)
    os.remove(os.path.join(bare, "image_converter.json"))
    _, fallback = load_apm(bare, scaling="imagenet", load_weights=False)
    assert fallback.scaling == "imagenet"
    assert tuple(fallback.image_size) == (16, 16)
    model, converter = load_apm("apm_tiny_digits", load_weights=False)
    assert tuple(converter.image_size) == tuple(model.image_shape[:2])


def test_imagenet_and_unit_scaling():
    raw = np.full((1, 4, 4, 3), 255.0, "float32")
    unit = keras_apm.APMImageConverter(scaling="unit")(raw)
    np.testing.assert_allclose(ops.convert_to_numpy(unit), 1.0, rtol=1e-6)
    imagenet = ops.convert_to_numpy(keras_apm.APMImageConverter(scaling="imagenet")(raw))
    np.testing.assert_allclose(
        imagenet[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / [0.229, 0.224, 0.225],
        rtol=1e-5,
    )


def test_converter_rejects_unknown_options():
    with pytest.raises(ValueError, match="scaling"):
        keras_apm.APMImageConverter(scaling="zscore")
    with pytest.raises(ValueError, match="channel_order"):
        keras_apm.APMImageConverter(channel_order="gbr")


def test_builtin_presets_are_listed_offline():
    presets = keras_apm.APM.presets
    assert "apm_tiny_digits" in presets
    assert all(p["metadata"]["description"] for p in presets.values())
    # Every listed preset loads here, offline: none is a download that
    # nobody published (the official models come from `keras-apm convert`).
    for name in presets:
        assert keras_apm.APM.from_preset(name, load_weights=False).image_shape


def test_unreachable_handle_fails_naming_it():
    handle = "kaggle://keras-apm/apm/keras/apm_coco_dinov2_l14_reg_448"
    with pytest.raises(ValueError, match="apm_coco_dinov2_l14_reg_448"):
        keras_apm.APM.from_preset(handle)


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        keras_apm.APM.from_preset(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name", ["config.json", "model.weights.h5"])
def test_missing_file(preset_dir, tmp_path, name):
    target = copy_of(preset_dir, tmp_path)
    os.remove(os.path.join(target, name))
    with pytest.raises(ValueError, match=f"missing {name}"):
        keras_apm.APM.from_preset(target)


def test_corrupt_config(preset_dir, tmp_path):
    target = copy_of(preset_dir, tmp_path)
    with open(os.path.join(target, "config.json"), "w") as f:
        f.write('{"registered_name": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        keras_apm.APM.from_preset(target)


def test_truncated_weights(preset_dir, tmp_path):
    target = copy_of(preset_dir, tmp_path)
    path = os.path.join(target, "model.weights.h5")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        keras_apm.APM.from_preset(target)


def test_weights_that_do_not_match_the_config(preset_dir, tmp_path):
    target = copy_of(preset_dir, tmp_path)
    path = os.path.join(target, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["config"]["trunk_widths"] = [16, 8]  # one layer more
    config["config"]["feature_dim"] = 12  # other shapes
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError) as info:
        keras_apm.APM.from_preset(target)
    message = str(info.value)
    assert "Missing tensors: ['layers/perception_field/mlp/trunk/" in message
    assert "Mis-shaped tensors" in message and "expected" in message
