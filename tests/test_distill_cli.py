"""`keras-apm distill` and `keras-apm demo` on the real sklearn digits."""

import json
import os

import numpy as np
import pytest
import skimage.data
import skimage.io

import keras_apm
from keras_apm.cli import main


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _distill(tmp_path, data_dir, *extra):
    out = str(tmp_path / "run")
    code = main(
        [
            "distill",
            "--teacher", "vit_tiny_digits",
            "--dataset", "sklearn_digits",
            "--split", "train[:64]",
            "--validation-split", "test[:32]",
            "--batch-size", "32",
            "--data-dir", data_dir,
            "--output", out,
            *extra,
        ]
    )
    assert code == 0
    with open(os.path.join(out, "metrics.json")) as f:
        return out, json.load(f)


def test_distill_then_resume(tmp_path, data_dir):
    # One epoch, then a resumed second one: checkpoint, student, figures.
    rate = ("--learning-rate", "3e-3")
    _, first = _distill(tmp_path, data_dir, "--epochs", "1", *rate)
    out, metrics = _distill(
        tmp_path, data_dir, "--epochs", "2", "--resume", *rate
    )
    assert metrics["settings"]["initial_epoch"] == 1
    assert metrics["settings"]["epochs"] == 2
    for part in ("train", "validation"):
        for key in ("loss", "grid_loss", "grid_cosine", "global_cosine"):
            assert np.isfinite(metrics[part][key])
        assert -1 <= metrics[part]["grid_cosine"] <= 1
    # The resumed epoch went on learning from the first one's weights.
    assert metrics["validation"]["grid_loss"] < first["validation"]["grid_loss"]
    assert os.listdir(os.path.join(out, "checkpoints"))
    student = keras_apm.APM.from_preset(os.path.join(out, "student"))
    assert student.grid_shape == (8, 8)
    # Nothing left to do: the saved run is evaluated, not retrained.
    _, again = _distill(tmp_path, data_dir, "--epochs", "2", "--resume", *rate)
    assert again["settings"]["initial_epoch"] == 2
    np.testing.assert_allclose(
        again["validation"]["loss"], metrics["validation"]["loss"], rtol=1e-5
    )


def test_distill_with_cache_and_levels(tmp_path, data_dir):
    cache = str(tmp_path / "cache")
    out, metrics = _distill(
        tmp_path, data_dir, "--epochs", "1", "--levels", "2", "--cache", cache,
        "--schedule", "cosine", "--trunk-widths", "48,32",
    )
    assert set(os.listdir(cache)) == {"train__64_", "test__32_"}
    assert metrics["settings"]["schedule"] == "cosine"
    assert "level_0_loss" in metrics["train"]
    assert "level_1_loss" in metrics["validation"]
    student = keras_apm.APM.from_preset(os.path.join(out, "student"))
    assert student.num_levels == 2
    assert tuple(student.trunk_widths) == (48, 32)


def test_distill_on_a_folder_with_a_json_student(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        skimage.io.imsave(folder / f"{name}.png", getattr(skimage.data, name)())
    config = dict(
        image_shape=[32, 32, 3], patch_size=4, trunk_widths=[64, 64],
        feature_dim=64, global_head=True, global_num_heads=4,
    )
    config_file = tmp_path / "student.json"
    config_file.write_text(json.dumps(config))
    out = str(tmp_path / "run")
    code = main(
        [
            "distill", "--teacher", "vit_tiny_digits", "--dataset", str(folder),
            "--student", str(config_file), "--epochs", "1",
            "--batch-size", "2", "--output", out,
        ]
    )
    assert code == 0
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["validation"] is None  # a folder has no test split
    student = keras_apm.APM.from_preset(os.path.join(out, "student"))
    assert tuple(student.trunk_widths) == (64, 64)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--levels", "two"], "--levels"),
        (["--epochs", "0"], "epochs"),
        (["--student", "missing.json"], "does not exist"),
        (["--dataset", "no_such_dataset_xyz"], "no_such_dataset_xyz"),
        (["--trunk-widths", "64,0"], "--trunk-widths"),
        (["--schedule", "linear"], "--schedule"),
        (["--student", "s.json", "--trunk-widths", "8"], "one or the other"),
    ],
)
def test_distill_bad_arguments_exit_2(tmp_path, capsys, args, message):
    base = {
        "--teacher": "vit_tiny_digits",
        "--dataset": "sklearn_digits",
        "--output": str(tmp_path / "run"),
    }
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["distill"] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_demo_writes_summary_and_student(tmp_path, data_dir):
    out = str(tmp_path / "demo")
    code = main(
        ["demo", "--output", out, "--epochs", "1", "--data-dir", data_dir]
    )
    assert code == 0
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["teacher_accuracy"] >= 0.95
    for key in ("grid_cosine", "global_cosine"):
        assert -1 <= summary[key] <= 1
    assert summary["seconds"] > 0
    student = keras_apm.APM.from_preset(os.path.join(out, "student"))
    images = np.zeros((1, 32, 32, 3), "float32")
    assert student(images)["features"].shape == (1, 8, 8, 64)
