"""The student/teacher plumbing shared by distillation, TTT and the tools."""

import json
import os
import pathlib

import numpy as np
import pytest
from presets_factory import tiny_clip
from presets_factory import tiny_vit

import keras_apm
from keras_apm.models.apm.apm_student import check_student_teacher
from keras_apm.models.apm.apm_student import default_level_layers
from keras_apm.models.apm.apm_student import default_student_config
from keras_apm.models.apm.apm_student import load_teacher
from keras_apm.models.apm.apm_student import resolve_student
from keras_apm.teachers import CLIPTeacher
from keras_apm.teachers import Teacher
from keras_apm.teachers import ViTTeacher

SHIPPED = os.path.join(
    os.path.dirname(keras_apm.__file__), "presets", "apm_tiny_digits"
)


@pytest.fixture(scope="module")
def teacher(vit_teacher_preset):
    """32x32 input, patch 8: a 4x4 grid of 16-d (and a 16-d class token)."""
    return Teacher.from_preset(vit_teacher_preset)


@pytest.fixture(scope="module")
def wide_teacher():
    """16x16 input, patch 8: a 2x2 grid of 16-d, wider than it has cells."""
    return ViTTeacher(
        tiny_vit(seed=11, image_shape=(16, 16, 3), num_layers=1, mlp_dim=16)
    )


@pytest.fixture(scope="module")
def clip_teacher():
    """A 4x4 grid of 16-d and a 12-d projected global embedding."""
    return CLIPTeacher(
        tiny_clip(
            seed=12, vocabulary_size=16, hidden_dim=16, intermediate_dim=16,
            projection_dim=12,
        )
    )


# ----------------------------------------------------------------------------
# Sizing.


def test_distill_and_ttt_sizings(wide_teacher, clip_teacher):
    # Distillation: trunk from max(h * w, D) = 16, the grid's width, RGB
    # head (sigmoid), global head as the class token is as wide as the grid.
    distill = default_student_config(wide_teacher)
    assert distill["image_shape"] == (16, 16, 3) and distill["patch_size"] == 8
    assert distill["trunk_widths"] == (64, 32, 16)
    assert distill["feature_dim"] == 16 and distill["position_dim"] == 4
    assert distill["rgb_head"] and distill["rgb_activation"] == "sigmoid"
    assert distill["global_head"] and distill["global_num_heads"] == 8
    # Test-time training: trunk from h * w = 4, the regressed vector's
    # width, always a global head, no RGB head unless asked (official ReLU).
    ttt = default_student_config(wide_teacher, "ttt", feature_dim=12)
    assert ttt["trunk_widths"] == (16, 8, 4) and ttt["feature_dim"] == 12
    assert ttt["global_head"] and ttt["global_num_heads"] == 4
    assert not ttt["rgb_head"] and ttt["rgb_activation"] == "relu"
    assert default_student_config(wide_teacher, "ttt", rgb_head=True)["rgb_head"]
    # A CLIP projection is narrower than the grid: no distilled global head;
    # TTT regresses the projection by default.
    assert not default_student_config(clip_teacher)["global_head"]
    assert default_student_config(clip_teacher, "ttt")["feature_dim"] == 12
    for config in (distill, ttt):
        model = keras_apm.APM(**config)
        assert model.grid_shape == wide_teacher.grid_shape


def test_the_shipped_digits_student_is_the_default_distilled_one():
    # `apm_tiny_digits` was made by `distill` with only its trunk widths
    # chosen: the default config must still build exactly that APM.
    with open(os.path.join(SHIPPED, "config.json")) as f:
        shipped = json.load(f)["config"]
    digits_teacher = Teacher.from_preset("vit_tiny_digits")
    config = default_student_config(
        digits_teacher, trunk_widths=tuple(shipped["trunk_widths"])
    )
    built = keras_apm.APM(**config).get_config()
    for key in ("name", "trainable", "dtype"):
        built.pop(key), shipped.pop(key)
    assert json.loads(json.dumps(built)) == shipped


def test_size_overrides_and_bad_sizings(teacher):
    config = default_student_config(teacher, image_size=(28, 28), patch_size=4)
    # A 7x7 grid: the position code is rounded up to a multiple of 4.
    assert config["image_shape"] == (28, 28, 3) and config["position_dim"] == 52
    assert keras_apm.APM(**config).grid_shape == (7, 7)
    with pytest.raises(ValueError, match="sizing"):
        default_student_config(teacher, "coco")
    with pytest.raises(ValueError, match="divisible by 4"):
        default_student_config(teacher, "ttt", feature_dim=10)
    with pytest.raises(ValueError, match="square patch"):
        default_student_config(teacher, patch_size=(4, 8))
    with pytest.raises(ValueError, match="resize_to_grid"):
        default_student_config(teacher.with_settings(resize_to_grid=(2, 2)))


# ----------------------------------------------------------------------------
# Student arguments.


def test_resolve_every_kind_of_student(teacher, tmp_path):
    model, preset, fresh = resolve_student(None, teacher, trunk_widths=(8,))
    assert model.trunk_widths == (8,) and preset is None and fresh
    assert resolve_student(model, teacher)[0] is model
    assert not resolve_student(model)[2]

    config = model.get_config()
    from_dict, _, fresh = resolve_student(config)
    assert from_dict.trunk_widths == (8,) and fresh
    # A bare config file and a preset-style {"class_name", "config"} file.
    bare, wrapped = tmp_path / "bare.json", tmp_path / "wrapped.json"
    bare.write_text(json.dumps(config))
    wrapped.write_text(json.dumps({"class_name": "APM", "config": config}))
    for path in (str(bare), wrapped):
        loaded, preset, fresh = resolve_student(path)
        assert loaded.get_config() == model.get_config()
        assert preset is None and fresh

    model.save_to_preset(str(tmp_path / "preset"))
    loaded, preset, fresh = resolve_student(str(tmp_path / "preset"))
    assert preset == str(tmp_path / "preset") and not fresh
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])


def test_bad_students(teacher, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"patch": 4}))
    cases = [
        ((str(tmp_path / "missing.json"),), "does not exist"),
        ((str(bad),), "not valid JSON"),
        ((str(other),), "is not an APM config"),
        ((None,), "sized from its teacher"),
        ((np.zeros(3), teacher), "Received ndarray"),
        (("apm_tiny_digits", teacher, (8,)), "trunk_widths"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            resolve_student(*args)


# ----------------------------------------------------------------------------
# Teacher arguments.


def test_load_teacher_from_presets_and_instances(vit_teacher_preset, teacher):
    plain = load_teacher(pathlib.Path(vit_teacher_preset))
    assert isinstance(plain, ViTTeacher) and plain.layer_indices is None
    assert load_teacher(vit_teacher_preset, levels=1).layer_indices is None
    assert load_teacher(vit_teacher_preset, levels=2).layer_indices == (0, 1)
    assert load_teacher(vit_teacher_preset, levels=[-1]).layer_indices == (1,)
    resized = load_teacher(vit_teacher_preset, resize_to_grid=(2, 2))
    assert resized.grid_shape == (2, 2)
    # A given teacher is used as it is (levels are a loading option).
    assert load_teacher(teacher) is teacher
    assert load_teacher(teacher, levels=2) is teacher
    changed = load_teacher(teacher, resize_to_grid=(2, 2))
    assert changed.grid_shape == (2, 2) and changed.model is teacher.model
    with pytest.raises(ValueError, match=">= 1"):
        load_teacher(vit_teacher_preset, levels=0)
    with pytest.raises(ValueError, match="Teacher"):
        load_teacher(3)
    assert default_level_layers(12, 3) == (3, 7, 11)
    with pytest.raises(ValueError, match="Cannot pick 3"):
        default_level_layers(2, 3)


# ----------------------------------------------------------------------------
# Compatibility.


def student(**overrides):
    config = dict(
        image_shape=(32, 32, 3), patch_size=8, trunk_widths=(8,),
        feature_dim=16, global_head=True, global_num_heads=2,
    )  # fmt: skip
    config.update(overrides)
    return keras_apm.APM(**config)


def test_check_student_teacher(teacher, clip_teacher):
    levels = teacher.with_settings(layers=[0, 1])
    check_student_teacher(student(), teacher, global_dim=16)
    check_student_teacher(student(num_levels=2), levels, num_levels=2)
    # A one-level student fits a teacher without levels.
    check_student_teacher(student(), teacher, num_levels=1)
    # Only the global vector: the grid may differ.
    check_student_teacher(student(feature_dim=12), clip_teacher, grid=False, global_dim=12)
    cases = [
        ((student(patch_size=4), teacher), {}, r"resize_to_grid=\(8, 8\)"),
        ((student(feature_dim=8), teacher), {}, "feature_dim=16"),
        ((student(), clip_teacher), {"global_dim": 12}, "global embedding has 12"),
        (
            (student(feature_dim=8), teacher),
            {"grid": False, "global_dim": 16, "global_source": "the target"},
            "The target has 16 values.*feature_dim=16",
        ),
        ((student(num_levels=2), teacher), {"num_levels": 2}, "2 GLOM levels"),
        ((student(), levels), {"num_levels": 1}, r"layers=\(0, 1\)"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            check_student_teacher(*args, **kwargs)
