"""`APMDistiller` as a Keras object: config, `.keras` files and callbacks.

Real digits, a tiny random ViT teacher (`vit_teacher_preset`), under
whatever KERAS_BACKEND is set.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import keras_apm
from keras_apm.distill import APMDistiller
from keras_apm.teachers import Teacher


def np_(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def images():
    """64 sklearn digits as 32x32 RGB in [0, 255]."""
    data = load_digits()
    x = np.kron(data.images[:64], np.ones((4, 4)))[..., None]
    return (np.repeat(x, 3, axis=-1) * (255.0 / 16.0)).astype("float32")


@pytest.fixture(scope="module")
def teacher(vit_teacher_preset):
    return Teacher.from_preset(vit_teacher_preset)


def make_distiller(teacher, seed=0, compile=True, **kwargs):
    keras.utils.set_random_seed(seed)
    student = keras_apm.APM(
        image_shape=(32, 32, 3),
        patch_size=8,
        trunk_widths=(64, 32),
        feature_dim=16,
        rgb_widths=(16,),
        global_head=True,
        global_num_heads=2,
    )
    distiller = APMDistiller(student, teacher, **kwargs)
    if compile:
        distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
    return distiller


def dataset(images):
    # A fixed order: an interrupted and an uninterrupted run see the same
    # batches.
    return tf.data.Dataset.from_tensor_slices(images).batch(16)


def assert_same_weights(got, want, **tolerance):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np_(g), np_(w), **tolerance)


def test_config_round_trip(teacher):
    distiller = make_distiller(
        teacher,
        compile=False,
        rgb_weight=0,
        global_weight=0.5,
        global_loss="mse",
        rgb_scaling="unit",
    )
    config = distiller.get_config()
    json.dumps(config)  # plain JSON, as a `.keras` file stores it
    assert config["rgb_weight"] == 0.0 and config["global_weight"] == 0.5
    assert config["teacher"]["class_name"] == "ViTTeacher"
    clone = APMDistiller.from_config(config)
    assert clone.get_config() == config
    assert clone.loss_weights == distiller.loss_weights
    assert type(clone.teacher) is type(teacher)
    assert clone.image_converter.get_config() == (
        distiller.image_converter.get_config()
    )
    # A distiller on cached targets has no teacher to store.
    cached = APMDistiller(distiller.student, None)
    assert cached.get_config()["teacher"] is None
    assert APMDistiller.from_config(cached.get_config()).teacher is None


def test_keras_file_round_trip_resumes_training(teacher, images, tmp_path):
    distiller = make_distiller(teacher)
    distiller.fit(dataset(images), epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, APMDistiller)
    # Self-contained: the teacher, its weights and the optimizer's state.
    assert type(loaded.teacher) is type(teacher)
    # The loaded teacher is frozen too: only the student trains.
    assert {id(w) for w in loaded.trainable_weights} == {
        id(w) for w in loaded.student.trainable_weights
    }
    assert_same_weights(loaded.teacher.weights, teacher.weights)
    assert_same_weights(loaded.student.weights, distiller.student.weights)
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    assert_same_weights(
        loaded.optimizer.variables, distiller.optimizer.variables
    )
    want = distiller.evaluate(dataset(images), verbose=0, return_dict=True)
    got = loaded.evaluate(dataset(images), verbose=0, return_dict=True)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
    # Both go on training identically (the Adam moments were restored).
    distiller.fit(dataset(images), epochs=1, verbose=0)
    loaded.fit(dataset(images), epochs=1, verbose=0)
    assert_same_weights(
        loaded.student.weights, distiller.student.weights, rtol=1e-4, atol=1e-6
    )


def test_model_checkpoint_weights_and_keras(teacher, images, tmp_path):
    distiller = make_distiller(teacher)
    weights_path = str(tmp_path / "ckpt" / "distiller.weights.h5")
    keras_path = str(tmp_path / "ckpt" / "distiller_{epoch}.keras")
    distiller.fit(
        dataset(images),
        epochs=2,
        verbose=0,
        callbacks=[
            keras.callbacks.ModelCheckpoint(weights_path, save_weights_only=True),
            keras.callbacks.ModelCheckpoint(keras_path),
        ],
    )
    assert sorted(os.listdir(tmp_path / "ckpt")) == [
        "distiller.weights.h5",
        "distiller_1.keras",
        "distiller_2.keras",
    ]
    loaded = keras.saving.load_model(keras_path.format(epoch=2))
    assert_same_weights(loaded.student.weights, distiller.student.weights)
    fresh = make_distiller(teacher, seed=1)
    fresh.load_weights(weights_path)
    assert_same_weights(fresh.student.weights, distiller.student.weights)


class StopAtEpoch(keras.callbacks.Callback):
    """Stands for a crash: raises when epoch `epoch` (0-based) begins."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError(f"interrupted at epoch {epoch}")


def test_backup_and_restore_resumes_to_the_same_weights(
    teacher, images, tmp_path
):
    epochs = 4
    uninterrupted = make_distiller(teacher)
    initial = [np_(w) for w in uninterrupted.student.weights]
    images = images[:32]  # 2 batches an epoch: the point is the resume
    uninterrupted.fit(dataset(images), epochs=epochs, verbose=0)

    backup_dir = str(tmp_path / "backup")
    interrupted = make_distiller(teacher, seed=1)
    interrupted.student.set_weights(initial)
    with pytest.raises(RuntimeError, match="interrupted at epoch 2"):
        interrupted.fit(
            dataset(images),
            epochs=epochs,
            verbose=0,
            callbacks=[
                keras.callbacks.BackupAndRestore(backup_dir),
                StopAtEpoch(2),
            ],
        )
    # A new process: a fresh distiller (other initial weights) resumes from
    # the backup of epoch 2 and runs the remaining 2 epochs only.
    resumed = make_distiller(teacher, seed=2)
    history = resumed.fit(
        dataset(images),
        epochs=epochs,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup_dir)],
    ).history
    assert len(history["loss"]) == 2
    assert_same_weights(
        resumed.student.weights,
        uninterrupted.student.weights,
        rtol=1e-4,
        atol=1e-5,
    )
    # Not a vacuous match: training moved the weights.
    assert not np.allclose(np_(resumed.student.weights[0]), initial[0])
