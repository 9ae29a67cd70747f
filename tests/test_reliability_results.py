"""Reliability: results are reported only when they mean something, and
output folders are checked before the work (issue 22).

An export of a classifier carries its head; exported runners answer an
empty batch like the Keras model; `export` and `visualize` refuse a
read-only output folder before loading anything.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_apm
from keras_apm.cli import main as cli_main
from keras_apm.export import load
from keras_apm.export.apm_export import _float32_model

# A tiny random ViT classifier teacher (10 classes), shared with test_ttt.py.
from test_ttt import vit_preset  # noqa: F401


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(11)
    backbone = keras_apm.APM(
        image_shape=(16, 16, 3), patch_size=4, trunk_widths=(16,),
        feature_dim=8, rgb_activation="sigmoid",
    )  # fmt: skip
    return keras_apm.APMImageClassifier(backbone, num_classes=5, pooling="avg")


@pytest.fixture(scope="module")
def classifier_preset(classifier, tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier") / "preset"
    classifier.save_to_preset(path)
    return str(path)


@pytest.fixture(scope="module")
def exported(classifier, tmp_path_factory):
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert.interpreter")
    path = str(tmp_path_factory.mktemp("export") / "classifier.tflite")
    # The object itself (under JAX and PyTorch it travels as a preset to
    # the TensorFlow subprocess, which loads it back as a classifier).
    keras_apm.export(classifier, path, format="tflite")
    return load(path, num_threads=1)


def test_a_classifier_preset_exports_with_its_head(classifier_preset):
    model, _ = _float32_model(classifier_preset)
    assert isinstance(model, keras_apm.APMImageClassifier)
    assert model.num_classes == 5


def test_exported_classifier_logits_match_keras(classifier, exported):
    images = np.random.default_rng(0).random((3, 16, 16, 3), "float32")
    outputs = exported.predict(images)
    assert set(outputs) == {"features", "rgb", "logits"}
    expected = keras.ops.convert_to_numpy(classifier(images))
    assert outputs["logits"].shape == (3, 5)
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-4, atol=1e-5)


def test_exported_runner_answers_an_empty_batch(classifier, exported):
    empty = np.zeros((0, 16, 16, 3), "float32")
    outputs = exported.predict(empty)
    keras_outputs = classifier.backbone(empty)
    for key, value in keras_outputs.items():
        assert outputs[key].shape == tuple(value.shape)
    assert outputs["logits"].shape == (0, 5)
    assert exported.trigger_column(empty).shape == (0, 16)
    answers = exported.evaluate_locations(np.zeros((0, 16), "float32"), [[1, 2]])
    assert answers["features"].shape == (0, 1, 8)
    answers = exported.evaluate_locations(
        np.zeros((2, 16), "float32"), np.zeros((0, 2), "float32")
    )
    assert answers["features"].shape == (2, 0, 8)


# --- read-only output folders ----------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no one can write to: a read-only tmpfs as root, else chmod."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    mounted = False
    if sys.platform.startswith("linux") and os.geteuid() == 0:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
            capture_output=True,
        )
        mounted = result.returncode == 0
    if not mounted:
        folder.chmod(0o555)
        try:  # root ignores permission bits
            (folder / "probe").write_text("")
        except OSError:
            pass
        else:
            folder.chmod(0o755)
            pytest.skip("neither a read-only mount nor chmod stops writes here")
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        else:
            folder.chmod(0o755)


def test_export_into_a_read_only_folder_fails_before_the_work(
    classifier_preset, read_only_dir, capsys, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(keras_apm.APM, "from_preset", never)
    code = cli_main([
        "export", "--preset", classifier_preset, "--format", "tflite",
        "--output", str(read_only_dir / "model.tflite"),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Cannot write to the folder of" in err
    assert "Traceback" not in err


def test_visualize_into_a_read_only_folder_fails_before_the_work(
    classifier_preset, read_only_dir, capsys, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(keras_apm.APM, "from_preset", never)
    code = cli_main([
        "visualize", "upsample", "--preset", classifier_preset,
        "--image", "camera", "--output", str(read_only_dir / "a" / "up.png"),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Cannot write to the folder of --output" in err
    assert "Traceback" not in err


# --- TTT: accuracy only against the classifier's own label space ----------


def _digit_folder(folder, names):
    """Two real digits per subfolder, named `names` (classes 0, 1, ...)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from keras_apm.data import upscale_digits

    data = load_digits()
    for label, name in enumerate(names):
        rows = np.flatnonzero(data.target == label)[:2]
        (folder / name).mkdir(parents=True)
        for i, image in zip(rows, upscale_digits(data.images[rows])):
            Image.fromarray(image).save(folder / name / f"{i}.png")
    return str(folder)


def _ttt(vit_preset, folder, output, *extra):
    return cli_main([
        "ttt", "--teacher", vit_preset, "--dataset", folder, "--steps", "1",
        "--batch-size", "4", "--output", str(output), "--quiet", *extra,
    ])  # fmt: skip


def test_ttt_refuses_labels_that_are_not_the_teachers_classes(
    vit_preset, tmp_path, capsys, monkeypatch
):
    from keras_apm.ttt import TestTimeTrainer

    def never(*args, **kwargs):
        raise AssertionError("adapted before the label check")

    monkeypatch.setattr(TestTimeTrainer, "adapt", never)
    folder = _digit_folder(tmp_path / "named", ["cat", "dog"])
    code = _ttt(vit_preset, folder, tmp_path / "r.json")
    err = capsys.readouterr().err
    assert code == 2 and "scores 10 classes" in err and "--label-map" in err
    assert "--no-accuracy" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "r.json")


def test_ttt_label_space_checks_through_the_python_api(vit_preset):
    from keras_apm.teachers import Teacher
    from keras_apm.ttt import LinearHeadClassifier
    from keras_apm.ttt import TestTimeTrainer
    from keras_apm.ttt.evaluation import evaluate
    from keras_apm.ttt.evaluation import label_mapping

    teacher = Teacher.from_preset(vit_preset)
    head = LinearHeadClassifier(teacher)  # 10 classes, no names
    # A TFDS label of 102 classes (Caltech-101's count) is refused ...
    with pytest.raises(ValueError, match="scores 10 classes.*102 classes"):
        label_mapping(head, [f"c{i}" for i in range(102)])
    # ... and so is a label out of range where the names are unknown,
    # before the batch is adapted.
    trainer = TestTimeTrainer(teacher=teacher, steps=1, batch_size=2)
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype("uint8")
    with pytest.raises(ValueError, match="label 57.*only 10 classes"):
        evaluate(trainer, [(images, np.array([1, 57]))], verbose=0)
    # Asked for, only the agreement is reported.
    record = evaluate(
        trainer, [(images, np.array([1, 57]))], verbose=0, accuracy=False
    )
    assert record["accuracy_teacher"] is None and record["accuracy_apm"] is None
    assert 0.0 <= record["agreement"] <= 1.0
    assert label_mapping(head, [str(i) for i in range(10)]) is None
    mapped = label_mapping(head, ["cat", "dog"], {"cat": 3, "dog": 5})
    np.testing.assert_array_equal(mapped, [3, 5])


def test_ttt_label_map(vit_preset, tmp_path, capsys):
    folder = _digit_folder(tmp_path / "named", ["cat", "dog"])
    mapping = tmp_path / "map.json"
    mapping.write_text('{"cat": 0, "dog": 1}')
    assert _ttt(vit_preset, folder, tmp_path / "a.json", "--label-map", str(mapping)) == 0
    record = json.loads((tmp_path / "a.json").read_text())
    labels = [p["label"] for p in record["predictions"]]
    teacher = np.array([p["teacher"] for p in record["predictions"]])
    assert labels == [0, 0, 1, 1]
    assert record["accuracy_teacher"] == pytest.approx(np.mean(teacher == labels))
