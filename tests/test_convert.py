"""Official checkpoint conversion, checked against a NumPy forward of the spec."""

import os

import numpy as np
import pytest
from keras import ops

import keras_apm
from keras_apm.cli import main as cli_main
from keras_apm.convert import OFFICIAL_VARIANTS
from keras_apm.convert import convert_official_checkpoint
from official_reference import random_official_state
from official_reference import reference_forward

OFFICIAL_PARAMS = {"coco": 54_347_600, "ttt": 22_822_224}


def save_pth(state, path, wrap=None, prefix=""):
    torch = pytest.importorskip("torch")
    tensors = {prefix + k: torch.from_numpy(v) for k, v in state.items()}
    torch.save({wrap: tensors} if wrap else tensors, path)
    return path


@pytest.fixture(scope="module", params=["coco", "ttt"])
def converted(request, tmp_path_factory):
    variant = request.param
    state = random_official_state(OFFICIAL_VARIANTS[variant]["shapes"], seed=7)
    root = tmp_path_factory.mktemp(variant)
    # The coco file goes through the CLI with DataParallel-style names; the
    # ttt one through the Python API wrapped as {"model": state_dict}.
    if variant == "coco":
        checkpoint = save_pth(state, str(root / "model_15.pth"), prefix="module.")
        code = cli_main(
            ["convert", "--checkpoint", checkpoint, "--variant", variant,
             "--output", str(root / "preset")]
        )
        assert code == 0
    else:
        checkpoint = save_pth(state, str(root / "ttt.pth"), wrap="model")
        convert_official_checkpoint(checkpoint, variant, str(root / "preset"))
    return variant, state, str(root / "preset")


def test_converted_preset_matches_official_forward(converted):
    variant, state, preset = converted
    model = keras_apm.APM.from_preset(preset)
    images = np.random.default_rng(3).random((1, 448, 448, 3)).astype("float32")
    out = model(images)
    ref = reference_forward(
        state, images.transpose(0, 3, 1, 2), OFFICIAL_VARIANTS[variant]["trunk_names"]
    )
    expected_keys = {"features", "rgb"} | ({"global"} if variant == "ttt" else set())
    assert set(out) == expected_keys
    for key in expected_keys:
        got = ops.convert_to_numpy(out[key])
        assert got.shape == ref[key].shape
        error = np.abs(got - ref[key]).max() / np.abs(ref[key]).max()
        assert error < 1e-4, (key, error)


def test_converted_parameter_counts(converted):
    variant, state, preset = converted
    assert sum(v.size for v in state.values()) == OFFICIAL_PARAMS[variant]
    model = keras_apm.APM.from_preset(preset, load_weights=False)
    # The TTT model's LayerNorm(1024) is never used by its forward: dropped.
    unused = 2 * 1024 if variant == "ttt" else 0
    assert model.count_params() == OFFICIAL_PARAMS[variant] - unused


def test_converted_preset_has_the_official_preprocessing(converted):
    variant, _, preset = converted
    converter = keras_apm.APMImageConverter.from_preset(preset)
    assert converter.image_size == (448, 448)
    expected = ("minmax", "bgr") if variant == "coco" else ("imagenet", "rgb")
    assert (converter.scaling, converter.channel_order) == expected


@pytest.fixture(scope="module")
def small_ttt_state():
    return random_official_state(OFFICIAL_VARIANTS["ttt"]["shapes"], seed=1)


def test_wrong_variant_is_refused_and_named(small_ttt_state, tmp_path):
    path = str(tmp_path / "ttt.npz")
    np.savez(path, **small_ttt_state)
    with pytest.raises(ValueError) as info:
        convert_official_checkpoint(path, "coco", str(tmp_path / "out"))
    message = str(info.value)
    assert "looks like the 'ttt' variant" in message
    assert "fc2.weight" in message and "little_query" in message
    assert not os.path.exists(tmp_path / "out")


def test_missing_extra_and_misshaped_tensors_are_listed(small_ttt_state, tmp_path):
    state = dict(small_ttt_state)
    del state["fc4.bias"]
    state["extra.weight"] = np.zeros((2, 2), "float32")
    state["fc5.weight"] = np.zeros((1024, 2047), "float32")
    path = str(tmp_path / "broken.npz")
    np.savez(path, **state)
    with pytest.raises(ValueError) as info:
        convert_official_checkpoint(path, "ttt", str(tmp_path / "out"))
    message = str(info.value)
    assert "Missing tensors: ['fc4.bias']" in message
    assert "Unexpected tensors: ['extra.weight']" in message
    assert "fc5.weight: expected (1024, 2048), found (1024, 2047)" in message
    assert os.listdir(tmp_path) == ["broken.npz"]  # nothing half-written


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    code = cli_main(
        ["convert", "--checkpoint", str(tmp_path / "none.pth"), "--variant",
         "ttt", "--output", str(tmp_path / "out")]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_existing_output_needs_overwrite(small_ttt_state, tmp_path):
    path = str(tmp_path / "ttt.npz")
    np.savez(path, **small_ttt_state)
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="overwrite"):
        convert_official_checkpoint(path, "ttt", str(tmp_path / "out"))
