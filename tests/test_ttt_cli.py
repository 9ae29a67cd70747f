"""`keras-apm ttt` and examples/ttt_zero_shot.py on tiny random teachers."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from keras_apm.cli import main
from keras_apm.data import digits_split_indices
from keras_apm.data import image_dataset
from keras_apm.data import upscale_digits
from keras_apm.data.corruptions import corruption_map
from keras_apm.teachers import Teacher
from keras_apm.ttt import TestTimeTrainer

# Tiny random teachers and presets, shared with test_ttt.py.
from test_run_directory import read_only_directory
from test_ttt import clip_preset  # noqa: F401
from test_ttt import vit_preset  # noqa: F401

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")


def write_digit_folder(folder, per_class=2, classes=(0, 1, 2), flat=False):
    """Real digits as PNG files, one subfolder per class (or all in one)."""
    data = load_digits()
    for label in classes:
        rows = np.flatnonzero(data.target == label)[:per_class]
        sub = folder if flat else folder / str(label)
        sub.mkdir(parents=True, exist_ok=True)
        for i, image in zip(rows, upscale_digits(data.images[rows])):
            Image.fromarray(image).save(sub / f"{i}.png")
    return str(folder)


def run_cli(*args):
    return main(["ttt", *[str(a) for a in args]])


def test_cli_folder_with_corruption(vit_preset, tmp_path):  # noqa: F811
    folder = write_digit_folder(tmp_path / "digits")
    out = tmp_path / "result.json"
    rc = run_cli(
        "--teacher",
        vit_preset,
        "--dataset",
        folder,
        "--corruption",
        "gaussian_noise",
        "--severity",
        3,
        "--steps",
        2,
        "--batch-size",
        4,
        "--output",
        out,
    )
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["num_images"] == 6 and len(record["predictions"]) == 6
    labels = [p["label"] for p in record["predictions"]]
    teacher = np.array([p["teacher"] for p in record["predictions"]])
    apm = np.array([p["apm"] for p in record["predictions"]])
    assert labels == [0, 0, 1, 1, 2, 2]
    assert record["accuracy_teacher"] == pytest.approx(np.mean(teacher == labels))
    assert record["accuracy_apm"] == pytest.approx(np.mean(apm == labels))
    assert record["agreement"] == pytest.approx(np.mean(apm == teacher))
    assert record["seconds_per_image"] > 0
    settings = record["settings"]
    assert settings["corruption"] == "gaussian_noise" and settings["severity"] == 3
    assert settings["steps"] == 2 and settings["batch_size"] == 4

    # The same images, corrupted by hand, through the Python API.
    ds = image_dataset(folder, image_size=(16, 16)).map(
        corruption_map("gaussian_noise", 3, seed=0)
    )
    images = np.stack([np.asarray(x) for x in ds])
    clean = np.stack(
        [np.asarray(x) for x in image_dataset(folder, image_size=(16, 16))]
    )
    assert np.abs(images - clean).mean() > 5  # really corrupted
    trainer = TestTimeTrainer(
        teacher=Teacher.from_preset(vit_preset), steps=2, batch_size=4
    )
    result = trainer.adapt(images)
    np.testing.assert_array_equal(result["teacher_predictions"], teacher)
    np.testing.assert_array_equal(result["predictions"], apm)
    np.testing.assert_allclose(
        result["loss"][:, -1],
        [p["loss_last"] for p in record["predictions"]],
        rtol=1e-4,
    )


def test_cli_tfds_split_and_limit(vit_preset, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "digits.json"
    rc = run_cli(
        "--teacher",
        vit_preset,
        "--dataset",
        "sklearn_digits",
        "--split",
        "test",
        "--limit",
        5,
        "--steps",
        1,
        "--batch-size",
        8,
        "--data-dir",
        tmp_path / "tfds",
        "--output",
        out,
        "--quiet",
    )
    assert rc == 0
    assert "5 images: teacher" in capsys.readouterr().out
    record = json.loads(out.read_text())
    _, test_rows = digits_split_indices()
    expected = load_digits().target[test_rows[:5]]
    assert [p["label"] for p in record["predictions"]] == expected.tolist()
    assert record["settings"]["split"] == "test" and record["settings"]["limit"] == 5


def test_cli_errors(vit_preset, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "x.json"
    base = ["--teacher", vit_preset, "--output", out]
    assert run_cli(*base, "--dataset", tmp_path, "--severity", 3) == 2
    assert "--severity needs --corruption" in capsys.readouterr().err
    folder = write_digit_folder(tmp_path / "d", per_class=1)
    assert run_cli(*base, "--dataset", folder, "--corruption", "snow") == 2
    assert "snow" in capsys.readouterr().err
    assert run_cli(*base, "--dataset", tmp_path / "missing") == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        # Used to exit 0 after gradient *ascent* (12.5% accuracy).
        (["--learning-rate", -1], "--learning-rate must be a finite number > 0, got -1.0"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number > 0, got nan"),
        (["--steps", 0], "--steps must be an int >= 1, got 0"),
        (["--batch-size", 0], "--batch-size must be an int >= 1, got 0"),
        (["--limit", 0], "--limit must be an int >= 1, got 0"),
        (["--corruption", "fog", "--severity", 9], r"--severity must be an int in [1, 5], got 9"),
        (["--seed", -2], "--seed must be an int >= 0, got -2"),
    ],
)
def test_cli_bad_hyperparameters_exit_2(
    vit_preset, tmp_path, capsys, monkeypatch, args, message  # noqa: F811
):
    monkeypatch.setattr("keras_apm.teachers.Teacher.from_preset", _no_work)
    out = tmp_path / "x.json"
    rc = run_cli(
        "--teacher", vit_preset, "--dataset", tmp_path, "--output", out, *args
    )
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _no_work(*args, **kwargs):
    raise AssertionError("work started before the arguments were checked")


def test_cli_output_is_checked_before_work(vit_preset, tmp_path, capsys, monkeypatch):  # noqa: F811
    # A read-only --output used to fail only after evaluating every image.
    monkeypatch.setattr("keras_apm.teachers.Teacher.from_preset", _no_work)
    base = ["--teacher", vit_preset, "--dataset", tmp_path]
    with read_only_directory(tmp_path / "ro") as ro:
        assert run_cli(*base, "--output", os.path.join(ro, "r.json")) == 2
        assert "not writable" in capsys.readouterr().err
    # Another run's result is not replaced without --overwrite.
    out = tmp_path / "done.json"
    out.write_text('{"accuracy_apm": 0.5}')
    assert run_cli(*base, "--output", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"accuracy_apm": 0.5}
    monkeypatch.undo()
    folder = write_digit_folder(tmp_path / "d", per_class=1)
    rc = run_cli(
        "--teacher", vit_preset, "--dataset", folder, "--steps", 1,
        "--output", out, "--overwrite", "--quiet",
    )
    assert rc == 0
    assert json.loads(out.read_text())["num_images"] == 3


def test_cli_diverged_adaptation_is_an_error(vit_preset, tmp_path, capsys):  # noqa: F811
    folder = write_digit_folder(tmp_path / "d", per_class=1)
    out = tmp_path / "x.json"
    rc = run_cli(
        "--teacher", vit_preset, "--dataset", folder, "--steps", 3,
        "--learning-rate", 1e30, "--output", out, "--quiet",
    )
    assert rc == 2
    assert "Test-time training diverged" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="`learning_rate` must be a finite"):
        TestTimeTrainer(teacher=Teacher.from_preset(vit_preset), learning_rate=-1.0)


def test_zero_shot_example(clip_preset, tmp_path, capsys):  # noqa: F811
    path, _ = clip_preset
    folder = tmp_path / "photos"
    write_digit_folder(folder, per_class=1, classes=(3, 4, 5), flat=True)
    sys.path.insert(0, EXAMPLES)
    try:
        import ttt_zero_shot
    finally:
        sys.path.remove(EXAMPLES)
    out = tmp_path / "zero_shot.json"
    ttt_zero_shot.main(
        [
            "--preset",
            path,
            "--folder",
            str(folder),
            "--classes",
            "cat",
            "dog",
            "bird",
            "--steps",
            "2",
            "--output",
            str(out),
        ]
    )
    record = json.loads(out.read_text())
    assert [r["file"] for r in record["images"]] == sorted(os.listdir(folder))
    assert {r["apm"] for r in record["images"]} <= {"cat", "dog", "bird"}
    assert "agreement" in capsys.readouterr().out
