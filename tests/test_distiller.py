"""`APMDistiller`: fit / evaluate on real digits from a tiny random ViT teacher.

Runs under whatever KERAS_BACKEND is set (the training steps are
backend-specific: keras_apm/distill/{jax,tensorflow,torch}_step.py).
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
from keras_apm.data import cache_teacher_features
from keras_apm.data import load_feature_cache
from keras_apm.distill import APMDistiller
from keras_apm.distill import DistillCheckpoint
from keras_apm.distill import default_level_layers
from keras_apm.distill import default_student_config
from keras_apm.teachers import Teacher


def np_(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def digits():
    """128 sklearn digits as 32x32 RGB in [0, 255], and their labels."""
    data = load_digits()
    images = np.kron(data.images[:128], np.ones((4, 4)))  # 8x8 -> 32x32
    images = np.repeat(images[..., None], 3, axis=-1) * (255.0 / 16.0)
    return images.astype("float32"), data.target[:128].astype("int32")



@pytest.fixture(scope="module")
def teacher(vit_teacher_preset):
    return Teacher.from_preset(vit_teacher_preset)


@pytest.fixture(scope="module")
def level_teacher(teacher):
    # The same backbone, also returning the grids after blocks 0 and 1.
    return type(teacher)(teacher.model, layers=[0, -1])


def make_student(num_levels=1, seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    config = dict(
        image_shape=(32, 32, 3),
        patch_size=8,
        trunk_widths=(64, 32),
        feature_dim=16,
        num_levels=num_levels,
        rgb_widths=(16,),
        global_head=True,
        global_num_heads=2,
    )
    config.update(overrides)
    return keras_apm.APM(**config)


def dataset(images, labels=None, batch_size=32):
    items = images if labels is None else (images, labels)
    return tf.data.Dataset.from_tensor_slices(items).batch(batch_size)


def assert_decreased(history, key):
    values = history[key]
    assert values[-1] < values[0], f"{key} did not decrease: {values}"


# ----------------------------------------------------------------------------
# Training with the teacher in the loop.


def test_fit_online_teacher(teacher, digits):
    images, labels = digits
    student = make_student()
    distiller = APMDistiller(student, teacher)
    # Only the student trains: the frozen teacher adds no trainable weight.
    assert {id(w) for w in distiller.trainable_weights} == {
        id(w) for w in student.trainable_weights
    }
    teacher_before = [np_(w).copy() for w in teacher.weights]
    student_before = [np_(w).copy() for w in student.trainable_weights]

    distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
    # (images, labels) batches as from TFDS: the labels are ignored.
    history = distiller.fit(
        dataset(images[:96], labels[:96]),
        validation_data=dataset(images[96:]),
        epochs=4,
        verbose=0,
    ).history
    names = [
        "loss",
        "grid_loss",
        "rgb_loss",
        "global_loss",
        "grid_cosine",
        "global_cosine",
    ]
    assert sorted(history) == sorted(names + [f"val_{n}" for n in names])
    for key in ("loss", "grid_loss", "rgb_loss", "global_loss", "val_loss"):
        assert_decreased(history, key)
    for key in ("grid_cosine", "global_cosine", "val_grid_cosine"):
        assert history[key][-1] > history[key][0]
    # The default global loss is 1 - cosine.
    np.testing.assert_allclose(
        np.add(history["global_loss"], history["global_cosine"]), 1.0, atol=1e-5
    )
    for before, weight in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(np_(weight), before)
    changed = [
        not np.allclose(np_(w), before)
        for w, before in zip(student.trainable_weights, student_before)
    ]
    assert all(changed)


def _numpy_terms(teacher, student, images, global_loss):
    t = {k: np_(v) for k, v in teacher(images).items()}
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    hi = images.max(axis=(1, 2, 3), keepdims=True)
    s = {k: np_(v) for k, v in student((images - lo) / (hi - lo)).items()}
    b = len(images)
    pooled = images.reshape(b, 4, 8, 4, 8, 3).mean(axis=(2, 4))
    rgb_target = (pooled - lo) / (hi - lo)

    def cosine(a, c):
        a = a / np.linalg.norm(a, axis=-1, keepdims=True)
        c = c / np.linalg.norm(c, axis=-1, keepdims=True)
        return float(np.mean(np.sum(a * c, axis=-1)))

    terms = {
        "grid_loss": float(np.mean((s["features"] - t["grid"]) ** 2)),
        "rgb_loss": float(np.mean((s["rgb"] - rgb_target) ** 2)),
        "grid_cosine": cosine(s["features"], t["grid"]),
        "global_cosine": cosine(s["global"], t["global"]),
    }
    if global_loss == "mse":
        terms["global_loss"] = float(np.mean((s["global"] - t["global"]) ** 2))
    else:
        terms["global_loss"] = 1.0 - terms["global_cosine"]
    return terms


def test_evaluate_matches_numpy(teacher, digits):
    # global_loss="cosine" (the default) is checked in test_fit_online_teacher.
    global_loss = "mse"
    images = digits[0][:32]
    student = make_student()
    distiller = APMDistiller(
        student,
        teacher,
        grid_weight=1.5,
        rgb_weight=0.5,
        global_weight=2.0,
        global_loss=global_loss,
    )
    distiller.compile(optimizer="adam")
    logs = distiller.evaluate(
        images, batch_size=32, verbose=0, return_dict=True
    )
    expected = _numpy_terms(teacher, student, images, global_loss)
    expected["loss"] = (
        1.5 * expected["grid_loss"]
        + 0.5 * expected["rgb_loss"]
        + 2.0 * expected["global_loss"]
    )
    assert sorted(logs) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(logs[key], value, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# Cached targets and GLOM levels.


def test_levels_from_cache_match_online_and_train(
    level_teacher, digits, tmp_path
):
    images, teacher = digits[0], level_teacher
    cache = str(tmp_path / "cache")
    cache_teacher_features(
        teacher,
        dataset(images[:64]),
        cache,
        shard_size=32,
        image_dtype="float32",
        verbose=0,
    )
    train = load_feature_cache(cache, batch_size=32)

    student = make_student(num_levels=2)
    online = APMDistiller(student, teacher)
    cached = APMDistiller(student)  # the same student, no teacher
    for distiller in (online, cached):
        distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
    logs_online = online.evaluate(
        images[:64], batch_size=32, verbose=0, return_dict=True
    )
    logs_cached = cached.evaluate(train, verbose=0, return_dict=True)
    assert "level_0_loss" in logs_online and "level_1_loss" in logs_online
    assert sorted(logs_online) == sorted(logs_cached)
    for key in logs_online:
        np.testing.assert_allclose(
            logs_cached[key], logs_online[key], rtol=1e-4, atol=1e-5
        )

    level_head = student.get_layer("field").mlp.level_heads[0]
    before = np_(level_head.kernel).copy()
    history = cached.fit(train, epochs=4, verbose=0).history
    for key in ("loss", "grid_loss", "level_0_loss", "level_1_loss"):
        assert_decreased(history, key)
    # The lower level has its own head, and it was trained.
    assert not np.allclose(np_(level_head.kernel), before)
    # The top level is the features, regressed on the last layer (= grid).
    np.testing.assert_allclose(
        history["level_1_loss"], history["grid_loss"], rtol=1e-5
    )


def test_teacher_preset_and_default_student(vit_teacher_preset):
    # A preset name loads the teacher, with evenly spaced levels ending at
    # the last block when the student has levels.
    distiller = APMDistiller(make_student(num_levels=2), vit_teacher_preset)
    assert distiller.teacher.layer_indices == (0, 1)
    assert default_level_layers(12, 3) == (3, 7, 11)
    assert default_level_layers(2, 1) == (1,)

    config = default_student_config(distiller.teacher, num_levels=2)
    assert config["image_shape"] == (32, 32, 3)
    assert config["patch_size"] == 8
    assert config["feature_dim"] == 16
    assert config["trunk_widths"] == (64, 32, 16)
    assert config["global_head"] and config["num_levels"] == 2
    student = keras_apm.APM(**config)
    assert APMDistiller(student, distiller.teacher).num_level_terms == 2


# ----------------------------------------------------------------------------
# Mixed precision.


def test_mixed_bfloat16(teacher, digits):
    images = digits[0][:64]
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        student = make_student()
        distiller = APMDistiller(student, teacher)
        distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
        history = distiller.fit(
            dataset(images), epochs=3, verbose=0
        ).history
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert student.dtype_policy.name == "mixed_bfloat16"
    assert student.compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in student.trainable_weights)
    assert keras.backend.standardize_dtype(
        student(images[:2] / 255.0)["features"].dtype
    ) == "bfloat16"
    for key in ("loss", "grid_loss", "rgb_loss", "global_loss"):
        assert np.all(np.isfinite(history[key]))
        assert_decreased(history, key)


# ----------------------------------------------------------------------------
# Checkpoints and resuming.


def test_checkpoint_resume_equals_uninterrupted(teacher, digits, tmp_path):
    images = digits[0][:32]
    initial = make_student().get_weights()

    def new_distiller():
        student = make_student(seed=1)
        student.set_weights(initial)
        distiller = APMDistiller(student, teacher)
        distiller.compile(optimizer=keras.optimizers.Adam(3e-3))
        return distiller

    directory = str(tmp_path / "checkpoints")
    first = new_distiller()
    checkpoint = DistillCheckpoint(directory)
    assert checkpoint.restore(first) == 0  # nothing saved yet
    first.fit(dataset(images), epochs=2, verbose=0, callbacks=[checkpoint])
    assert sorted(os.listdir(directory)) == ["epoch_00002", "latest.json"]
    # A staging directory left by a crash mid-save is never read.
    os.makedirs(os.path.join(directory, ".tmp-epoch_00003-x", "student"))
    # The uninterrupted run: the same distiller goes on to epoch 3.
    first.fit(dataset(images), epochs=3, initial_epoch=2, verbose=0)

    # The interrupted run: a new process would build a fresh distiller.
    resumed = new_distiller()
    checkpoint = DistillCheckpoint(directory)
    initial_epoch = checkpoint.restore(resumed)
    assert initial_epoch == 2
    history = resumed.fit(
        dataset(images),
        epochs=3,
        initial_epoch=initial_epoch,
        verbose=0,
        callbacks=[checkpoint],
    ).history
    assert len(history["loss"]) == 1
    for got, want in zip(
        resumed.student.get_weights(), first.student.get_weights()
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # The checkpoint's student is a preset, with its image converter.
    with open(os.path.join(directory, "latest.json")) as f:
        assert json.load(f)["epoch"] == 3
    preset = os.path.join(directory, "epoch_00003", "student")
    loaded = keras_apm.APM.from_preset(preset)
    converter = keras_apm.APMImageConverter.from_preset(preset)
    assert converter.scaling == "minmax"
    for got, want in zip(loaded.get_weights(), resumed.student.get_weights()):
        np.testing.assert_array_equal(got, want)

    # save_student writes the same kind of preset, replacing an old one.
    out = str(tmp_path / "student")
    resumed.save_student(out)
    resumed.save_student(out)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    np.testing.assert_array_equal(
        keras_apm.APM.from_preset(out).get_weights()[0],
        resumed.student.get_weights()[0],
    )

    # A checkpoint of another student or optimizer is refused.
    other = APMDistiller(make_student(trunk_widths=(32,)), teacher)
    other.compile(optimizer="adam")
    with pytest.raises(ValueError, match="same APM config"):
        checkpoint.restore(other)
    sgd = new_distiller()
    sgd.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="optimizer of that run"):
        checkpoint.restore(sgd)
    with pytest.raises(ValueError, match="Compile the distiller"):
        checkpoint.restore(APMDistiller(make_student(), teacher))


# ----------------------------------------------------------------------------
# Bad input.


def test_bad_teacher_or_student(teacher):
    with pytest.raises(ValueError, match="resize_to_grid=\\(8, 8\\)"):
        APMDistiller(make_student(patch_size=4), teacher)
    with pytest.raises(ValueError, match="feature_dim=16"):
        APMDistiller(make_student(feature_dim=32), teacher)
    with pytest.raises(ValueError, match="2 GLOM levels"):
        APMDistiller(make_student(num_levels=2), teacher)
    with pytest.raises(ValueError, match="2 GLOM levels"):
        APMDistiller(
            make_student(num_levels=2), type(teacher)(teacher.model, layers=[0])
        )
    with pytest.raises(ValueError, match="keras_apm.APM"):
        APMDistiller(teacher, teacher)
    with pytest.raises(ValueError, match="Teacher"):
        APMDistiller(make_student(), object())
    with pytest.raises(ValueError, match="no rgb head"):
        APMDistiller(make_student(rgb_head=False), teacher, rgb_weight=1.0)
    with pytest.raises(ValueError, match="one weight per student level"):
        APMDistiller(make_student(), teacher, level_weights=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        APMDistiller(make_student(), teacher, grid_weight=-1.0)
    with pytest.raises(ValueError, match="global_loss"):
        APMDistiller(make_student(), teacher, global_loss="l1")
    with pytest.raises(ValueError, match="rgb_scaling"):
        APMDistiller(make_student(), teacher, rgb_scaling="imagenet")
    # A CLIP teacher's global embedding is its projection (12 values here),
    # narrower than the 16-d grid: only a student trained without its global
    # head's loss fits.
    keras.utils.set_random_seed(3)
    clip = keras_hub.models.CLIPBackbone(
        vision_encoder=keras_hub.models.CLIPVisionEncoder(
            patch_size=8,
            hidden_dim=16,
            num_layers=1,
            num_heads=2,
            intermediate_dim=32,
            image_shape=(32, 32, 3),
        ),
        # Shapes as the vision side's, so JAX reuses its compiled
        # initialisers.
        text_encoder=keras_hub.models.CLIPTextEncoder(
            vocabulary_size=16,
            embedding_dim=16,
            hidden_dim=16,
            num_layers=1,
            num_heads=2,
            intermediate_dim=32,
            max_sequence_length=16,
        ),
        projection_dim=12,
    )
    clip_teacher = keras_apm.teachers.CLIPTeacher(clip)
    with pytest.raises(ValueError, match="global embedding has 12"):
        APMDistiller(make_student(), clip_teacher)
    distiller = APMDistiller(make_student(), clip_teacher, global_weight=0)
    assert [m.name for m in distiller.metrics] == [
        "loss",
        "grid_loss",
        "rgb_loss",
        "grid_cosine",
    ]


def test_bad_batches(teacher, digits):
    images = digits[0][:8]
    out = {k: np_(v) for k, v in teacher(images).items()}
    distiller = APMDistiller(make_student())  # cached targets only
    distiller.compile(optimizer="adam")
    good = {"images": images, "grid": out["grid"], "global": out["global"]}
    logs = distiller.test_on_batch(good, return_dict=True)
    assert np.isfinite(logs["loss"])

    missing = {"images": images, "grid": out["grid"]}
    with pytest.raises(ValueError, match="lacks \\['global'\\]"):
        distiller.test_on_batch(missing)
    wrong = dict(good, grid=out["grid"][:, :2])
    with pytest.raises(ValueError, match="'grid' must have shape"):
        distiller.test_on_batch(wrong)
    with pytest.raises(ValueError, match="no teacher"):
        distiller.test_on_batch(images)
    with pytest.raises(ValueError, match="an 'images' entry"):
        distiller.test_on_batch({"image": images})

    online = APMDistiller(make_student(), teacher)
    online.compile(optimizer="adam")
    with pytest.raises(ValueError, match="student's size"):
        online.test_on_batch(np.zeros((2, 40, 40, 3), "float32"))
    with pytest.raises(ValueError, match="RGB images"):
        online.test_on_batch(np.zeros((2, 32, 32, 1), "float32"))


def test_backend_code_has_one_dispatcher(monkeypatch):
    from keras_apm import backend

    module = backend.backend_module()
    assert module.__name__ == f"keras_apm.backend.{keras.backend.backend()}"
    for name in (
        "compile_step", "compile_function", "fast_optimizer", "replica_mean_loss"
    ):
        assert callable(getattr(module, name))
    # One device here: the loss a replica differentiates is the loss.
    assert float(module.replica_mean_loss(keras.ops.ones(()))) == 1.0
    # The distiller uses Keras' own steps through `compute_loss` (its
    # `train_step`/`test_step` only reshape logs for multi-worker TF).
    import inspect

    assert "compute_loss" in APMDistiller.__dict__
    for step in ("train_step", "test_step"):
        source = inspect.getsource(getattr(APMDistiller, step))
        assert f"super().{step}(" in source
    monkeypatch.setattr(keras.backend, "backend", lambda: "numpy")
    with pytest.raises(ValueError, match="jax, tensorflow, torch.*'numpy'"):
        backend.backend_module()
