"""The teacher-feature cache: shards on disk, resumable, tied to its teacher."""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from keras_apm.data import cache_teacher_features
from keras_apm.data import load_feature_cache
from keras_apm.data.feature_cache import read_manifest
from keras_apm.teachers import Teacher

NUM_IMAGES = 70  # 3 shards of 32: the last one is short.
SHARD = 32


def np_(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def digits():
    """Real sklearn digits as 32x32 RGB in [0, 255], with labels."""
    data = load_digits()
    images = np.kron(data.images[:NUM_IMAGES], np.ones((4, 4)))
    images = np.repeat(images[..., None], 3, axis=-1) * (255.0 / 16.0)
    return images.astype("float32"), data.target[:NUM_IMAGES].astype("int32")


def _vit(seed):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        dtype="float32",
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("vit_teacher"))
    _vit(11).save_to_preset(path)
    return Teacher.from_preset(path, layers=[0, -1])


def labelled(digits, batch_size=None):
    ds = tf.data.Dataset.from_tensor_slices(digits)
    return ds if batch_size is None else ds.batch(batch_size)


def write(teacher, ds, directory, **kwargs):
    kwargs.setdefault("shard_size", SHARD)
    kwargs.setdefault("batch_size", 16)
    kwargs.setdefault("image_dtype", "float32")
    kwargs.setdefault("verbose", 0)
    return cache_teacher_features(teacher, ds, str(directory), **kwargs)


def shard_arrays(directory):
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".npz"):
            with np.load(os.path.join(directory, name)) as f:
                out[name] = {k: f[k] for k in f.files}
    return out


def assert_same_shards(a, b):
    a, b = shard_arrays(a), shard_arrays(b)
    assert sorted(a) == sorted(b)
    for name in a:
        assert sorted(a[name]) == sorted(b[name])
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key])


@pytest.fixture(scope="module")
def reference(teacher, digits, tmp_path_factory):
    """An uninterrupted cache of the digits (batched input, with labels)."""
    directory = tmp_path_factory.mktemp("reference")
    manifest = write(teacher, labelled(digits, batch_size=10), directory)
    return directory, manifest


def test_round_trip(teacher, digits, reference):
    directory, manifest = reference
    images, labels = digits
    assert manifest["complete"]
    assert manifest["num_examples"] == NUM_IMAGES
    assert manifest["num_shards"] == 3
    assert manifest["teacher"]["grid_shape"] == [4, 4]
    assert manifest["teacher"]["layers"] == [0, 1]
    assert manifest["shapes"]["levels"] == [2, 4, 4, 16]
    assert sorted(os.listdir(directory)) == [
        "manifest.json",
        "shard_00000.npz",
        "shard_00001.npz",
        "shard_00002.npz",
    ]
    # A finished cache is left alone: a second call writes nothing.
    assert write(teacher, labelled(digits), directory) == manifest

    ds = load_feature_cache(directory, batch_size=NUM_IMAGES, teacher=teacher)
    batch = next(iter(ds))
    assert sorted(batch) == ["global", "grid", "images", "labels", "levels"]
    np.testing.assert_array_equal(batch["images"].numpy(), images)
    np.testing.assert_array_equal(batch["labels"].numpy(), labels)
    expected = teacher(images)
    for key in ("grid", "global", "levels"):
        assert batch[key].dtype == tf.float32
        np.testing.assert_allclose(
            batch[key].numpy(), np_(expected[key]), atol=1e-4
        )

    # Shuffled reading gives the same examples in another order.
    shuffled = load_feature_cache(directory, shuffle=True, seed=1)
    order = np.array([int(e["labels"]) for e in shuffled])
    assert sorted(order.tolist()) == sorted(labels.tolist())
    assert not np.array_equal(order, labels)


def test_resume_after_max_shards(teacher, digits, reference, tmp_path):
    directory = tmp_path / "cache"
    manifest = write(teacher, labelled(digits), directory, max_shards=1)
    assert not manifest["complete"]
    assert sorted(os.listdir(directory)) == ["manifest.json", "shard_00000.npz"]
    with pytest.raises(ValueError, match="incomplete \\(1 shards"):
        load_feature_cache(directory)
    manifest = write(teacher, labelled(digits), directory, max_shards=1)
    assert not manifest["complete"]
    manifest = write(teacher, labelled(digits), directory)
    assert manifest["complete"] and manifest["num_examples"] == NUM_IMAGES
    assert_same_shards(directory, reference[0])


class Interrupted(Exception):
    pass


def _crashing(digits, after):
    """A dataset that raises after `after` examples, as a killed run."""
    images, labels = digits

    def generate():
        for i in range(len(images)):
            if i == after:
                raise Interrupted("interrupted")
            yield images[i], labels[i]

    return tf.data.Dataset.from_generator(
        generate,
        output_signature=(
            tf.TensorSpec((32, 32, 3), tf.float32),
            tf.TensorSpec((), tf.int32),
        ),
    )


def test_resume_after_crash(teacher, digits, reference, tmp_path):
    directory = tmp_path / "cache"
    # Dies while reading the second shard's examples.
    with pytest.raises(Exception, match="interrupted"):
        write(teacher, _crashing(digits, after=SHARD + 5), directory)
    assert sorted(os.listdir(directory)) == ["manifest.json", "shard_00000.npz"]
    # A run killed while writing leaves a temporary file (here: garbage).
    stray = directory / ".tmp-abc.npz"
    stray.write_bytes(b"half a shard")
    assert not read_manifest(directory)["complete"]
    manifest = write(teacher, labelled(digits), directory)
    assert manifest["complete"]
    assert not stray.exists()
    assert_same_shards(directory, reference[0])


def test_other_teacher_or_dataset_refused(teacher, digits, reference, tmp_path):
    directory = reference[0]
    other = type(teacher)(_vit(12), layers=[0, -1])
    with pytest.raises(ValueError, match="another teacher.*different weights"):
        write(other, labelled(digits), directory)
    with pytest.raises(ValueError, match="another teacher.*different weights"):
        load_feature_cache(directory, teacher=other)
    fewer_levels = type(teacher)(teacher.model, layers=[-1])
    with pytest.raises(ValueError, match="layers: cache \\[0, 1\\]"):
        write(fewer_levels, labelled(digits), directory)
    # Another dataset (its first image differs), or another shard size.
    images, labels = digits
    flipped = (images[::-1].copy(), labels[::-1].copy())
    with pytest.raises(ValueError, match="dataset_first_image_sha256"):
        write(teacher, labelled(flipped), directory)
    with pytest.raises(ValueError, match="shard_size"):
        write(teacher, labelled(digits), directory, shard_size=16)


def test_uint8_images_float16_targets_no_labels(teacher, digits, tmp_path):
    images = digits[0][:20]
    directory = tmp_path / "cache"
    manifest = write(
        teacher,
        tf.data.Dataset.from_tensor_slices(images).batch(7),
        directory,
        image_dtype="uint8",
        target_dtype="float16",
        shard_size=8,
    )
    assert manifest["num_shards"] == 3 and not manifest["has_labels"]
    with np.load(directory / "shard_00000.npz") as shard:
        assert shard["images"].dtype == np.uint8
        assert shard["grid"].dtype == np.float16
    batch = next(iter(load_feature_cache(directory, batch_size=20)))
    assert batch["images"].dtype == tf.float32
    np.testing.assert_array_equal(batch["images"].numpy(), np.round(images))
    np.testing.assert_array_equal(batch["labels"].numpy(), -np.ones(20))
    np.testing.assert_allclose(
        batch["grid"].numpy(), np_(teacher(images)["grid"]), atol=5e-3
    )


def test_bad_arguments(teacher, digits, tmp_path):
    ds = labelled(digits)
    with pytest.raises(ValueError, match="tf.data.Dataset"):
        write(teacher, digits[0], tmp_path / "a")
    with pytest.raises(ValueError, match="Teacher"):
        write(object(), ds, tmp_path / "a")
    with pytest.raises(ValueError, match="shard_size"):
        write(teacher, ds, tmp_path / "a", shard_size=0)
    with pytest.raises(ValueError, match="image_dtype"):
        write(teacher, ds, tmp_path / "a", image_dtype="float16")
    with pytest.raises(ValueError, match="element_spec"):
        write(teacher, ds.map(lambda x, y: {"image": x}), tmp_path / "a")
    with pytest.raises(ValueError, match="empty"):
        write(teacher, ds.take(0), tmp_path / "a")
    with pytest.raises(ValueError, match="not a teacher-feature cache"):
        load_feature_cache(tmp_path / "missing")
    # Shards without a manifest: not ours, not overwritten.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "shard_00000.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="no manifest.json"):
        write(teacher, ds, foreign)
    # A corrupt manifest and a missing shard are named.
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_feature_cache(corrupt)
    small = tmp_path / "small"
    write(teacher, ds.take(5), small, shard_size=2)
    os.remove(small / "shard_00001.npz")
    with pytest.raises(ValueError, match="lacks \\['shard_00001.npz'\\]"):
        load_feature_cache(small)
    with open(small / "manifest.json") as f:
        assert json.load(f)["num_shards"] == 3
