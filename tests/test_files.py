"""Atomic writes (`keras_apm.utils.files`): complete or absent, never half."""

import json
import os
import stat

import numpy as np
import pytest

from keras_apm.utils.files import atomic_write
from keras_apm.utils.files import read_json
from keras_apm.utils.files import write_json

# Touches no Keras backend: one job of the three runs it (tests/conftest.py).
pytestmark = pytest.mark.backend_independent


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "a.tflite"
    target.write_bytes(b"old")

    def fail_half_way(staged):
        with open(staged, "wb") as f:
            f.write(b"half")
        raise RuntimeError("converter exploded")

    with pytest.raises(RuntimeError, match="converter exploded"):
        atomic_write(target, fail_half_way)
    assert os.listdir(tmp_path) == ["a.tflite"]
    assert target.read_bytes() == b"old"


def test_a_folder_is_swapped_whole(tmp_path):
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "old.txt").write_text("old")

    def write(staged):
        os.mkdir(staged)
        (tmp_path / staged / "new").write_text("new")

    atomic_write(tmp_path / "sm", write)
    assert os.listdir(tmp_path / "sm") == ["new"]
    assert os.listdir(tmp_path) == ["sm"]


def test_overwrite_false_keeps_what_appeared(tmp_path):
    target = tmp_path / "a.bin"

    def write(staged):
        target.write_bytes(b"theirs")  # someone else, meanwhile
        with open(staged, "wb") as f:
            f.write(b"ours")

    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        atomic_write(target, write, overwrite=False)
    assert target.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_staging_keeps_the_extension_writers_need(tmp_path):
    # np.savez appends ".npz" to a name without it: the staged name must
    # already end in it, or the rename would miss the file.
    path = atomic_write(
        tmp_path / "x.npz", lambda staged: np.savez(staged, x=np.arange(3))
    )
    with np.load(path) as data:
        np.testing.assert_array_equal(data["x"], [0, 1, 2])
    assert os.listdir(tmp_path) == ["x.npz"]


def test_write_json_creates_folders_with_the_usual_mode(tmp_path):
    path = tmp_path / "run" / "metrics.json"
    write_json(path, {"b": 1, "a": [0.5]})
    assert json.loads(path.read_text()) == {"a": [0.5], "b": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="wrote nothing"):
        atomic_write(tmp_path / "a.txt", lambda staged: None)
    assert os.listdir(tmp_path) == []


def test_read_json_names_the_file_or_returns_the_default(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    write_json(good, {"a": 1})
    bad.write_bytes(b"{not json \xff")
    assert read_json(good) == {"a": 1}
    message = r"Label map '.*bad\.json' is not valid JSON \(.*\)\. Fix it\.$"
    with pytest.raises(ValueError, match=message):
        read_json(bad, "Label map", "Fix it.")
    with pytest.raises(ValueError, match="missing.json' cannot be read"):
        read_json(tmp_path / "missing.json")
    assert read_json(bad, default={}) == {}
    assert read_json(tmp_path / "missing.json", default=None) is None
