"""Adding an output head the way CONTRIBUTING.md says: a layer and one row.

`MeanHead` (defined here) and its row in the head table
(`keras_apm.models.apm.apm_outputs`, registered for these tests only) are
all the new head is; the backbone builds it, the distiller trains it (online
and from a feature cache), test-time training adapts a student that has it,
and the export carries it. Real digits, a tiny random ViT teacher, under
whatever KERAS_BACKEND is set.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from sklearn.datasets import load_digits

import keras_apm
from keras_apm.data import cache_teacher_features
from keras_apm.data import load_feature_cache
from keras_apm.data.feature_cache import read_manifest
from keras_apm.distill import APMDistiller
from keras_apm.models.apm import apm_outputs
from keras_apm.teachers import Teacher
from keras_apm.ttt import TestTimeTrainer

MEAN = "mean"
# Small tests build their steps the quickest way: TensorFlow graphs without
# XLA; on JAX, jit (eager JAX compiles every op on first use).
FAST = {"jit_compile": keras.backend.backend() == "jax"}


@keras.saving.register_keras_serializable(package="test_heads")
class MeanHead(keras.layers.Layer):
    """A toy head: the grid's mean vector through one linear layer.

    Computes from explicit weights, with an optional leading per-image axis
    on them (batched test-time training stacks one set per image).
    """

    def build(self, grid_shape):
        dim = grid_shape[-1]
        self.kernel = self.add_weight(shape=(dim, dim), name="kernel")
        self.bias = self.add_weight(shape=(dim,), initializer="zeros", name="bias")

    def explicit_weights(self):
        return {"kernel": self.kernel, "bias": self.bias}

    def call_with_weights(self, weights, grid):
        kernel = ops.cast(weights["kernel"], grid.dtype)
        bias = ops.cast(weights["bias"], grid.dtype)
        mean = ops.mean(grid, axis=(1, 2))
        return ops.einsum("...d,...de->...e", mean, kernel) + bias

    def call(self, grid):
        return self.call_with_weights(self.explicit_weights(), grid)

    def compute_output_spec(self, grid):
        return keras.KerasTensor(
            (grid.shape[0], grid.shape[-1]), dtype=self.compute_dtype
        )


ROW = apm_outputs.Head(
    name=MEAN,
    target=apm_outputs.TEACHER_GLOBAL,  # the teacher's global embedding
    weight=0.5,
    layer=lambda config: MeanHead(dtype=config["dtype"], name="mean_head"),
)


@pytest.fixture
def mean_head():
    # Registered for these tests only.
    apm_outputs.register_head(ROW)
    yield ROW
    apm_outputs.unregister_head(MEAN)


@pytest.fixture(scope="module")
def images():
    """32 sklearn digits as 32x32 RGB in [0, 255]."""
    data = load_digits()
    x = np.kron(data.images[:32], np.ones((4, 4)))[..., None]
    return (np.repeat(x, 3, axis=-1) * (255.0 / 16.0)).astype("float32")


@pytest.fixture(scope="module")
def teacher(vit_teacher_preset):
    return Teacher.from_preset(vit_teacher_preset)


def make_student(**kwargs):
    keras.utils.set_random_seed(0)
    config = dict(
        image_shape=(32, 32, 3), patch_size=8, trunk_widths=(32, 16),
        feature_dim=16, rgb_widths=(8,), global_head=True, global_num_heads=2,
        extra_heads=(MEAN,),
    )  # fmt: skip
    config.update(kwargs)
    return keras_apm.APM(**config)


def np_(x):
    return keras.ops.convert_to_numpy(x)


def test_added_head_is_built_and_distilled(mean_head, teacher, images, tmp_path):
    student = make_student()
    out = student(images[:2])
    assert out[MEAN].shape == (2, 16)
    features = np_(out["features"]).mean(axis=(1, 2))
    layer = student.get_layer("mean_head")
    want = features @ np_(layer.kernel) + np_(layer.bias)
    np.testing.assert_allclose(np_(out[MEAN]), want, rtol=1e-5, atol=1e-5)
    # Saved and reloaded without the row: the layer is in the config.
    clone = keras_apm.APM.from_config(student.get_config())
    assert clone.extra_heads == (MEAN,)

    # The distiller trains it by default, at the row's weight.
    distiller = APMDistiller(student, teacher)
    assert distiller.loss_weights[MEAN] == 0.5
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), **FAST)
    before = np_(layer.kernel).copy()
    history = distiller.fit(images[:16], batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["mean_loss"]).all()
    assert not np.allclose(np_(layer.kernel), before)
    # Its target, the teacher's global embedding, is one the cache keeps.
    assert apm_outputs.TEACHER_GLOBAL in apm_outputs.cached_target_keys()
    # The cache stores the table's cached targets (read at use time), so
    # the row is all it takes for this head's target to be cached.
    cache_dir = str(tmp_path / "cache")
    cache_teacher_features(
        teacher, tf.data.Dataset.from_tensor_slices(images), cache_dir,
        shard_size=16, batch_size=16, verbose=0,
    )  # fmt: skip
    keys = read_manifest(cache_dir)["keys"]
    assert apm_outputs.TEACHER_GLOBAL in keys
    assert set(keys) <= {"images", "labels", *apm_outputs.cached_target_keys()}
    cached = APMDistiller(student)  # no teacher: targets from the cache
    cached.compile(optimizer=keras.optimizers.Adam(1e-2), **FAST)
    history = cached.fit(
        load_feature_cache(cache_dir, batch_size=16), epochs=1, verbose=0
    )
    assert np.isfinite(history.history["mean_loss"]).all()
    # A recipe's weights, or explicit terms, switch it off.
    off = APMDistiller(student, distillation_loss_weights={MEAN: 0})
    assert MEAN not in off.loss_weights


def test_added_head_adapts_and_exports(mean_head, images, tmp_path):
    from keras_apm.export import export
    from keras_apm.export import load
    from keras_apm.ttt.batched import BatchedTTT

    student = make_student()
    inputs = images[:2] / 255.0
    # Batched test-time training: B students in one step, each equal to
    # adapting its image alone. The table leaves the added head out of TTT
    # (`ttt=False`): it is neither stacked nor computed.
    engine = BatchedTTT(
        student, steps=2, optimizer=keras.optimizers.Adam(1e-2),
        grid_weight=0.5, **FAST,
    )  # fmt: skip
    assert not any("mean_head" in path for path in engine.initial_weights)
    targets = np.random.default_rng(0).normal(size=(2, 16)).astype("float32")
    grid = np.random.default_rng(1).normal(size=(2, 4, 4, 16)).astype("float32")
    both = engine.adapt(inputs, targets, grid=grid)
    for i in range(2):
        alone = engine.adapt(inputs[i : i + 1], targets[i : i + 1], grid=grid[i : i + 1])
        np.testing.assert_allclose(
            np_(alone["global"])[0], np_(both["global"])[i], rtol=1e-4, atol=1e-5
        )
    assert np.all(np_(both["loss"])[:, -1] < np_(both["loss"])[:, 0])

    # The export carries the head (under JAX and PyTorch the TensorFlow
    # subprocess imports this module to rebuild the layer).
    path = export(student, str(tmp_path / "apm_saved_model"))
    got = load(path).predict(inputs)
    np.testing.assert_allclose(
        got[MEAN], np_(student(inputs)[MEAN]), rtol=1e-4, atol=1e-5
    )


def test_explicit_terms_as_in_keras_distillation(mean_head):
    from keras_apm.distill import losses

    student = make_student()
    terms = [
        losses.GridDistillation(),
        losses.GlobalDistillation("mse"),
        losses.HeadDistillation(MEAN),
    ]
    assert all(isinstance(t, keras.distillation.DistillationLoss) for t in terms)
    distiller = APMDistiller(
        student, distillation_losses=terms, distillation_loss_weights=[1, 0.25, 2]
    )
    assert distiller.loss_weights == {"grid": 1.0, "global": 0.25, MEAN: 2.0}
    assert [m.name for m in distiller.metrics] == [
        "loss", "grid_loss", "global_loss", "mean_loss", "grid_cosine",
        "global_cosine",
    ]  # fmt: skip
    # Saveable: the terms are Keras objects in the config.
    config = distiller.get_config()
    clone = APMDistiller.from_config(config)
    assert clone.get_config() == config
    assert clone.distillation_losses == terms
    with pytest.raises(ValueError, match="either `distillation_losses`"):
        APMDistiller(student, distillation_losses=terms, grid_weight=1.0)
    with pytest.raises(ValueError, match="must match number"):
        APMDistiller(student, distillation_losses=terms, distillation_loss_weights=[1])
    with pytest.raises(ValueError, match="which the student lacks"):
        APMDistiller(
            make_student(rgb_head=False), distillation_losses=[losses.RGBDistillation()]
        )
    with pytest.raises(ValueError, match="does not have"):
        APMDistiller(student, distillation_loss_weights={"nope": 1.0})


def test_recipe_states_loss_weights(tmp_path):
    from keras_apm.distill import distill
    from keras_apm.distill import get_recipe

    recipe = get_recipe("digits", loss_weights={"rgb": 0.5})
    assert recipe.loss_weights == {"rgb": 0.5}
    # Checked with the other settings, before any work.
    with pytest.raises(ValueError, match="names the term 'colour'"):
        distill(
            output=str(tmp_path / "run"), recipe="digits",
            loss_weights={"colour": 1.0},
        )  # fmt: skip
    assert not (tmp_path / "run").exists()
