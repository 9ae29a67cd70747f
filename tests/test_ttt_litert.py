"""On-device test-time training: one LiteRT file, run by `ai_edge_litert`.

One file is exported per module (through `keras-apm export --ttt`, under
any backend: JAX and PyTorch export in a TensorFlow subprocess) from the
shipped `vit_tiny_digits` teacher and a seeded default student, 20 steps
on 32 of the 64 grid locations; the tests drive it like a phone would and
compare it with Keras' `TestTimeTrainer` on real digits.
"""

import json

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from keras_apm.cli import main
from keras_apm.data import digits_split_indices
from keras_apm.data import upscale_digits
from keras_apm.data.corruptions import corrupt
from keras_apm.ttt import TestTimeTrainer

litert = pytest.importorskip("ai_edge_litert.interpreter")

TEACHER = "vit_tiny_digits"
STEPS, LOCATIONS = 20, 32


@pytest.fixture(scope="module")
def digits():
    """Real test digits: 3 clean and the same 3 under fog at severity 5."""
    data = load_digits()
    test = digits_split_indices()[1][:3]
    clean = upscale_digits(data.images[test]).astype("float32")
    foggy = np.stack([corrupt(x, "fog", 5, seed=i) for i, x in enumerate(clean)])
    return np.concatenate([clean, foggy]).astype("float32")


@pytest.fixture(scope="module")
def ttt_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ttt") / "ttt.tflite")
    code = main(
        [
            "export", "--ttt", "--teacher", TEACHER, "--format", "tflite",
            "--steps", str(STEPS), "--locations-per-step", str(LOCATIONS),
            "--output", path,
        ]
    )  # fmt: skip
    assert code == 0
    return path


@pytest.fixture(scope="module")
def keras_trainer():
    # The same settings: the CLI's seed 0, the default recipe.
    return TestTimeTrainer(
        teacher=TEACHER, steps=STEPS, locations_per_step=LOCATIONS, batch_size=100
    )


class KerasAdam(keras.optimizers.Adam):
    """Keras' own Adam update on every backend.

    A subclass keeps Keras' update: on PyTorch, Keras TTT's plain `Adam` is
    switched to `torch._fused_adam_` (`keras_apm.backend.torch_adam`), the
    same algebra in another order of float operations, so its weights differ
    from Keras' (and the file's) in the last bit, and 20 TTT steps grow that
    to ~5e-4 relative in the loss.
    """


def _operator_codes(path):
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(path)
    return [
        (max(code.builtinCode, code.deprecatedBuiltinCode), code.customCode)
        for code in model.operatorCodes
    ]


def test_file_is_builtin_ops_only(ttt_file):
    from tensorflow.lite.python import schema_py_generated as schema

    codes = _operator_codes(ttt_file)
    custom = [c for c in codes if c[0] == schema.BuiltinOperator.CUSTOM]
    assert codes and not custom  # no Flex (TensorFlow) op, no custom op
    # The stock interpreter (no Flex delegate) loads every signature.
    interpreter = litert.Interpreter(model_path=ttt_file)
    assert set(interpreter.get_signature_list()) == {
        "targets", "train", "reset", "classify", "infer", "settings",
    }  # fmt: skip


def test_parity_with_keras_ttt(ttt_file, keras_trainer, digits):
    from keras import ops

    from keras_apm.export import LiteRTTestTimeTrainer

    lite = LiteRTTestTimeTrainer(ttt_file, num_threads=1)
    assert (lite.steps, lite.locations_per_step) == (STEPS, LOCATIONS)
    ours = lite.adapt(digits)
    theirs = keras_trainer.adapt(digits)
    # The teacher in the file and in Keras: float rounding apart (2.5e-6
    # measured, targets of norm ~3).
    np.testing.assert_allclose(ours["target"], theirs["target"], atol=1e-5)
    # The 20 TTT steps from the same targets and initial student, with
    # Keras' own Adam update: the same losses to 1e-5 on every backend
    # (measured <= 3.5e-6).
    reference = keras_trainer
    if keras.backend.backend() == "torch":  # Keras' update, not the fused one
        reference = TestTimeTrainer(
            teacher=TEACHER, steps=STEPS, locations_per_step=LOCATIONS,
            optimizer=KerasAdam.from_config(keras_trainer.optimizer.get_config()),
        )  # fmt: skip
    inputs = ops.cast(reference.preprocessor(digits), "float32")
    same = ops.convert_to_numpy(reference.engine.adapt(inputs, ours["target"])["loss"])
    np.testing.assert_allclose(ours["loss"], same, rtol=1e-5)
    # End to end (each side computes its own targets), and PyTorch's fused
    # Adam: rounding apart, which a ReLU's kink can amplify on an image
    # (measured: 6 of 6 images within 1e-5 on TensorFlow; the worst image
    # 6e-5 on JAX, 1e-3 on PyTorch; docs/export.md has the full split).
    np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=3e-3)
    # Clean and foggy digits: the same predictions.
    np.testing.assert_array_equal(ours["predictions"], theirs["predictions"])
    np.testing.assert_array_equal(
        ours["teacher_predictions"], theirs["teacher_predictions"]
    )


def test_predictions_agree_with_keras_ttt_on_corrupted_digits(
    ttt_file, keras_trainer
):
    """>= 99% of 100 real test digits, 50 clean and 50 under the 15
    corruptions at severity 5, get the same class from the file and Keras."""
    from keras_apm.data.corruptions import CORRUPTIONS
    from keras_apm.export import LiteRTTestTimeTrainer

    data = load_digits()
    test = digits_split_indices()[1]
    clean = upscale_digits(data.images[test[:50]]).astype("float32")
    other = upscale_digits(data.images[test[50:100]]).astype("float32")
    names = [CORRUPTIONS[i % len(CORRUPTIONS)] for i in range(len(other))]
    corrupted = np.stack(
        [corrupt(x, name, 5, seed=i) for i, (x, name) in enumerate(zip(other, names))]
    )
    images = np.concatenate([clean, corrupted]).astype("float32")
    labels = data.target[test[:100]]
    ours = LiteRTTestTimeTrainer(ttt_file, num_threads=1).adapt(images)
    theirs = keras_trainer.adapt(images)
    agreement = np.mean(ours["predictions"] == theirs["predictions"])
    assert agreement >= 0.99, agreement
    # The adapted students classify real digits, not noise.
    assert np.mean(ours["predictions"][:50] == labels[:50]) >= 0.9


def test_reset_and_infer(ttt_file, digits):
    from keras_apm.export import LiteRTTestTimeTrainer

    lite = LiteRTTestTimeTrainer(ttt_file, num_threads=1, steps=3)
    first = lite.adapt_image(digits[0])
    lite.adapt_image(digits[4])
    again = lite.adapt_image(digits[0])  # `reset` forgets the other image
    np.testing.assert_array_equal(first["loss"], again["loss"])
    assert first["loss"][-1] < first["loss"][0]
    runner = lite.interpreter.get_signature_runner("infer")
    out = runner(images=digits[:1])
    assert out["features"].shape == (1, 8, 8, 64)
    np.testing.assert_allclose(out["global"][0], again["global"], atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\)"):
        lite.adapt(np.zeros((1, 16, 16, 3), "float32"))


def test_cli_ttt_tflite(ttt_file, tmp_path, capsys):
    from test_ttt_cli import write_digit_folder

    folder = write_digit_folder(tmp_path / "digits", per_class=1)
    out = tmp_path / "result.json"
    args = ["ttt", "--teacher", TEACHER, "--dataset", folder, "--quiet"]
    code = main(
        args + ["--tflite", ttt_file, "--threads", "1", "--steps", "5",
                "--output", str(out)]
    )  # fmt: skip
    assert code == 0
    record = json.loads(out.read_text())
    assert record["num_images"] == 3
    assert record["settings"]["engine"] == "litert"
    assert record["settings"]["steps"] == 5
    assert record["seconds_per_image"] > 0
    assert 0 <= record["agreement"] <= 1 and record["accuracy_apm"] is not None
    # Settings baked into the file are refused, with the flag named.
    code = main(
        args + ["--tflite", ttt_file, "--recipe", "official",
                "--output", str(tmp_path / "x.json")]
    )  # fmt: skip
    assert code == 2 and "--recipe" in capsys.readouterr().err


def test_export_ttt_errors(tmp_path, capsys):
    base = ["export", "--ttt", "--teacher", TEACHER, "--output"]
    assert main(base + [str(tmp_path / "a"), "--format", "saved_model"]) == 2
    assert "--format tflite" in capsys.readouterr().err
    target = str(tmp_path / "a.tflite")
    assert main(base + [target, "--format", "tflite", "--quantization", "int8"]) == 2
    assert "float16" in capsys.readouterr().err
    assert main(["export", "--format", "tflite", "--output", target]) == 2
    assert "--preset is required" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# `locations_per_step` in Keras TTT.


def test_locations_per_step_in_keras(keras_trainer, digits):
    from keras_apm.ttt.subsets import step_indices

    images, fast = digits[:2], {"jit_compile": keras.backend.backend() == "jax"}
    full = TestTimeTrainer(teacher=TEACHER, steps=2, **fast)
    # All 64 locations by index: the whole grid (the same losses).
    every = TestTimeTrainer(teacher=TEACHER, steps=2, locations_per_step=64, **fast)
    np.testing.assert_allclose(
        every.adapt(images)["loss"], full.adapt(images)["loss"], rtol=1e-5
    )
    assert keras_trainer.settings()["locations_per_step"] == LOCATIONS
    first, second = step_indices((8, 8), 16, steps=2, seed=0)
    assert len(set(first.tolist())) == 16 and not np.array_equal(first, second)
    np.testing.assert_array_equal(first, step_indices((8, 8), 16, 2, seed=0)[0])
    with pytest.raises(ValueError, match="between 1 and the student's 64"):
        TestTimeTrainer(teacher=TEACHER, locations_per_step=65)
    with pytest.raises(ValueError, match="batched engine"):
        keras_trainer.adapt(images, engine="per_image")
