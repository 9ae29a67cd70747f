"""The teacher-feature cache: shards on disk, resumable, tied to its teacher."""

import errno
import json
import os
import shutil
import subprocess
import sys

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
from keras_apm.utils.files import write_json

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


def shard_bytes(directory):
    """`{file: bytes}` of the shard files, and the manifest's shard list."""
    names = sorted(n for n in os.listdir(directory) if n.startswith("shard_"))
    files = {n: (directory / n).read_bytes() for n in names}
    return files, read_manifest(directory)["shards"]


def assert_same_shards(a, b):
    assert shard_bytes(a) == shard_bytes(b)


def as_arrays(ds):
    out = {}
    for element in ds:
        for key, value in element.items():
            out.setdefault(key, []).append(value.numpy())
    return {k: np.stack(v) for k, v in out.items()}


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
        "shard_00000.bin",
        "shard_00001.bin",
        "shard_00002.bin",
    ]
    assert [e["num_examples"] for e in manifest["shards"]] == [32, 32, 6]
    assert all(len(e["xxh3_128"]) == 32 for e in manifest["shards"])
    for entry in manifest["shards"]:
        assert os.path.getsize(directory / entry["file"]) == entry["bytes"]
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


def test_parallel_reads_and_parts(reference, digits):
    directory, manifest = reference
    labels = digits[1]
    whole = as_arrays(load_feature_cache(directory, num_parallel_reads=1))
    np.testing.assert_array_equal(whole["labels"], labels)
    # Batches of 5 (crossing the 32-example shards) read by 3 threads: the
    # same examples in file order.
    for reads in (1, 3):
        ds = load_feature_cache(directory, batch_size=5, num_parallel_reads=reads)
        assert int(ds.cardinality()) == 14
        got = {k: np.concatenate([b[k].numpy() for b in ds]) for k in whole}
        for key in whole:
            np.testing.assert_array_equal(got[key], whole[key])
    # Per-process parts: 3 disjoint contiguous ranges of 70 // 3 = 23.
    parts = []
    for index in range(3):
        ds = load_feature_cache(
            directory, batch_size=10, num_shards=3, index=index
        )
        assert int(ds.cardinality()) == 3  # 10 + 10 + 3
        parts.append(np.concatenate([b["labels"].numpy() for b in ds]))
    np.testing.assert_array_equal(np.concatenate(parts), labels[:69])
    shuffled = load_feature_cache(
        directory, shuffle=True, seed=0, num_shards=3, index=1
    )
    got = sorted(int(e["labels"]) for e in shuffled)
    assert got == sorted(labels[23:46].tolist())


def test_resume_after_max_shards(teacher, digits, reference, tmp_path):
    directory = tmp_path / "cache"
    manifest = write(teacher, labelled(digits), directory, max_shards=1)
    assert not manifest["complete"]
    assert sorted(os.listdir(directory)) == ["manifest.json", "shard_00000.bin"]
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
    assert sorted(os.listdir(directory)) == ["manifest.json", "shard_00000.bin"]
    # A run killed while writing leaves a temporary file (here: garbage).
    stray = directory / ".tmp-shard_00001.bin-abcd1234.bin"
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
    assert manifest["dtypes"] == {
        "images": "uint8", "grid": "float16", "global": "float16",
        "levels": "float16", "labels": "int64",
    }
    stored = next(iter(load_feature_cache(directory, batch_size=20, dtype=None)))
    assert stored["images"].dtype == tf.uint8
    assert stored["grid"].dtype == tf.float16
    np.testing.assert_array_equal(stored["images"].numpy(), np.round(images))
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
    (foreign / "shard_00000.bin").write_bytes(b"x")
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
    os.remove(small / "shard_00001.bin")
    with pytest.raises(ValueError, match="shard_00001.bin' is missing"):
        load_feature_cache(small)
    with open(small / "manifest.json") as f:
        assert json.load(f)["num_shards"] == 3
    ok = tmp_path / "ok"
    write(teacher, ds.take(5), ok, shard_size=2)
    for kwargs, match in [
        ({"dtype": "float16"}, "dtype"),
        ({"verify": "nothing"}, "verify"),
        ({"num_shards": 2}, "both"),
        ({"num_shards": 2, "index": 2}, "index"),
        ({"num_shards": 0, "index": 0}, "num_shards"),
        ({"num_shards": 99, "index": 0}, "too few"),
        ({"num_parallel_reads": 0}, "num_parallel_reads"),
    ]:
        with pytest.raises(ValueError, match=match):
            load_feature_cache(ok, **kwargs)


def test_resume_after_a_kill_at_each_step(teacher, digits, reference, tmp_path):
    """A killed writer leaves one of three states; each resumes exactly."""
    directory = tmp_path / "cache"
    write(teacher, labelled(digits), directory, max_shards=2)
    manifest = read_manifest(directory)
    # Killed while writing shard 2: only a staged file exists.
    (directory / ".tmp-shard_00002.bin-0badc0de.bin").write_bytes(b"half")
    # Killed after renaming shard 1 but before listing it in the manifest:
    # its checksum is not on record, so it is rewritten, not trusted.
    (directory / "shard_00001.bin").write_bytes(b"unlisted")
    write_json(
        directory / "manifest.json", dict(manifest, shards=manifest["shards"][:1])
    )
    manifest = write(teacher, labelled(digits), directory)
    assert manifest["complete"]
    assert_same_shards(directory, reference[0])
    assert manifest["shards"] == reference[1]["shards"]


def test_corrupt_shards_are_named(teacher, digits, reference, tmp_path):
    directory = tmp_path / "cache"
    shutil.copytree(reference[0], directory)
    path = directory / "shard_00001.bin"
    # Missing: named at load time, before any batch.
    os.remove(path)
    with pytest.raises(ValueError, match="shard_00001.bin' is missing.*again"):
        load_feature_cache(directory)
    with pytest.warns(UserWarning, match="shard_00001.bin' is missing: rewrit"):
        assert write(teacher, labelled(digits), directory)["complete"]
    assert_same_shards(directory, reference[0])
    # Truncated: named at load time by its size.
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match="shard_00001.bin' has 1000 bytes"):
        load_feature_cache(directory, batch_size=8)
    # Truncated after the checks, mid-epoch: the error names the shard,
    # whether the first-use check (default) or the read itself finds it.
    for verify, match in [
        ("checksum", "shard_00001.bin' has 1000 bytes"),
        ("size", "shard_00001.bin' ended at byte"),
    ]:
        shutil.copy(reference[0] / "shard_00001.bin", path)
        ds = load_feature_cache(directory, batch_size=8, verify=verify)
        with open(path, "r+b") as f:
            f.truncate(1000)
        with pytest.raises(Exception, match=match):
            for _ in ds:
                pass
    # While a cache is being continued every written shard is re-hashed; a
    # corrupt one is rewritten with a warning naming it.
    partial = tmp_path / "partial"
    write(teacher, labelled(digits), partial, max_shards=1)
    shard = partial / "shard_00000.bin"
    data = bytearray(shard.read_bytes())
    data[7] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="shard_00000.bin' does not match"):
        write(teacher, labelled(digits), partial)
    assert_same_shards(partial, reference[0])


def test_old_layout_is_refused_with_how_to_rebuild(
    teacher, digits, reference, tmp_path
):
    old = tmp_path / "old"
    old.mkdir()
    manifest = dict(read_manifest(reference[0]), format_version=1)
    for key in ("keys", "dtypes", "shards"):
        manifest.pop(key)
    (old / "manifest.json").write_text(json.dumps(manifest))
    with open(old / "shard_00000.npz", "wb") as f:
        np.savez(f, images=np.zeros((2, 32, 32, 3), "float32"))
    for call in (
        lambda: load_feature_cache(old),
        lambda: write(teacher, labelled(digits), old),
    ):
        with pytest.raises(ValueError, match="old layout.*Rebuild it: delete"):
            call()
    # Following the message: a rebuilt cache reads back the teacher's
    # features.
    shutil.rmtree(old)
    write(teacher, labelled(digits), old)
    batch = next(iter(load_feature_cache(old, batch_size=NUM_IMAGES)))
    np.testing.assert_allclose(
        batch["grid"].numpy(), np_(teacher(digits[0])["grid"]), atol=1e-4
    )


def test_teacher_sees_the_original_at_its_own_size(teacher, digits, tmp_path):
    """A student smaller than the teacher: `model_inputs` dicts go in, the
    teacher's targets come from the original resized to 32x32, and the
    cache stores the 16x16 student images."""
    from keras_apm.data import model_inputs

    images, labels = digits
    raw = tf.data.Dataset.from_tensor_slices((images.astype("uint8"), labels))
    inputs = model_inputs(
        raw, (16, 16), batch_size=16, teacher_image_size=(32, 32),
        with_labels=True,
    )
    manifest = write(teacher, inputs, tmp_path / "cache")
    assert manifest["image_shape"] == [16, 16, 3]
    assert manifest["teacher_image_shape"] == [32, 32, 3]
    batch = next(iter(load_feature_cache(tmp_path / "cache", batch_size=NUM_IMAGES)))
    assert batch["images"].shape == (NUM_IMAGES, 16, 16, 3)
    np.testing.assert_array_equal(batch["labels"].numpy(), labels)
    # 32x32 originals resized to 32x32 are the originals themselves.
    expected = np_(teacher(images.astype("uint8").astype("float32"))["grid"])
    np.testing.assert_allclose(batch["grid"].numpy(), expected, atol=1e-4)
    upscaled = np_(teacher(tf.image.resize(batch["images"], (32, 32)))["grid"])
    assert np.abs(upscaled - expected).max() > 1e-2
    # The same student images with the teacher's input left out are
    # another cache's settings: refused, not mixed.
    student_only = inputs.map(lambda x, y: ({"images": x["images"]}, y))
    with pytest.raises(ValueError, match="teacher_image_shape"):
        write(teacher, student_only, tmp_path / "cache")


# --- trust: nothing outside the cache, nothing damaged used ------------------


def _victims(tmp_path):
    """A folder and a file outside the cache that must survive."""
    outside = tmp_path / "outside"
    (outside / "victim_dir").mkdir(parents=True)
    (outside / "victim_dir" / "keep.txt").write_text("precious")
    (outside / "victim.bin").write_bytes(b"precious")
    return outside


def _crafted(reference, tmp_path, name, file):
    """A copy of the reference cache whose manifest lists `file` as shard 1."""
    directory = tmp_path / name
    shutil.copytree(reference[0], directory)
    manifest = read_manifest(directory)
    manifest["shards"][1]["file"] = file
    write_json(directory / "manifest.json", manifest)
    return directory


def test_crafted_manifest_cannot_touch_or_read_outside(
    teacher, digits, reference, tmp_path
):
    outside = _victims(tmp_path)
    crafted = {
        "dotdot_dir": "../outside/victim_dir",
        "dotdot_file": "../outside/victim.bin",
        "absolute": str(outside / "victim.bin"),
        "deep": "../../../../../../" + str(outside / "victim_dir"),
    }
    for name, file in crafted.items():
        directory = _crafted(reference, tmp_path, name, file)
        for call in (
            lambda: write(teacher, labelled(digits), directory),
            lambda: load_feature_cache(directory),
        ):
            with pytest.raises(ValueError) as info:
                call()
            message = str(info.value)
            assert str(directory / "manifest.json") in message, message
            assert "shards[1].file" in message and repr(file) in message
        assert (outside / "victim_dir" / "keep.txt").read_text() == "precious"
        assert (outside / "victim.bin").read_bytes() == b"precious"
    # A shard replaced by a symbolic link leading out, to a file with the
    # very bytes the manifest expects: refused all the same.
    directory = tmp_path / "link"
    shutil.copytree(reference[0], directory)
    stolen = outside / "shard_copy.bin"
    shutil.move(directory / "shard_00001.bin", stolen)
    os.symlink(stolen, directory / "shard_00001.bin")
    for call in (
        lambda: write(teacher, labelled(digits), directory),
        lambda: load_feature_cache(directory),
    ):
        with pytest.raises(ValueError, match="through a symbolic link"):
            call()
    assert stolen.read_bytes() == (reference[0] / "shard_00001.bin").read_bytes()


def test_resolve_inside(tmp_path):
    from keras_apm.utils.files import resolve_inside

    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    os.symlink(tmp_path, root / "out")
    os.symlink(root / "sub", root / "in")
    inside = resolve_inside(root, "sub/a.bin", source="'m.json'")
    assert inside == root.resolve() / "sub" / "a.bin"
    assert resolve_inside(root, "in/a", source="x") == root.resolve() / "sub" / "a"
    for entry, why in [
        ("../a", "through '..'"),
        ("sub/../../a", "through '..'"),
        ("/etc/passwd", "absolute path"),
        ("out/a", "through a symbolic link"),
        ("sub/..", "directory itself"),
        ("", "empty"),
        (None, "not a path"),
        (["a"], "not a path"),
    ]:
        with pytest.raises(ValueError, match=f"^'m.json' names .*{why}"):
            resolve_inside(root, entry, source="'m.json'")


def test_damaged_shards_are_caught_before_first_use_and_repaired(
    teacher, digits, reference, tmp_path
):
    directory = tmp_path / "cache"
    shutil.copytree(reference[0], directory)
    flipped = directory / "shard_00001.bin"
    data = bytearray(flipped.read_bytes())
    for position in (100, len(data) // 2, len(data) - 5000):  # same size
        data[position] ^= 0x10
    flipped.write_bytes(bytes(data))
    zeros = directory / "shard_00002.bin"
    zeros.write_bytes(bytes(zeros.stat().st_size))
    # By default: the batches of the sound shard 0 come, then the first one
    # that needs shard 1 fails naming it, before any of its bytes are used.
    labels = []
    with pytest.raises(Exception, match="shard_00001.bin' does not match its xxh3"):
        for batch in load_feature_cache(directory, batch_size=8):
            labels.extend(batch["labels"].numpy().tolist())
    assert labels == digits[1][:SHARD].tolist()
    ds = load_feature_cache(directory, batch_size=8, shuffle=True, seed=0)
    with pytest.raises(Exception, match="shard_0000[12].bin' does not match"):
        next(iter(ds))
    # Writing again finds both, rewrites them and completes the cache.
    with pytest.warns(UserWarning) as caught:
        manifest = write(teacher, labelled(digits), directory)
    named = sorted(
        os.path.basename(str(w.message).split("'")[1])
        for w in caught
        if str(w.message).startswith("Shard '")
    )
    assert named == ["shard_00001.bin", "shard_00002.bin"]
    assert manifest["complete"]
    assert_same_shards(directory, reference[0])
    whole = as_arrays(load_feature_cache(directory))
    np.testing.assert_array_equal(whole["labels"], digits[1])


def _fill_disk_on_second_shard(monkeypatch):
    from keras_apm.data.feature_cache import writer

    original = writer.write_columns

    def write_columns(path, columns, hasher):
        if os.path.basename(path).startswith(".tmp-shard_00001"):
            with open(path, "wb") as f:
                f.write(b"half a shard")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, columns, hasher)

    monkeypatch.setattr(writer, "write_columns", write_columns)


def _check_full_disk_error(info, directory):
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert f"Out of disk space writing the feature cache {str(directory)!r}" in message
    assert "shard_00001.bin" in message and "run `cache_teacher_features`" in message
    # Nothing half-written is left; the manifest lists the finished shard.
    assert sorted(os.listdir(directory)) == ["manifest.json", "shard_00000.bin"]
    assert [e["file"] for e in read_manifest(directory)["shards"]] == [
        "shard_00000.bin"
    ]


# The writer's staging is backend-independent: the full-disk tests run once.
one_backend = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="the cache writer's staging is backend-independent: run it once",
)


@one_backend
def test_full_disk_is_named(teacher, digits, reference, tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    with monkeypatch.context() as patch:
        _fill_disk_on_second_shard(patch)
        with pytest.raises(OSError) as info:
            write(teacher, labelled(digits), directory)
    _check_full_disk_error(info, directory)
    # With space again, the same call finishes the cache.
    assert write(teacher, labelled(digits), directory)["complete"]
    assert_same_shards(directory, reference[0])


@one_backend
def test_full_tmpfs_is_named(teacher, digits, reference, tmp_path):
    """A real full disk: a tmpfs with room for one shard (needs root)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    mount = tmp_path / "small"
    mount.mkdir()
    size = (reference[0] / "shard_00000.bin").stat().st_size
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size + 64 * 1024}", "tmpfs",
         str(mount)],
        capture_output=True,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr[-200:]!r}")
    try:
        directory = mount / "cache"
        with pytest.raises(OSError) as info:
            write(teacher, labelled(digits), directory)
        _check_full_disk_error(info, directory)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_missing_xxhash_names_the_data_extra(monkeypatch):
    import importlib
    import importlib.abc

    from keras_apm.utils.optional import MissingDependencyError

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "xxhash":
                raise ModuleNotFoundError(name, name=name)

    for name in list(sys.modules):
        if name.split(".")[0] == "xxhash" or name.startswith(
            "keras_apm.data.feature_cache"
        ):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Refuse()] + sys.meta_path)
    with pytest.raises(MissingDependencyError) as info:
        importlib.import_module("keras_apm.data.feature_cache")
    assert "keras-apm[data]" in str(info.value) and "xxhash" in str(info.value)
