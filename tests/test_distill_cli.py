"""`keras-apm distill` and `keras-apm demo` on the real sklearn digits."""

import json
import os

import keras
import numpy as np
import pytest
import skimage.data
import skimage.io

import keras_apm
from keras_apm.cli import main
from keras_apm.distill import DistillCheckpoint
from keras_apm.distill import save_student_preset
from keras_apm.distill.distiller import APMDistiller
from keras_apm.distill.recipe_runner import distill
from keras_apm.distill.recipes import RECIPES
from keras_apm.distill.recipes import get_recipe
from keras_apm.models.apm.apm_student import load_teacher
from keras_apm.models.apm.apm_student import resolve_student
from keras_apm.utils.run_directory import OutputLock

from test_run_directory import read_only_directory



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


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the run directory's CLI rules are backend-free; resuming on each "
    "backend is test_distiller.py::test_checkpoint_resume_equals_uninterrupted",
)
def test_distill_then_resume(tmp_path, data_dir, capsys):
    # One epoch, then a resumed second one: checkpoint, student, figures;
    # then a run with other settings into the same --output.
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

    # A fresh, shorter run with other settings into the same --output used
    # to delete its own epoch_00001 (pruning kept the highest epoch, the old
    # run's), and --resume then restored the old run. Now it is refused...
    argv = [
        "distill", "--teacher", "vit_tiny_digits", "--dataset",
        "sklearn_digits", "--split", "train[:64]", "--batch-size", "32",
        "--data-dir", data_dir, "--output", out, "--epochs", "1",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "another run's files" in err and "learning_rate" in err
    assert "--overwrite" in err
    assert main([*argv, "--resume"]) == 2  # not its run: nothing to resume
    with open(os.path.join(out, "run.json")) as f:
        first_run = json.load(f)["run_id"]
    # ... and --overwrite clears the old run first, then keeps its own.
    _, fresh = _distill(tmp_path, data_dir, "--epochs", "1", "--overwrite")
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == [
        "epoch_00001", "latest.json"
    ]
    with open(os.path.join(out, "run.json")) as f:
        manifest = json.load(f)
    assert manifest["run_id"] != first_run and manifest["status"] == "complete"
    assert manifest["config"]["learning_rate"] == 1e-3
    # --resume restores this run, not the old one.
    _, resumed = _distill(tmp_path, data_dir, "--epochs", "1", "--resume")
    assert resumed["settings"]["initial_epoch"] == 1
    assert resumed["settings"]["learning_rate"] == 1e-3
    np.testing.assert_allclose(
        resumed["validation"]["loss"], fresh["validation"]["loss"], rtol=1e-5
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


def test_cached_targets_come_from_teacher_sized_images(tmp_path, data_dir):
    """A 16x16 student of the 32x32 teacher: the cache stores what the
    student sees and the teacher's targets of the original at 32x32."""
    from keras_apm.data.feature_cache import read_manifest

    config = dict(
        image_shape=[16, 16, 3], patch_size=2, trunk_widths=[32],
        feature_dim=64, global_head=True, global_num_heads=4,
    )
    config_file = tmp_path / "student.json"
    config_file.write_text(json.dumps(config))
    cache = tmp_path / "cache"
    _, metrics = _distill(
        tmp_path, data_dir, "--epochs", "1", "--cache", str(cache),
        "--student", str(config_file),
    )
    manifest = read_manifest(cache / "train__64_")
    assert manifest["image_shape"] == [16, 16, 3]
    assert manifest["teacher_image_shape"] == [32, 32, 3]
    assert manifest["num_examples"] == 64
    assert np.isfinite(metrics["validation"]["loss"])


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
        (
            ["--learning-rate", "nan"],
            "--learning-rate must be a finite number > 0, got nan",
        ),
        (["--learning-rate", "-1"], "--learning-rate must be a finite number > 0"),
        (["--learning-rate", "inf"], "got inf"),
        (["--batch-size", "0"], "--batch-size must be an int >= 1, got 0"),
        (["--seed", "-1"], "--seed must be an int >= 0, got -1"),
        (["--levels", "0"], "--levels must be an int >= 1, got 0"),
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


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the README's demo runs on Keras' default backend, TensorFlow; "
    "its distillation is tested on every backend by the tests above",
)
def test_demo_writes_summary_and_student(tmp_path, data_dir, capsys):
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
    assert summary["recipe"] == "digits_demo"
    assert len(summary["history"]["val_grid_cosine"]) == 1  # the curves
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["settings"]["teacher"] == "vit_tiny_digits"
    # One numbered line per stage, in order, then the closing table.
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    # Not a terminal: one line per epoch from `fit` (no bar redrawn as
    # a new line per step; the caching bars update once per shard).
    steps = [line for line in lines if "/step" in line]
    assert len(steps) == 1 and "\u2501" not in steps[0], printed
    stages = [i for i, line in enumerate(lines) if line.startswith("[")]
    assert [lines[i][:5] for i in stages] == [f"[{i}/5]" for i in range(1, 6)]
    header, row = lines[-2:]
    assert header.split() == [
        "teacher", "top-1", "grid", "cosine", "global", "cosine", "seconds",
    ]
    figures = [float(x) for x in row.split()]
    assert figures[:3] == pytest.approx(
        [summary[k] for k in ("teacher_accuracy", "grid_cosine",
                              "global_cosine")], abs=1e-4,
    )
    # The figure: four rows of panels beside the curves, not a blank page.
    from PIL import Image

    with Image.open(os.path.join(out, "summary.png")) as png:
        pixels = np.asarray(png.convert("RGB"), "float32")
    assert pixels.shape[1] > pixels.shape[0] > 400
    assert pixels.std() > 10
    student = keras_apm.APM.from_preset(os.path.join(out, "student"))
    images = np.zeros((1, 32, 32, 3), "float32")
    assert student(images)["features"].shape == (1, 8, 8, 64)
    # The same demo again: refused, or resumed (nothing left to train).
    argv = ["demo", "--output", out, "--epochs", "1", "--data-dir", data_dir]
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["settings"]["initial_epoch"] == 1


def test_a_locked_or_read_only_output_fails_before_any_work(
    tmp_path, data_dir, capsys, monkeypatch
):
    def no_work(*args, **kwargs):
        raise AssertionError("the teacher was loaded before the checks")

    monkeypatch.setattr("keras_apm.distill.recipe_runner.load_teacher", no_work)
    base = [
        "distill", "--teacher", "vit_tiny_digits", "--dataset",
        "sklearn_digits", "--data-dir", data_dir,
    ]
    # Another run holds the lock (two runs into one --output).
    out = tmp_path / "run"
    out.mkdir()
    lock = OutputLock(out / ".lock").acquire()
    try:
        assert main([*base, "--output", str(out)]) == 2
        assert "Another run" in capsys.readouterr().err
    finally:
        lock.release()
    # A read-only --output or --cache: refused, not at the first checkpoint.
    with read_only_directory(tmp_path / "ro") as ro:
        assert main([*base, "--output", os.path.join(ro, "run")]) == 2
        assert "not writable" in capsys.readouterr().err
        argv = [*base, "--output", str(out), "--cache", os.path.join(ro, "c")]
        assert main(argv) == 2
        assert "not writable" in capsys.readouterr().err
    assert os.listdir(out) == []  # nothing left behind


def test_a_diverging_run_stops_and_saves_nothing(tmp_path, data_dir):
    # A finite but absurd learning rate: the loss overflows within the
    # first epoch. It used to train on and save a NaN student.
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="training loss became (nan|inf)"):
        distill(
            "vit_tiny_digits", "sklearn_digits", out, split="train[:64]",
            validation_split=None, epochs=2, batch_size=16,
            learning_rate=1e30, data_dir=data_dir, verbose=0,
        )
    assert not out.exists()
    with pytest.raises(ValueError, match="`learning_rate` must be a finite"):
        distill("vit_tiny_digits", "sklearn_digits", out, learning_rate=-1.0)


def test_checkpoints_prune_by_this_runs_timeline_and_refuse_nan(tmp_path):
    teacher = load_teacher("vit_tiny_digits")
    student = resolve_student(None, teacher, trunk_widths=(16,))[0]
    distiller = APMDistiller(student, teacher)
    distiller.compile(optimizer="adam")
    distiller.optimizer.build(distiller.trainable_variables)
    folder = tmp_path / "checkpoints"
    DistillCheckpoint(folder).save(distiller, 3)
    DistillCheckpoint(folder).save(distiller, 1)
    # Epoch 3 is another run's (or a dropped timeline's), not newer.
    assert DistillCheckpoint(folder).checkpoints() == ["epoch_00001"]
    checkpoint = DistillCheckpoint(folder, run_id="new")
    checkpoint.save(distiller, 1)
    assert checkpoint.restore(distiller) == 1
    with pytest.raises(ValueError, match="belongs to run 'new'"):
        DistillCheckpoint(folder, run_id="other").restore(distiller)
    # Nothing non-finite is saved: not a checkpoint, not a preset.
    weight = student.trainable_weights[0]
    weight.assign(np.full(weight.shape, np.nan, "float32"))
    with pytest.raises(ValueError, match="Refusing to save.*NaN/Inf"):
        checkpoint.save(distiller, 2)
    with pytest.raises(ValueError, match="Refusing to save.*NaN/Inf"):
        save_student_preset(student, tmp_path / "student")
    assert checkpoint.checkpoints() == ["epoch_00001"]
    assert not (tmp_path / "student").exists()


def test_demo_checks_epochs(tmp_path, capsys):
    # `--epochs 0` used to run the 60-epoch default.
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--epochs", "0"]) == 2
    assert "--epochs must be an int >= 1, got 0" in capsys.readouterr().err
    assert not out.exists()


def test_digits_recipe_supplies_teacher_data_and_settings(tmp_path, data_dir):
    out = str(tmp_path / "run")
    code = main(
        [
            "distill", "--recipe", "digits", "--epochs", "1",
            "--split", "train[:64]", "--validation-split", "none",
            "--data-dir", data_dir, "--output", out,
        ]
    )
    assert code == 0
    with open(os.path.join(out, "metrics.json")) as f:
        settings = json.load(f)["settings"]
    digits = RECIPES["digits"]
    assert settings["recipe"] == "digits"
    assert settings["teacher"] == digits.teacher == "vit_tiny_digits"
    assert settings["dataset"] == digits.dataset
    assert settings["epochs"] == 1  # the flag overrides the recipe's 60
    assert settings["learning_rate"] == digits.learning_rate
    assert settings["schedule"] == digits.schedule == "cosine"
    assert tuple(settings["trunk_widths"]) == digits.trunk_widths
    assert settings["validation_split"] is None


def test_recipes_refuse_unknown_names_and_settings(tmp_path, capsys):
    with pytest.raises(ValueError, match="no_such_recipe"):
        get_recipe("no_such_recipe")
    with pytest.raises(ValueError, match="learning_rat"):
        get_recipe("digits", learning_rat=1.0)
    with pytest.raises(ValueError, match="teacher="):
        distill(dataset="sklearn_digits", output=str(tmp_path / "x"))
    # The default recipe names no teacher: the flag is required.
    argv = ["distill", "--dataset", "sklearn_digits", "--output", str(tmp_path)]
    assert main(argv) == 2
    assert "--teacher is required" in capsys.readouterr().err
    assert main(argv[:1] + ["--recipe", "nope"] + argv[1:]) == 2
    assert "--recipe" in capsys.readouterr().err


def test_cli_choices_and_defaults_come_from_the_modules():
    from keras_apm.cli import build_parser
    from keras_apm.convert.official import OFFICIAL_VARIANTS
    from keras_apm.data.corruptions import CORRUPTIONS
    from keras_apm.distill.recipes import SCHEDULES
    from keras_apm.export.checks import FORMATS
    from keras_apm.export.checks import FORMAT_ALIASES
    from keras_apm.export.checks import QUANTIZATIONS
    from keras_apm.ttt import recipes as ttt_recipes
    from keras_apm.visualize.islands import METHODS

    def options(*path):
        parser = build_parser()
        for name in path:
            sub = next(
                a for a in parser._actions if hasattr(a, "choices")
                and isinstance(a.choices, dict)
            )
            parser = sub.choices[name]
        return {a.dest: a for a in parser._actions}

    assert tuple(options("export")["format"].choices) == FORMATS + tuple(FORMAT_ALIASES)
    assert tuple(options("export")["quantization"].choices) == QUANTIZATIONS
    assert set(options("convert")["variant"].choices) == set(OFFICIAL_VARIANTS)
    assert tuple(options("ttt")["corruption"].choices) == CORRUPTIONS
    assert set(options("ttt")["recipe"].choices) == set(ttt_recipes.RECIPES)
    assert set(options("distill")["recipe"].choices) == set(RECIPES)
    assert tuple(options("distill")["schedule"].choices) == SCHEDULES
    assert options("demo")["epochs"].default == RECIPES["digits_demo"].epochs
    for action in ("islands", "overfit", "interpolate", "upsample"):
        assert tuple(options("visualize", action)["method"].choices) == METHODS


def test_a_crafted_run_json_cannot_make_overwrite_delete_outside(
    tmp_path, data_dir, capsys, monkeypatch
):
    # `--overwrite` deletes the outputs run.json lists: a crafted list used
    # to delete folders outside the run directory.
    def no_work(*args, **kwargs):
        raise AssertionError("the teacher was loaded before the checks")

    monkeypatch.setattr("keras_apm.distill.recipe_runner.load_teacher", no_work)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    base = [
        "distill", "--teacher", "vit_tiny_digits", "--dataset",
        "sklearn_digits", "--data-dir", data_dir, "--output", str(out),
    ]
    for entry in ("../victim", str(victim)):
        (out / "run.json").write_text(json.dumps(
            {"kind": "distill", "config": {}, "outputs": ["student", entry]}
        ))
        assert main([*base, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert str(out / "run.json") in err and repr(entry) in err
        assert (victim / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(out)) == ["run.json"]


def test_resume_into_an_empty_output_is_refused(
    tmp_path, data_dir, capsys, monkeypatch
):
    # It used to train from scratch without a word.
    def no_work(*args, **kwargs):
        raise AssertionError("the teacher was loaded before the checks")

    monkeypatch.setattr("keras_apm.distill.recipe_runner.load_teacher", no_work)
    for out in (tmp_path / "missing", tmp_path):
        argv = [
            "distill", "--teacher", "vit_tiny_digits", "--dataset",
            "sklearn_digits", "--data-dir", data_dir, "--output", str(out),
            "--resume",
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"nothing to resume in {str(out)!r}" in err
        assert "Drop --resume" in err
    assert not (tmp_path / "missing").exists()


def test_a_damaged_checkpoint_names_its_file(tmp_path):
    # A truncated optimizer.npz or a garbage state.json used to raise a
    # bare BadZipFile / JSONDecodeError naming no file.
    teacher = load_teacher("vit_tiny_digits")
    student = resolve_student(None, teacher, trunk_widths=(16,))[0]
    distiller = APMDistiller(student, teacher)
    distiller.compile(optimizer="adam")
    distiller.optimizer.build(distiller.trainable_variables)
    checkpoint = DistillCheckpoint(tmp_path / "checkpoints")
    checkpoint.save(distiller, 1)
    folder = tmp_path / "checkpoints" / "epoch_00001"
    optimizer = folder / "optimizer.npz"
    optimizer.write_bytes(optimizer.read_bytes()[:200])
    with pytest.raises(ValueError) as error:
        checkpoint.restore(distiller)
    message = str(error.value)
    assert f"{str(optimizer)!r} is damaged (BadZipFile" in message
    assert ".npz archive" in message and "without --resume" in message
    for garbage in (b"{not json", b"[1, 2]", b'{"epoch": "one"}', b"\xff"):
        (folder / "state.json").write_bytes(garbage)
        with pytest.raises(ValueError, match="state.json' is damaged"):
            checkpoint.restore(distiller)
