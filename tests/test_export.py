"""Export to TensorFlow SavedModel and TFLite: signatures, parity, errors.

The artifacts are made once per module, by one `export_variants` call: in
this process under TensorFlow, in one TensorFlow subprocess under JAX and
PyTorch. Every artifact is checked against the Keras model of the active
backend: TFLite files with the LiteRT interpreter (`ai_edge_litert`),
SavedModels with `tf.saved_model.load` (which needs no Keras backend).
"""

import collections
import os

import keras
import numpy as np
import pytest

import keras_apm
from keras_apm.cli import main as cli_main
from keras_apm.cli.export import representative_inputs
from keras_apm.export import SIGNATURES
from keras_apm.export import export_variants
from keras_apm.export import load
from keras_apm.export.apm_export import _float32_model
from keras_apm.export.tensorflow_subprocess import run_in_subprocess

tf = pytest.importorskip("tensorflow")
litert = pytest.importorskip("ai_edge_litert.interpreter")

IMAGE_SHAPE = (32, 32, 3)
# Largest error relative to the largest reference magnitude, per output.
# SavedModel and float32: the bounds. Quantized: about twice the
# worst of 6 random models of this config (docs/export.md; measured by
# `benchmarks/export_report.py --models bounds`).
BOUNDS = {
    "saved_model": 1e-5,
    "float32": 1e-4,
    "float16": 2e-3,
    "dynamic_int8": 3e-2,
    "int8": 4e-1,
}
# Smallest cosine similarity of a feature vector with the float one.
MIN_COSINE = {"float16": 0.99999, "dynamic_int8": 0.999, "int8": 0.98}


def rel_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def to_numpy(outputs):
    return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    keras.utils.set_random_seed(0)
    # A sigmoid RGB head: with the official final ReLU a random model often
    # decodes all zeros, and a relative error of zeros checks nothing.
    model = keras_apm.APM(
        image_shape=IMAGE_SHAPE,
        patch_size=4,
        trunk_widths=(64, 32),
        feature_dim=16,
        num_levels=2,
        rgb_activation="sigmoid",
        global_head=True,
        global_num_heads=4,
    )
    directory = str(tmp_path_factory.mktemp("export_preset") / "apm")
    model.save_to_preset(directory)
    converter = keras_apm.APMImageConverter(IMAGE_SHAPE[:2], scaling="unit")
    converter.save_to_preset(directory)
    return directory


@pytest.fixture(scope="module")
def model(preset):
    return keras_apm.APM.from_preset(preset)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((3,) + IMAGE_SHAPE).astype("float32")


@pytest.fixture(scope="module")
def locations():
    # Fractional and integer locations, the grid's corners included.
    rng = np.random.default_rng(2)
    return np.concatenate(
        [rng.random((5, 2)) * 7, [[0, 0], [7, 7], [3, 0.5]]]
    ).astype("float32")


@pytest.fixture(scope="module")
def raw_calibration(tmp_path_factory):
    """Raw 0..255 calibration images in a .npy file, as the CLI takes."""
    raw = np.random.default_rng(3).integers(0, 256, (10,) + IMAGE_SHAPE)
    path = str(tmp_path_factory.mktemp("calibration") / "raw.npy")
    np.save(path, raw.astype("uint8"))
    return path


@pytest.fixture(scope="module")
def calibration(preset, raw_calibration):
    """8 of the raw images through the preset's converter, as the CLI does."""
    return representative_inputs(raw_calibration, preset, limit=8)


@pytest.fixture(scope="module")
def exports(preset, calibration, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    # Over an existing directory: `overwrite` replaces it whole.
    os.mkdir(out / "saved_model")
    (out / "saved_model" / "stale.txt").write_text("an earlier export")
    return export_variants(
        preset, out, representative_data=calibration, overwrite=True
    )


def test_saved_model_signatures_and_parity(exports, model, images, locations):
    path = exports["saved_model"]
    assert os.listdir(path) and not os.path.exists(f"{path}/stale.txt")
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == set(SIGNATURES)
    reference = to_numpy(model(images))
    assert set(reference) == {"features", "rgb", "levels", "global"}
    outputs = loaded.signatures["serving_default"](images=tf.constant(images))
    assert set(outputs) == set(reference)
    for key, value in reference.items():
        assert outputs[key].shape == value.shape
        assert rel_error(outputs[key].numpy(), value) < BOUNDS["saved_model"]
    trigger = loaded.signatures["trigger_column"](images=tf.constant(images))
    trigger = trigger["trigger"].numpy()
    expected = keras.ops.convert_to_numpy(model.trigger_column(images))
    assert trigger.shape == (3, 64)
    assert rel_error(trigger, expected) < BOUNDS["saved_model"]
    # Any batch and any number of locations in one call.
    for batch, count in ((2, len(locations)), (1, 1)):
        outputs = loaded.signatures["evaluate_locations"](
            trigger=tf.constant(trigger[:batch]),
            locations=tf.constant(locations[:count]),
        )
        expected = to_numpy(
            model.evaluate_locations(images[:batch], locations[:count])
        )
        assert set(outputs) == set(expected) == {"features", "rgb", "levels"}
        for key, value in expected.items():
            assert outputs[key].shape == value.shape
            assert rel_error(outputs[key].numpy(), value) < 1e-5, key


def test_tflite_float32_parity_with_litert(exports, model, images, locations):
    interpreter = litert.Interpreter(model_path=exports["float32"])
    assert set(interpreter.get_signature_list()) == set(SIGNATURES)
    predict = interpreter.get_signature_runner("serving_default")
    reference = to_numpy(model(images))
    for batch in (1, 3):  # the runner resizes the dynamic batch.
        outputs = predict(images=images[:batch])
        assert set(outputs) == set(reference)
        for key, value in reference.items():
            assert outputs[key].shape == value[:batch].shape
            assert rel_error(outputs[key], value[:batch]) < BOUNDS["float32"]
    trigger = interpreter.get_signature_runner("trigger_column")(
        images=images
    )["trigger"]
    evaluate = interpreter.get_signature_runner("evaluate_locations")
    for count in (len(locations), 2, 1):  # and the number of locations.
        outputs = evaluate(trigger=trigger, locations=locations[:count])
        expected = to_numpy(model.evaluate_locations(images, locations[:count]))
        for key, value in expected.items():
            assert outputs[key].shape == value.shape
            assert rel_error(outputs[key], value) < BOUNDS["float32"], key


@pytest.mark.parametrize("variant", ["float16", "dynamic_int8", "int8"])
def test_quantized_tflite_within_measured_bounds(
    exports, model, images, locations, variant
):
    runner = load(exports[variant])
    assert runner.format == "tflite"
    reference = to_numpy(model(images))
    outputs = runner.predict(images)
    for key, value in reference.items():
        assert rel_error(outputs[key], value) < BOUNDS[variant], key
    a = outputs["features"].reshape(-1, 16)
    b = reference["features"].reshape(-1, 16)
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1)
    cosine /= np.linalg.norm(b, axis=-1)
    assert cosine.min() > MIN_COSINE[variant]
    expected = to_numpy(model.evaluate_locations(images, locations))
    answers = runner.evaluate_locations(runner.trigger_column(images), locations)
    for key, value in expected.items():
        assert rel_error(answers[key], value) < BOUNDS[variant], key
    size = os.path.getsize(exports[variant])
    assert size < 0.6 * os.path.getsize(exports["float32"])


def test_quantized_files_hold_what_they_claim(exports):
    def dtypes(variant):
        interpreter = litert.Interpreter(model_path=exports[variant])
        return collections.Counter(
            np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()
        )

    float32, float16 = dtypes("float32"), dtypes("float16")
    dynamic, int8 = dtypes("dynamic_int8"), dtypes("int8")
    assert float32["float16"] == float32["int8"] == 0
    assert float16["float16"] > 0 and float16["int8"] == 0
    # dynamic_int8: int8 weights, float activations; int8: calibrated int8
    # activations too (a skipped calibration would leave them float).
    assert 0 < dynamic["int8"] < dynamic["float32"]
    assert int8["int8"] > int8["float32"]


def test_cli_calibration_inputs_go_through_the_converter(
    preset, raw_calibration, tmp_path
):
    raw = np.load(raw_calibration)[:4]
    inputs = representative_inputs(raw_calibration, preset, limit=4)
    assert inputs.dtype == np.float32
    np.testing.assert_allclose(inputs, raw / 255.0, rtol=1e-6, atol=1e-7)
    # A folder of image files, in sorted order.
    for i, image in enumerate(raw[:2]):
        keras.utils.save_img(str(tmp_path / f"{i}.png"), image, scale=False)
    inputs = representative_inputs(str(tmp_path), preset)
    np.testing.assert_allclose(inputs, raw[:2] / 255.0, rtol=1e-6, atol=1e-7)
    # A preset without an image converter takes raw 0..255 floats.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.weights.h5"):
        (bare / name).write_bytes(open(os.path.join(preset, name), "rb").read())
    inputs = representative_inputs(raw_calibration, str(bare), limit=3)
    np.testing.assert_array_equal(inputs, raw[:3].astype("float32"))


def test_cli_calibration_folder_of_mixed_sizes(preset, tmp_path):
    # Photos come in all sizes: each is resized before they are stacked,
    # with the preset's converter or, without one, to the model's size.
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 24), (32, 32), (17, 50)]):
        image = rng.integers(0, 256, size + (3,)).astype("uint8")
        keras.utils.save_img(str(folder / f"{i}.png"), image, scale=False)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.weights.h5"):
        (bare / name).write_bytes(open(os.path.join(preset, name), "rb").read())
    for source in (preset, str(bare)):
        inputs = representative_inputs(str(folder), source)
        assert inputs.shape == (3,) + IMAGE_SHAPE and inputs.dtype == np.float32
    # Without a converter the images stay raw 0..255 values, only resized.
    assert inputs.max() > 200


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the format names and folders are backend-independent checks; "
    "the export itself is covered on every backend by the `exports` fixture",
)
def test_keras_format_names_and_missing_folders(model, tmp_path):
    # Keras' names for the two formats; missing parent folders are made.
    path = keras_apm.export(model, tmp_path / "new" / "dir" / "a.tflite",
                            format="litert")
    assert path.endswith("a.tflite") and os.path.getsize(path) > 0
    runner = load(path)
    assert runner.trigger_column(np.zeros((1,) + IMAGE_SHAPE, "float32")).ndim == 2
    paths = export_variants(model, tmp_path / "exports", variants=("float32",))
    assert os.path.isfile(paths["float32"])
    with pytest.raises(ValueError, match="Keras' names"):
        keras_apm.export(model, tmp_path / "x", format="onnx")
    from keras_apm.export.checks import canonical_format

    assert canonical_format("tf_saved_model") == "saved_model"


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the CLI is backend-independent glue over keras_apm.export, "
    "whose subprocess path the `exports` fixture covers; one more "
    "subprocess here would only cost time",
)
def test_cli_int8_matches_the_python_export(
    exports, preset, raw_calibration, tmp_path, capsys
):
    output = str(tmp_path / "int8.tflite")
    code = cli_main(
        [
            "export", "--preset", preset, "--format", "tflite",
            "--quantization", "int8", "--representative-data",
            raw_calibration, "--representative-images", "8",
            "--output", output,
        ]
    )  # fmt: skip
    assert code == 0 and "Wrote tflite (int8)" in capsys.readouterr().out
    # Same calibration images through the same converter: the calibration
    # is deterministic, so the files are identical.
    with open(output, "rb") as a, open(exports["int8"], "rb") as b:
        assert a.read() == b.read()


def test_loaded_runner_for_both_formats(exports, images, locations):
    saved = load(exports["saved_model"])
    lite = load(exports["float32"], num_threads=1)
    assert (saved.format, lite.format) == ("saved_model", "tflite")
    assert saved.image_shape == lite.image_shape == IMAGE_SHAPE
    assert saved.grid_shape == lite.grid_shape == (8, 8)
    assert saved.trigger_dim == lite.trigger_dim == 64
    a, b = saved.predict(images), lite(images)
    assert set(a) == set(b) == {"features", "rgb", "levels", "global"}
    for key in a:
        assert rel_error(b[key], a[key]) < BOUNDS["float32"]
    for runner in (saved, lite):
        answers = runner.evaluate_locations(
            runner.trigger_column(images), locations
        )
        assert answers["features"].shape == (3, len(locations), 16)
    with pytest.raises(ValueError, match=r"\(batch, 32, 32, 3\)"):
        lite.predict(np.zeros((1, 16, 16, 3), "float32"))
    with pytest.raises(ValueError, match="inside the 8x8 grid"):
        saved.evaluate_locations(saved.trigger_column(images), [[0.0, 8.5]])
    with pytest.raises(ValueError, match=r"\(batch, 64\)"):
        lite.evaluate_locations(np.zeros((1, 10), "float32"), locations)
    with pytest.raises(ValueError, match="num_threads"):
        load(exports["saved_model"], num_threads=2)
    with pytest.raises(ValueError, match="does not exist"):
        load(exports["float32"] + ".missing.tflite")


# --- errors ---------------------------------------------------------------
def test_bad_formats_and_quantizations(model, tmp_path):
    with pytest.raises(ValueError, match="`format` must be one of"):
        keras_apm.export(model, str(tmp_path / "apm.onnx"), format="onnx")
    with pytest.raises(ValueError, match="Quantization applies to TFLite"):
        keras_apm.export(model, str(tmp_path / "sm"), quantization="float16")
    with pytest.raises(ValueError, match="`quantization` must be None or"):
        keras_apm.export(
            model, str(tmp_path / "a.tflite"), format="tflite",
            quantization="int4",
        )  # fmt: skip
    with pytest.raises(ValueError, match="`variants` must be distinct"):
        export_variants(model, tmp_path, variants=("float32", "bfloat16"))
    assert os.listdir(tmp_path) == []


def test_int8_needs_fitting_representative_data(model, tmp_path, images):
    target = str(tmp_path / "a.tflite")
    with pytest.raises(ValueError, match="needs `representative_data`"):
        keras_apm.export(model, target, format="tflite", quantization="int8")
    with pytest.raises(ValueError, match="needs `representative_data`"):
        export_variants(model, tmp_path, variants=("float32", "int8"))
    with pytest.raises(ValueError, match=r"shape \(N, 32, 32, 3\)"):
        keras_apm.export(
            model, target, format="tflite", quantization="int8",
            representative_data=images[:, :16],
        )  # fmt: skip
    with pytest.raises(ValueError, match="float model inputs"):
        keras_apm.export(
            model, target, format="tflite", quantization="int8",
            representative_data=(images * 255).astype("uint8"),
        )  # fmt: skip
    with pytest.raises(ValueError, match="only calibrates"):
        keras_apm.export(
            model, target, format="tflite", representative_data=images
        )
    assert os.listdir(tmp_path) == []


def test_bad_paths(model, tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="parent directory .* is a file"):
        keras_apm.export(model, str(tmp_path / "file" / "apm"))
    with pytest.raises(ValueError, match="ends with '.tflite'"):
        keras_apm.export(model, str(tmp_path / "apm.tflite"))
    with pytest.raises(ValueError, match="must end|name ends with '.tflite'"):
        keras_apm.export(model, str(tmp_path / "apm.bin"), format="tflite")
    with pytest.raises(ValueError, match="is a file"):
        export_variants(model, tmp_path / "file")
    target = tmp_path / "a.tflite"
    target.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        keras_apm.export(model, str(target), format="tflite")
    # Never a directory in place of a file, or the reverse.
    (tmp_path / "sm").write_bytes(b"a file")
    with pytest.raises(ValueError, match="is a file, but a saved_model"):
        keras_apm.export(model, str(tmp_path / "sm"), overwrite=True)
    (tmp_path / "b.tflite").mkdir()
    with pytest.raises(ValueError, match="is a directory, but a tflite"):
        keras_apm.export(
            model, str(tmp_path / "b.tflite"), format="tflite", overwrite=True
        )
    assert target.read_bytes() == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["a.tflite", "b.tflite", "file", "sm"]


def test_not_an_apm(tmp_path):
    with pytest.raises(ValueError, match="Expected a `keras_apm.APM`"):
        keras_apm.export(keras.Sequential(), str(tmp_path / "sm"))


def test_reduced_precision_models_export_a_float32_copy(model):
    config = dict(model.get_config(), dtype="mixed_bfloat16")
    mixed = keras_apm.APM.from_config(config)
    mixed.set_weights(model.get_weights())
    copy, preset_dir = _float32_model(mixed)
    assert copy is not mixed and preset_dir is None
    assert copy.dtype_policy.name == "float32"
    for a, b in zip(copy.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    same, preset_dir = _float32_model(model)
    assert same is model and preset_dir is None


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="under TensorFlow `export` runs in this process, never in the "
    "subprocess",
)
@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the child is TensorFlow whatever the parent's backend; runs once",
)
def test_subprocess_errors_keep_their_message(preset, tmp_path):
    # A preset the TensorFlow subprocess cannot load: its ValueError comes
    # back here as a ValueError with the same message.
    broken = tmp_path / "broken"
    broken.mkdir()
    with open(os.path.join(preset, "config.json")) as f:
        (broken / "config.json").write_text(f.read())
    job = {
        "path": str(tmp_path / "a.tflite"),
        "format": "tflite",
        "quantization": None,
        "overwrite": False,
    }
    with pytest.raises(ValueError, match="missing model.weights.h5"):
        run_in_subprocess(str(broken), [job])
    assert os.listdir(tmp_path) == ["broken"]


def test_cli_errors_are_clean(preset, tmp_path, capsys):
    def run(*args):
        code = cli_main(["export", "--preset", preset, *args])
        return code, capsys.readouterr().err

    code, err = run("--quantization", "float16", "--output", str(tmp_path / "sm"))
    assert code == 2 and "Quantization applies to TFLite" in err
    code, err = run(
        "--format", "tflite", "--quantization", "int8",
        "--output", str(tmp_path / "a.tflite"),
    )  # fmt: skip
    assert code == 2 and "needs `representative_data`" in err
    code, err = run(
        "--format", "tflite", "--quantization", "int8",
        "--representative-data", str(tmp_path / "nothing.txt"),
        "--output", str(tmp_path / "a.tflite"),
    )  # fmt: skip
    assert code == 2 and "folder of images or a .npy" in err
    code, err = run("--format", "tflite", "--output", str(tmp_path / "a.bin"))
    assert code == 2 and "ends with '.tflite'" in err
    assert os.listdir(tmp_path) == []
