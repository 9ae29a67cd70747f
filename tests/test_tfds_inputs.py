"""Data as users load it: `tfds.load` output through fit, TTT and the CLI.

Real TFDS builders under `tfds.testing.mock_data` (random examples with
the builders' own features): cifar10 (fixed 32x32 images, a string `id`)
and caltech101 (images of varying size, a string `image/file_name`).
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_apm
from keras_apm.cli import main
from keras_apm.data import image_dataset
from keras_apm.distill import default_student_config
from keras_apm.distill.losses import patch_rgb_target
from keras_apm.teachers import Teacher
from keras_apm.ttt import TestTimeTrainer
from keras_apm.ttt.evaluation import evaluate

from test_ttt import vit_preset  # noqa: F401  (tiny ViTImageClassifier)

FIXED, VARYING = "cifar10", "caltech101"


@pytest.fixture
def mock_tfds(tmp_path):
    with tfds.testing.mock_data(num_examples=5, data_dir=str(tmp_path / "d")):
        yield


@pytest.fixture(scope="module")
def distiller(vit_teacher_preset):
    teacher = Teacher.from_preset(vit_teacher_preset)
    student = keras_apm.APM(**default_student_config(teacher))
    distiller = keras_apm.APMDistiller(student, teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    return distiller


def test_image_dataset_lets_tfds_answer_splits(mock_tfds):
    # Under mock_data the builders list no splits; TFDS still serves them.
    for name in (FIXED, VARYING):
        images, labels = next(
            iter(
                image_dataset(
                    name, image_size=(16, 16), batch_size=5, with_labels=True
                )
            )
        )
        assert images.shape == (5, 16, 16, 3) and images.dtype == tf.float32
        assert labels.dtype == tf.int32


def test_image_dataset_reraises_tfds_split_errors(tmp_path):
    data_dir = str(tmp_path / "tfds")
    tfds.builder("sklearn_digits", data_dir=data_dir).download_and_prepare()
    with pytest.raises(ValueError, match=r"sklearn_digits: one of \['test'"):
        image_dataset("sklearn_digits", split="nope", data_dir=data_dir)


@pytest.mark.parametrize("name", [FIXED, VARYING])
@pytest.mark.parametrize("as_supervised", [False, True])
def test_fit_on_tfds_load(distiller, mock_tfds, name, as_supervised):
    ds = tfds.load(name, split="train", as_supervised=as_supervised)
    if not as_supervised:  # the string fields Keras cannot take are there
        assert any(s.dtype == tf.string for s in ds.element_spec.values())
    history = distiller.fit(ds, epochs=1, batch_size=2, verbose=0)
    assert len(history.history["loss"]) == 1
    assert np.isfinite(history.history["loss"][0])
    logs = distiller.evaluate(ds, batch_size=5, return_dict=True, verbose=0)
    assert np.isfinite(logs["loss"])


def test_fit_on_batched_tfds_dicts(distiller, mock_tfds):
    ds = tfds.load(FIXED, split="train").batch(2)
    history = distiller.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_teacher_sized_images_come_from_the_original(
    distiller, mock_tfds
):
    from keras_apm.data.inputs import model_inputs

    ds = tfds.load(VARYING, split="train", as_supervised=True)
    batch = next(iter(model_inputs(ds, (8, 8), 5, teacher_image_size=(32, 32))))
    assert batch["images"].shape == (5, 8, 8, 3)
    assert batch["teacher_images"].shape == (5, 32, 32, 3)
    # Same size for both: no second copy.
    batch = next(iter(model_inputs(ds, (32, 32), 5, teacher_image_size=(32, 32))))
    assert sorted(batch) == ["images"]


def test_converted_data_is_refused_not_rescaled(distiller, mock_tfds):
    converter = keras_apm.APMImageConverter(image_size=(32, 32), scaling="unit")
    # The keras-hub habit: the converter mapped into the tf.data pipeline.
    unit = tfds.load(FIXED, split="train").map(
        lambda ex: {"image": converter(ex["image"])}
    )
    with pytest.raises(ValueError, match="look already converted"):
        distiller.fit(unit, epochs=1, verbose=0)
    standardised = tfds.load(FIXED, split="train", as_supervised=True).map(
        lambda x, y: ((tf.cast(x, tf.float32) - 127.5) / 64.0, y)
    )
    with pytest.raises(ValueError, match="look already converted"):
        distiller.fit(standardised, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="look already converted"):
        distiller.fit(
            np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(
                "float32"
            ),
            epochs=1,
            verbose=0,
        )
    # Raw float pixels in [0, 255] pass.
    raw = tfds.load(FIXED, split="train").map(
        lambda ex: {"image": tf.cast(ex["image"], tf.float32)}
    )
    assert np.isfinite(distiller.fit(raw, epochs=1, verbose=0).history["loss"][0])


def _grain_dicts(size, n=5, key="image"):
    import grain

    rng = np.random.default_rng(0)
    examples = [
        {key: rng.integers(0, 256, (*size, 3), dtype=np.uint8), "label": i}
        for i in range(n)
    ]
    return grain.MapDataset.source(examples)


def test_fit_on_grain_dicts_of_another_size(distiller):
    # Batches of `{"image", "label"}` at 20x20 for a 32x32 student/teacher,
    # resized by the same function as tf.data elements.
    ds = _grain_dicts((20, 20)).batch(2)
    batch = next(iter(distiller.adapt_dataset(ds)))
    assert sorted(batch) == ["images"]
    assert batch["images"].shape == (2, 32, 32, 3)
    history = distiller.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # Unbatched elements of varying size are converted, then batched.
    import grain

    rng = np.random.default_rng(1)
    varying = grain.MapDataset.source(
        [rng.integers(0, 256, (h, 24, 3), dtype=np.uint8) for h in (16, 40, 9)]
    )
    batches = list(distiller.adapt_dataset(varying, batch_size=2))
    assert [b["images"].shape[0] for b in batches] == [2, 1]
    # An IterDataset and a DataLoader (unbatched: `batch_size` batches it).
    iterable = _grain_dicts((20, 20)).to_iter_dataset().batch(2)
    assert next(iter(distiller.adapt_dataset(iterable)))["images"].shape == (
        2, 32, 32, 3
    )
    loader = grain.DataLoader(
        data_source=[{"image": image} for image in varying],
        sampler=grain.samplers.IndexSampler(3, num_epochs=1, shuffle=False),
    )
    batches = list(distiller.adapt_dataset(loader, batch_size=2))
    assert [b["images"].shape for b in batches] == [(2, 32, 32, 3), (1, 32, 32, 3)]


def test_fit_on_numpy_images_of_another_size(distiller):
    grey = np.random.default_rng(0).integers(0, 256, (4, 12, 12, 1), np.uint8)
    inputs = distiller.adapt_dataset(grey)
    assert inputs["images"].shape == (4, 32, 32, 3)
    # Same numbers as the tf.data path (TensorFlow's resize on TensorFlow).
    tf_batch = next(
        iter(distiller.adapt_dataset(tf.data.Dataset.from_tensor_slices(grey)))
    )
    atol = 1e-3 if keras.backend.backend() == "tensorflow" else 1.0
    np.testing.assert_allclose(inputs["images"], tf_batch["images"], atol=atol)
    history = distiller.fit(grey, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    history = distiller.fit({"image": grey, "label": np.arange(4)}, epochs=1,
                            batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_grain_and_numpy_refuse_what_tf_data_refuses(distiller):
    import grain

    wrong_key = "Expected dataset elements with an image feature 'image'"
    with pytest.raises(ValueError, match=wrong_key):
        distiller.fit(_grain_dicts((8, 8), key="img").batch(2), verbose=0)
    unit = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    with pytest.raises(ValueError, match="look already converted"):
        distiller.fit(grain.MapDataset.source(list(unit)), verbose=0)
    with pytest.raises(ValueError, match="look already converted"):
        distiller.fit({"image": unit}, verbose=0)
    with pytest.raises(ValueError, match=r"Received dtype str"):
        distiller.fit(np.full((2, 8, 8, 3), "x"), verbose=0)


def test_teacher_uses_keras_hub_converter(vit_preset):  # noqa: F811
    import keras_hub

    teacher = Teacher.from_preset(vit_preset)
    assert isinstance(teacher.converter, keras_hub.layers.ViTImageConverter)
    assert tuple(teacher.converter.image_size) == teacher.image_size
    images = np.random.default_rng(0).uniform(0, 255, (2, 20, 28, 3))
    expected = teacher.converter(images.astype("float32"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(teacher.preprocess(images)),
        keras.ops.convert_to_numpy(expected),
        atol=1e-5,
    )


@pytest.fixture(scope="module")
def trainer(vit_preset):  # noqa: F811
    # One compiled trainer (2 images a step) for the TTT tests below.
    teacher = Teacher.from_preset(vit_preset)
    return TestTimeTrainer(None, teacher, steps=1, batch_size=2, rgb_weight=0.1)


def test_ttt_rgb_target_is_the_distillation_target(trainer):
    images = np.random.default_rng(1).uniform(0, 255, (2, 16, 16, 3))
    captured = {}
    engine_adapt = trainer.engine.adapt

    def spy(inputs, target, grid=None, rgb=None):
        captured["rgb"] = keras.ops.convert_to_numpy(rgb)
        return engine_adapt(inputs, target, grid=grid, rgb=rgb)

    trainer.engine.adapt = spy
    try:
        trainer.adapt(images.astype("float32"))
    finally:
        del trainer.engine.adapt
    expected = patch_rgb_target(
        images.astype("float32"), trainer.student.patch_size
    )
    np.testing.assert_allclose(
        captured["rgb"], keras.ops.convert_to_numpy(expected), atol=1e-5
    )
    with pytest.raises(ValueError, match="look already converted"):
        trainer.adapt(images / 255.0)


def test_ttt_evaluate_on_tfds_load(trainer, mock_tfds):
    for as_supervised in (False, True):
        ds = tfds.load(VARYING, split="test", as_supervised=as_supervised)
        # Caltech-101's 102 labels are not the 10-class teacher's classes:
        # scored, they are refused (before any adaptation) ...
        with pytest.raises(ValueError, match="only 10 classes"):
            evaluate(trainer, ds.skip(1).take(3), verbose=0)
        # ... asked for, only the agreement is reported.
        record = evaluate(trainer, ds.take(3), verbose=0, accuracy=False)
        assert record["num_images"] == 3
        assert record["accuracy_apm"] is None and record["agreement"] is not None


@pytest.mark.parametrize("name", [FIXED, VARYING])
def test_cli_distill_and_ttt_on_tfds(
    name, vit_teacher_preset, vit_preset, mock_tfds, tmp_path  # noqa: F811
):
    out = tmp_path / "distilled"
    code = main(
        [
            "distill", "--teacher", vit_teacher_preset, "--dataset", name,
            "--epochs", "1", "--batch-size", "4", "--trunk-widths", "16",
            "--output", str(out),
        ]
    )
    assert code == 0
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert np.isfinite(metrics["train"]["loss"])
    assert os.path.isdir(out / "student")

    result = tmp_path / "ttt.json"
    code = main(
        [
            "ttt", "--teacher", vit_preset, "--dataset", name, "--limit", "3",
            "--steps", "1", "--batch-size", "2", "--quiet",
            "--output", str(result), *(
                # 102 labels against the teacher's 10 classes: agreement only.
                ["--no-accuracy"] if name == VARYING else []
            ),
        ]
    )
    assert code == 0
    with open(result) as f:
        record = json.load(f)
    assert record["num_images"] == 3
