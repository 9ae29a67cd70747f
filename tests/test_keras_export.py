"""Keras' own `model.export(path, format="tf_saved_model")` of APM models.

keras_apm.export writes three signatures; Keras' `model.export` writes the
model's `call`. It must work too: on JAX (jax2tf) the batch is a symbolic
dimension, which the input checks once turned into an error
(`InconclusiveDimensionOperation: Symbolic dimension 'batch'`).
"""

import keras
import numpy as np
import pytest

import keras_apm

pytestmark = pytest.mark.skipif(
    keras.backend.backend() not in ("jax", "tensorflow"),
    reason="Keras exports tf_saved_model from the JAX and TensorFlow backends",
)


def _apm():
    keras.utils.set_random_seed(0)
    return keras_apm.APM(
        image_shape=(16, 16, 3), patch_size=4, trunk_widths=(16,),
        feature_dim=8, rgb_widths=(8,), global_head=True, global_num_heads=2,
    )  # fmt: skip


def test_keras_export_of_apm_and_classifier(tmp_path):
    import tensorflow as tf

    images = np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 3))
    images = images.astype("float32")
    apm = _apm()
    classifier = keras_apm.APMImageClassifier(
        backbone=_apm(), num_classes=4, preprocessor=None
    )
    for name, model in (("apm", apm), ("classifier", classifier)):
        expected = keras.tree.map_structure(
            keras.ops.convert_to_numpy, model(images)
        )
        path = str(tmp_path / name)
        model.export(path, format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(path)
        for batch in (1, 3):  # the batch stays dynamic
            got = loaded.serve(tf.constant(images[:batch]))
            flat_got = keras.tree.flatten(got)
            flat_expected = keras.tree.flatten(expected)
            assert len(flat_got) == len(flat_expected), name
            for g, e in zip(flat_got, flat_expected):
                np.testing.assert_allclose(
                    np.asarray(g), e[:batch], rtol=1e-4, atol=1e-5
                )
