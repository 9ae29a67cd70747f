"""`APMImageClassifier`: the keras-hub Task on the shipped `apm_tiny_digits`.

Fine-tunes on real sklearn digits (8x8 upscaled to 32x32 RGB uint8, as the
preset was distilled on) under whatever KERAS_BACKEND is set.
"""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import keras_apm
from keras_apm import APMImageClassifier
from keras_apm import APMImageClassifierPreprocessor


@pytest.fixture(scope="module")
def digits():
    """sklearn digits as 32x32 RGB uint8: 600 to train, 300 held out."""
    data = load_digits()
    images = np.kron(data.images[:900], np.ones((4, 4)))[..., None]
    images = np.repeat(images, 3, axis=-1) * (255.0 / 16.0)
    images = np.round(images).astype("uint8")
    labels = data.target[:900].astype("int32")
    return (images[:600], labels[:600]), (images[600:], labels[600:])


def accuracy(classifier, images, labels):
    logits = classifier.predict(images, batch_size=100, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def test_from_preset_fit_and_preset_round_trip(digits, tmp_path):
    (train_x, train_y), (test_x, test_y) = digits
    keras.utils.set_random_seed(0)
    # keras-hub resolves the Task subclass from the preset's backbone class.
    classifier = keras_hub.models.ImageClassifier.from_preset(
        "apm_tiny_digits", num_classes=10
    )
    assert isinstance(classifier, APMImageClassifier)
    assert isinstance(classifier.preprocessor, APMImageClassifierPreprocessor)
    assert isinstance(
        classifier.preprocessor.image_converter, keras_apm.APMImageConverter
    )
    # The preset's APM has a global head: the default pooling reads it.
    assert classifier.pooling == "global"
    # The backbone is the preset's, weights and all.
    preset = keras_apm.APM.from_preset("apm_tiny_digits")
    for got, want in zip(classifier.backbone.weights, preset.weights):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want)
        )

    before = accuracy(classifier, test_x, test_y)
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3))
    # (image, label) batches from tf.data, as `tfds.load(as_supervised=True)`
    # gives them: the preprocessor is mapped over the dataset.
    train = tf.data.Dataset.from_tensor_slices((train_x, train_y)).batch(32)
    history = classifier.fit(train, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    after = accuracy(classifier, test_x, test_y)
    # Chance is 0.1; the distilled features separate digits after one epoch.
    assert after > 0.5 and after > before + 0.2, (before, after)

    # save_to_preset + from_preset: the same predictions, head included.
    path = str(tmp_path / "apm_digits_classifier")
    classifier.save_to_preset(path)
    files = set(os.listdir(path))
    assert {
        "task.json",
        "task.weights.h5",
        "config.json",
        "model.weights.h5",
        "preprocessor.json",
        "image_converter.json",
        "checksums.json",
    } <= files
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    with open(os.path.join(path, "metadata.json")) as f:
        assert json.load(f)["tasks"] == ["ImageClassifier"]
    expected = classifier.predict(test_x[:64], verbose=0)
    loaded = keras_hub.models.ImageClassifier.from_preset(path)
    assert isinstance(loaded, APMImageClassifier)
    assert loaded.num_classes == 10 and loaded.pooling == "global"
    np.testing.assert_allclose(
        loaded.predict(test_x[:64], verbose=0), expected, atol=1e-5
    )
    # Also through the subclass, and the preprocessor alone.
    loaded = APMImageClassifier.from_preset(path)
    assert loaded.num_classes == 10
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.output_dense.kernel),
        keras.ops.convert_to_numpy(classifier.output_dense.kernel),
    )
    preprocessor = keras_hub.models.ImageClassifierPreprocessor.from_preset(
        path
    )
    assert isinstance(preprocessor, APMImageClassifierPreprocessor)

    # `.keras`: the whole Task, preprocessor included.
    keras_path = str(tmp_path / "classifier.keras")
    classifier.save(keras_path)
    restored = keras.saving.load_model(keras_path)
    assert isinstance(restored, APMImageClassifier)
    np.testing.assert_allclose(
        restored.predict(test_x[:64], verbose=0), expected, atol=1e-5
    )


def test_avg_pooling_preprocessor_and_config(digits):
    (train_x, train_y), _ = digits
    keras.utils.set_random_seed(1)
    backbone = keras_apm.APM(
        image_shape=(32, 32, 3),
        patch_size=8,
        trunk_widths=(32,),
        feature_dim=16,
        rgb_head=False,
    )
    converter = keras_apm.APMImageConverter((32, 32), scaling="minmax")
    preprocessor = APMImageClassifierPreprocessor(converter)
    classifier = APMImageClassifier(
        backbone, num_classes=3, preprocessor=preprocessor, dropout=0.1
    )
    # No global head: the mean over the 4x4 feature grid.
    assert classifier.pooling == "avg"
    # Raw images of another size and dtype: resized and scaled.
    x, y = preprocessor(train_x[:4, :20, :24].astype("float32"), train_y[:4])
    assert tuple(x.shape) == (4, 32, 32, 3)
    x = keras.ops.convert_to_numpy(x)
    assert x.min() >= 0.0 and x.max() <= 1.0
    logits = classifier.predict(train_x[:4], verbose=0)
    assert logits.shape == (4, 3)
    # The head on the hand-pooled feature grid gives the same logits.
    converted = keras.ops.convert_to_numpy(converter(train_x[:4]))
    grid = backbone.predict(converted, verbose=0)["features"]
    head = classifier.output_dense(grid.mean(axis=(1, 2)))
    np.testing.assert_allclose(
        logits, keras.ops.convert_to_numpy(head), rtol=1e-4, atol=1e-5
    )

    config = classifier.get_config()
    assert config["pooling"] == "avg" and config["num_classes"] == 3
    clone = APMImageClassifier.from_config(config)
    assert clone.pooling == "avg" and clone.dropout == 0.1
    assert isinstance(clone.preprocessor, APMImageClassifierPreprocessor)


def test_bad_arguments(tmp_path):
    backbone = keras_apm.APM(
        image_shape=(16, 16, 3),
        patch_size=8,
        trunk_widths=(16,),
        feature_dim=8,
        rgb_head=False,
    )
    with pytest.raises(ValueError, match="needs `num_classes`"):
        APMImageClassifier(backbone)
    with pytest.raises(ValueError, match="global_head=False"):
        APMImageClassifier(backbone, num_classes=2, pooling="global")
    with pytest.raises(ValueError, match="`pooling` must be one of"):
        APMImageClassifier(backbone, num_classes=2, pooling="max")
    with pytest.raises(ValueError, match="`num_classes` must be an int >= 1"):
        APMImageClassifier(backbone, num_classes=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        APMImageClassifier(backbone, num_classes=2, dropout=1.5)
    with pytest.raises(ValueError, match="must be a `keras_apm.APM`"):
        APMImageClassifier(keras.Sequential([]), num_classes=2)
    # A bare backbone preset needs num_classes, and its converter file.
    path = str(tmp_path / "bare_apm")
    backbone.save_to_preset(path)
    with pytest.raises(ValueError, match="needs `num_classes`"):
        keras_hub.models.ImageClassifier.from_preset(
            path, preprocessor=None
        )
    with pytest.raises(ValueError, match="image_converter.json"):
        keras_hub.models.ImageClassifier.from_preset(path, num_classes=2)
    classifier = keras_hub.models.ImageClassifier.from_preset(
        path, num_classes=2, preprocessor=None
    )
    assert isinstance(classifier, APMImageClassifier)
    assert classifier.preprocessor is None
