"""APM, its converter, layers and Tasks through keras-hub's own test harness.

keras-hub ships its `TestCase` (`run_backbone_test`, `run_preset_test`,
`run_preprocessing_layer_test` with Grain, ...) in the wheel; these tests hold
keras_apm to the conventions keras-hub checks on its own models. The harness
needs `grain` (the `test` extra) and is loaded through
`keras_apm.utils.keras_hub_compat`, the one home of private keras-hub names.

Channels-first: an APM and its converter read channels-last images whatever
`keras.config.image_data_format()` is (see docs/keras_hub_conventions.md), so the
harness's own data-format pass (which feeds `(B, C, H, W)` and expects
transposed outputs) does not apply; `test_global_channels_first_*` check
instead that the harness passes unchanged under a global "channels_first" and
that `(B, C, H, W)` input is refused with one clear error.
"""

import keras
import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("tensorflow")

import keras_apm  # noqa: E402
from keras_apm import layers  # noqa: E402
from keras_apm.utils.keras_hub_compat import keras_hub_test_case  # noqa: E402

TestCase = keras_hub_test_case()

TINY = dict(
    image_shape=(16, 16, 3),
    patch_size=4,
    trunk_widths=(16,),
    feature_dim=8,
    rgb_widths=(8,),
    global_head=True,
    global_num_heads=2,
)
TINY_OUTPUT_SHAPE = {
    "features": (2, 4, 4, 8),
    "rgb": (2, 4, 4, 3),
    "global": (2, 8),
}
APMImageClassifier = keras_apm.APMImageClassifier


def _images(batch=2, height=16, width=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((batch, height, width, 3)).astype("float32")


def _raw_images(batch=2, height=20, width=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, height, width, 3)).astype("float32")


# keras-hub's backbone check quantizes the model: Keras' per-layer
# `gc.collect()` (tests/conftest.py) would be most of its time.
@pytest.mark.usefixtures("no_gc_per_layer")
class APMBackboneHarnessTest(TestCase):
    def test_backbone_basics(self):
        self.run_vision_backbone_test(
            cls=keras_apm.APM,
            init_kwargs=dict(TINY),
            input_data=_images(),
            expected_output_shape=TINY_OUTPUT_SHAPE,
            # APM reads channels-last whatever the global data format is:
            # see `test_global_channels_first_changes_nothing`.
            run_data_format_check=False,
        )

    def test_global_channels_first_changes_nothing(self):
        original = keras.config.image_data_format()
        keras.config.set_image_data_format("channels_first")
        try:
            self.run_backbone_test(
                cls=keras_apm.APM,
                init_kwargs=dict(TINY),
                input_data=_images(),
                expected_output_shape=TINY_OUTPUT_SHAPE,
                run_mixed_precision_check=False,
                run_quantization_check=False,
            )
        finally:
            keras.config.set_image_data_format(original)

    def test_global_channels_first_shipped_pair_matches_channels_last(self):
        raw = _raw_images(height=40, width=36)
        converter = keras_apm.APMImageConverter.from_preset("apm_tiny_digits")
        model = keras_apm.APM.from_preset("apm_tiny_digits")
        expected = model(converter(raw))
        original = keras.config.image_data_format()
        keras.config.set_image_data_format("channels_first")
        try:
            converter = keras_apm.APMImageConverter.from_preset(
                "apm_tiny_digits"
            )
            model = keras_apm.APM.from_preset("apm_tiny_digits")
            self.assertEqual(converter.data_format, "channels_last")
            self.assertAllClose(
                expected, model(converter(raw)), atol=1e-5, rtol=1e-5
            )
            first = np.moveaxis(keras.ops.convert_to_numpy(converter(raw)), -1, 1)
            with self.assertRaisesRegex(ValueError, "looks channels-first"):
                model(first)
            with self.assertRaisesRegex(ValueError, "looks channels-first"):
                converter(np.moveaxis(raw, -1, 1))
            with self.assertRaisesRegex(ValueError, "channels-last"):
                keras_apm.APMImageConverter(
                    (16, 16), data_format="channels_first"
                )
        finally:
            keras.config.set_image_data_format(original)

    def test_preset(self):
        self.run_preset_test(
            cls=keras_apm.APM,
            preset="apm_tiny_digits",
            input_data=_images(height=32, width=32),
            expected_output_shape={
                "features": (2, 8, 8, 64),
                "rgb": (2, 8, 8, 3),
                "global": (2, 64),
            },
        )

    def test_converter_preset(self):
        self.run_preset_test(
            cls=keras_apm.APMImageConverter,
            preset="apm_tiny_digits",
            input_data=_raw_images(),
            expected_output_shape=(2, 32, 32, 3),
        )

    def test_model_saving(self):
        self.run_model_saving_test(
            cls=keras_apm.APM,
            init_kwargs=dict(TINY),
            input_data=_images(),
        )


class APMImageConverterHarnessTest(TestCase):
    def test_preprocessing_layer_every_scaling_and_order(self):
        for scaling in ("minmax", "imagenet", "unit", "none"):
            for channel_order in ("rgb", "bgr"):
                with self.subTest(scaling=scaling, channel_order=channel_order):
                    output = self.run_preprocessing_layer_test(
                        cls=keras_apm.APMImageConverter,
                        init_kwargs={
                            "image_size": (16, 16),
                            "scaling": scaling,
                            "channel_order": channel_order,
                        },
                        input_data=_raw_images(),
                        return_output=True,
                    )
                    self.assertEqual(tuple(output.shape), (2, 16, 16, 3))

    def test_grain_minmax_bgr_values(self):
        # The Grain path must compute what the eager path computes, and
        # return NumPy (checked inside the harness); here the values too.
        raw = _raw_images()
        converter = keras_apm.APMImageConverter(
            (16, 16), scaling="minmax", channel_order="bgr"
        )
        plain = keras_apm.APMImageConverter((16, 16), scaling="none")
        resized = keras.ops.convert_to_numpy(plain(raw))
        lo = resized.min(axis=(1, 2, 3), keepdims=True)
        hi = resized.max(axis=(1, 2, 3), keepdims=True)
        expected = ((resized - lo) / (hi - lo))[..., ::-1]
        self.run_grain_preprocessing_test(converter, raw, expected)


class APMLayersHarnessTest(TestCase):
    def test_trigger_column(self):
        self.run_layer_test(
            cls=layers.TriggerColumn,
            init_kwargs={"patch_size": 4, "channels": 2},
            input_data=_images(),
            expected_output_shape=(2, 4 * 4 * 2),
            expected_num_trainable_weights=2,
        )

    def test_attention_pool_head(self):
        self.run_layer_test(
            cls=layers.AttentionPoolHead,
            init_kwargs={"num_heads": 2},
            input_data=_images(height=4, width=4)[..., :2].repeat(4, -1),
            expected_output_shape=(2, 8),
            expected_num_trainable_weights=9,
        )

    def test_perception_mlp(self):
        self.run_layer_test(
            cls=layers.PerceptionMLP,
            init_kwargs={
                "trunk_widths": (16, 8),
                "feature_dim": 4,
                "num_levels": 2,
                "rgb_widths": (8,),
            },
            input_data=np.random.default_rng(0)
            .random((2, 5, 12))
            .astype("float32"),
            expected_output_shape={
                "features": (2, 5, 4),
                "levels": (2, 5, 2, 4),
                "rgb": (2, 5, 3),
            },
            # trunk 2 + level head 1 + feature head 1 + rgb 2 Dense layers.
            expected_num_trainable_weights=12,
        )

    def test_perception_field(self):
        # The fast path (the APM default) and mixed precision run in
        # `test_backbone_basics`; here the direct path, in float32.
        for fast_path in (False,):
            with self.subTest(fast_path=fast_path):
                self.run_layer_test(
                    cls=layers.PerceptionField,
                    init_kwargs={
                        "grid_shape": (2, 3),
                        "position_dim": 8,
                        "mlp": layers.PerceptionMLP(
                            trunk_widths=(16,), feature_dim=4, rgb_widths=(8,)
                        ),
                        "chunk_size": 4,
                        "fast_path": fast_path,
                    },
                    input_data=np.random.default_rng(0)
                    .random((2, 6))
                    .astype("float32"),
                    expected_output_shape={
                        "features": (2, 6, 4),
                        "rgb": (2, 6, 3),
                    },
                    expected_num_trainable_weights=8,
                    run_precision_checks=False,
                )

    def test_position_encoding(self):
        self.run_layer_test(
            cls=layers.SinCosPositionEncoding2D,
            init_kwargs={"dim": 8},
            input_data=np.array([[0.0, 1.5], [2.0, 3.0]], "float32"),
            expected_output_shape=(2, 8),
            # No weights to train.
            run_training_check=False,
        )

    def test_query_unfold(self):
        self.run_layer_test(
            cls=layers.QueryUnfold,
            init_kwargs={"position_dim": 8},
            input_data={
                "trigger": np.ones((2, 6), "float32"),
                "locations": np.array([[0, 0], [1, 2], [0.5, 1]], "float32"),
            },
            expected_output_shape=(2, 3, 14),
            # No weights, and its inputs have different first axes.
            run_training_check=False,
        )


class APMImageClassifierHarnessTest(TestCase):
    def _init_kwargs(self):
        converter = keras_apm.APMImageConverter((16, 16), scaling="unit")
        preprocessor = APMImageClassifier.preprocessor_cls(
            image_converter=converter
        )
        return {
            "backbone": keras_apm.APM(**TINY),
            "preprocessor": preprocessor,
            "num_classes": 3,
        }

    def test_task(self):
        images = _raw_images(batch=4)
        labels = np.array([0, 2, 1, 2])
        self.run_task_test(
            cls=APMImageClassifier,
            init_kwargs=self._init_kwargs(),
            train_data=(images, labels),
            expected_output_shape=(4, 3),
        )

    def test_model_saving(self):
        self.run_model_saving_test(
            cls=APMImageClassifier,
            init_kwargs=self._init_kwargs(),
            # Calling a Task runs the model only: converted images (keras-hub
            # convention; `predict` and `fit` run the preprocessor).
            input_data=_images(),
        )

    def test_preset(self):
        self.run_preset_test(
            cls=APMImageClassifier,
            preset="apm_tiny_digits",
            init_kwargs={"num_classes": 3},
            input_data=_images(height=32, width=32),
            expected_output_shape=(2, 3),
        )
