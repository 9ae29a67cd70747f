"""Reliability: the same input gives the same kind of answer on every backend,
and sizes are checked before memory is taken (issue 22).

The suite runs once per backend; each test states the one answer every
backend must give (NaN propagates, a ValueError is raised, a size error
names the size), so a backend that answers otherwise fails its own run.
"""

import json
import os
import time

import keras
import numpy as np
import pytest

import keras_apm
from keras_apm.layers.perception_field import PerceptionField
from keras_apm.layers.trigger_column import TriggerColumn
from keras_apm.utils.files import write_manifest


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    # ReLU everywhere: trunk, RGB hidden layers and the RGB output (the
    # official choice), plus the attention-pool head.
    return keras_apm.APM(
        image_shape=(16, 16, 3), patch_size=4, trunk_widths=(32, 16),
        feature_dim=8, rgb_widths=(16, 16), global_head=True,
        global_num_heads=2,
    )  # fmt: skip


def _numpy(outputs):
    return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}


def test_a_nan_pixel_propagates_to_every_output(model):
    images = np.random.default_rng(0).random((2, 16, 16, 3), "float32")
    images[0, 5, 6, 1] = np.nan
    for outputs in (
        _numpy(model(images)),
        _numpy(model.evaluate_locations(images, np.array([[0.5, 2.25]]))),
    ):
        assert set(outputs) >= {"features", "rgb"}
        for key, value in outputs.items():
            # The image with the NaN answers NaN (one column feeds every
            # location); the other image stays finite.
            assert np.isnan(value[0]).all(), key
            assert np.isfinite(value[1]).all(), key


def test_integer_inputs_are_refused_or_cast_alike(model):
    images = np.random.default_rng(1).integers(0, 255, (2, 16, 16, 3))
    with pytest.raises(ValueError, match="floating-point images.*int"):
        model(images)
    trigger = np.ones((2, 16), "int32")
    with pytest.raises(ValueError, match="floating-point trigger columns.*int32"):
        model.evaluate_locations(trigger=trigger)
    # The layers on their own compute in their dtype, as for float input.
    column = TriggerColumn(4)
    as_float = keras.ops.convert_to_numpy(column(images.astype("float32")))
    as_int = keras.ops.convert_to_numpy(column(images.astype("int32")))
    assert as_int.dtype == np.float32
    np.testing.assert_allclose(as_int, as_float, rtol=1e-6)
    field = model.field
    assert isinstance(field, PerceptionField)
    answers = _numpy(field(trigger))
    expected = _numpy(field(trigger.astype("float32")))
    for key in expected:
        assert answers[key].dtype == np.float32
        np.testing.assert_allclose(answers[key], expected[key], rtol=1e-5)
        assert np.abs(expected[key]).sum() > 0


# --- sizes are checked before memory is taken -------------------------------


def test_an_absurd_image_shape_in_a_preset_is_refused_with_its_size(tmp_path):
    preset = tmp_path / "preset"
    keras_apm.APM(
        image_shape=(16, 16, 3), patch_size=4, trunk_widths=(8,), feature_dim=4
    ).save_to_preset(preset)
    config = json.loads((preset / "config.json").read_text())
    config["config"]["image_shape"] = [100000, 100000, 3]
    (preset / "config.json").write_text(json.dumps(config))
    write_manifest(preset)  # a preset made this way, checksums and all
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"config\.json.*would need at least "
                       r"[\d.]+ [GTP]iB of memory .* Use a smaller `image_shape`"):
        keras_apm.APM.from_preset(str(preset), load_weights=False)
    assert time.perf_counter() - start < 10


def test_too_many_locations_are_refused_up_front_with_their_size(model):
    # 2e8 locations of 64 images: answers alone need ~560 GB. A broadcast
    # view: the test itself allocates nothing.
    locations = np.broadcast_to(np.zeros((1, 2), "float32"), (200_000_000, 2))
    trigger = np.zeros((64, 16), "float32")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"evaluate_locations on 64 image\(s\) "
                       r"x 200000000 locations.*would need at least .*GiB"):
        model.evaluate_locations(trigger=trigger, locations=locations)
    assert time.perf_counter() - start < 5


def test_load_weights_false_needs_no_weights_file(tmp_path):
    preset = tmp_path / "preset"
    saved = keras_apm.APM(
        image_shape=(16, 16, 3), patch_size=4, trunk_widths=(8,), feature_dim=4
    )
    saved.save_to_preset(preset)
    os.remove(preset / "model.weights.h5")
    model = keras_apm.APM.from_preset(str(preset), load_weights=False)
    assert model.image_shape == (16, 16, 3)
    with pytest.raises(ValueError, match=r"missing model\.weights\.h5"):
        keras_apm.APM.from_preset(str(preset))
