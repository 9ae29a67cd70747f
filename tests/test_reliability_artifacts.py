"""Issue 15: nothing lost, nothing left behind, nothing silently wrong.

Real processes are killed (SIGKILL, SIGTERM) in the middle of writes and
exports; presets are saved onto a full disk and by two processes at once;
broken presets must fail naming the file.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import keras
import numpy as np
import pytest

import keras_apm
from keras_apm.utils import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, **extra)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # zombies are dead.
    except OSError:
        return False


def _processes_with(text):
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry))
    return pids


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


# --- killed writers leave nothing that lasts ---------------------------------


def test_a_killed_writers_stage_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "apm.tflite"
    writer = textwrap.dedent(
        f"""
        import time
        from keras_apm.utils.files import atomic_write
        def write(staged):
            with open(staged, "wb") as f:
                f.write(b"half")
            print("writing", flush=True)
            time.sleep(60)
        atomic_write({str(target)!r}, write)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", writer], env=_env(), stdout=subprocess.PIPE
    )
    assert process.stdout.readline().strip() == b"writing"
    process.kill()
    process.wait()
    stale = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert len(stale) == 1 and str(process.pid) in stale[0]
    # A live writer's stage (this process's) must survive the cleanup.
    live = files.staging_path(target)
    open(live, "wb").close()
    files.write_json(tmp_path / "other.json", {})  # another target: untouched
    assert len(os.listdir(tmp_path)) == 3
    files.atomic_write(target, lambda staged: open(staged, "wb").close())
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["apm.tflite", "other.json", os.path.basename(live)]
    )


@pytest.mark.skipif(
    keras.backend.backend() != "jax" or not sys.platform.startswith("linux"),
    reason="the export subprocess runs under JAX and torch (same code); "
    "one backend is enough; reads /proc",
)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_export_stops_its_subprocess_and_cleans_up(tmp_path, sig):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    script = textwrap.dedent(
        f"""
        import numpy as np, keras_apm
        model = keras_apm.APM(image_shape=(16, 16, 3), patch_size=4,
                              trunk_widths=(16,), feature_dim=8)
        keras_apm.export(model, {str(out / "apm.tflite")!r}, format="tflite")
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        env=_env(TMPDIR=str(tmp), KERAS_BACKEND="jax"),
        stderr=subprocess.DEVNULL,
    )
    try:
        children = []
        assert _wait(
            lambda: children.extend(
                _processes_with(f"--jobs {tmp}")
            ) or children,
            120,
        ), "the TensorFlow subprocess never started"
        os.kill(parent.pid, sig)
        parent.wait(timeout=60)
        # The child goes with its parent, before it can write the export.
        assert _wait(lambda: not any(map(_alive, children)), 60)
        assert not (out / "apm.tflite").exists()
        if sig == signal.SIGTERM:
            # A terminated parent unwinds: its temporary folder is gone.
            assert os.listdir(tmp) == []
        # Whatever a SIGKILLed parent left is removed by the next export.
        old, tempfile.tempdir = tempfile.tempdir, str(tmp)
        try:
            with files.temporary_directory("keras_apm_export_") as fresh:
                assert os.listdir(tmp) == [os.path.basename(fresh)]
        finally:
            tempfile.tempdir = old
        assert os.listdir(tmp) == []
        assert os.listdir(out) == []
    finally:
        if parent.poll() is None:
            parent.kill()


# --- presets: staged saves, full disks, concurrent saves ---------------------


def small_apm(trunk_widths=(16,), **kwargs):
    return keras_apm.APM(
        image_shape=(16, 16, 3), patch_size=4, trunk_widths=trunk_widths,
        feature_dim=8, **kwargs,
    )  # fmt: skip


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def _same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(b)))


def test_a_failed_preset_save_keeps_the_old_preset(tmp_path):
    preset = tmp_path / "preset"
    old = small_apm()
    old.save_to_preset(preset)
    keras_apm.APMImageConverter((16, 16)).save_to_preset(preset)
    before = sorted(os.listdir(preset))
    new = small_apm()

    def disk_full(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)  # a partial file, then the disk is full
        raise OSError(28, "No space left on device")

    new.save_weights = disk_full
    with pytest.raises(OSError, match=r"preset.*No space left.*unchanged"):
        new.save_to_preset(preset)
    assert os.listdir(tmp_path) == ["preset"]  # no stage left behind
    assert sorted(os.listdir(preset)) == before
    assert _same_weights(keras_apm.APM.from_preset(str(preset)), old)


@pytest.fixture
def small_tmpfs(tmp_path):
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
    )
    if result.returncode != 0:
        pytest.skip(f"mounting is not allowed here: {result.stderr!r}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="h5py and the staging are backend-independent; one backend",
)
def test_save_to_preset_on_a_full_disk(small_tmpfs):
    # In a child process, because the failure used to crash the
    # interpreter at exit (h5py flushing to the full disk, rc 139).
    script = textwrap.dedent(
        f"""
        import os, numpy as np, keras_apm
        def apm(widths):
            return keras_apm.APM(image_shape=(16, 16, 3), patch_size=4,
                                 trunk_widths=widths, feature_dim=8)
        preset = {str(small_tmpfs / "preset")!r}
        old = apm((16,))
        old.save_to_preset(preset)
        before = sorted(os.listdir(preset))
        try:
            apm((1024, 1024)).save_to_preset(preset)  # 4 MB on a 2 MB disk
        except OSError as e:
            assert "No space left" in str(e) and preset in str(e), e
        else:
            raise AssertionError("the save did not fail")
        assert os.listdir({str(small_tmpfs)!r}) == ["preset"]
        assert sorted(os.listdir(preset)) == before
        loaded = keras_apm.APM.from_preset(preset)
        assert all(np.array_equal(a, b) for a, b in
                   zip(loaded.get_weights(), old.get_weights()))
        print("ok", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(KERAS_BACKEND="jax"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="two processes of one backend show the race; one backend",
)
def test_two_processes_save_one_preset(tmp_path):
    preset = tmp_path / "preset"
    small_apm().save_to_preset(preset)
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        import os, sys, time, keras_apm
        widths = (int(sys.argv[1]),)
        model = keras_apm.APM(image_shape=(16, 16, 3), patch_size=4,
                              trunk_widths=widths, feature_dim=8)
        converter = keras_apm.APMImageConverter((16, 16))
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        for _ in range(8):
            model.save_to_preset({str(preset)!r})
            converter.save_to_preset({str(preset)!r})
        """
    )
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(width)],
            env=_env(KERAS_BACKEND="jax"),
            stderr=subprocess.PIPE,
            text=True,
        )
        for width in (16, 24)
    ]
    go.touch()
    missing = 0
    while any(w.poll() is None for w in writers):
        # A reader must always find a complete preset.
        if not (preset / "config.json").is_file():
            missing += 1
        time.sleep(0.001)  # leave the CPU to the writers
    for writer in writers:
        assert writer.wait() == 0, writer.stderr.read()[-3000:]
    assert missing == 0
    assert sorted(os.listdir(tmp_path)) == ["go", "preset"]  # no leftovers
    assert sorted(os.listdir(preset)) == [
        "checksums.json", "config.json", "image_converter.json",
        "metadata.json", "model.weights.h5",
    ]  # fmt: skip
    model = keras_apm.APM.from_preset(str(preset))  # checksums hold
    assert model.trunk_widths in ((16,), (24,))


# --- presets: verified on load ----------------------------------------------


@pytest.fixture
def saved(tmp_path):
    preset = tmp_path / "preset"
    model = small_apm()
    model.save_to_preset(preset)
    keras_apm.APMImageConverter((16, 16)).save_to_preset(preset)
    return preset, model


def test_flipped_bits_in_the_weights_are_named(saved):
    preset, _ = saved
    path = preset / "model.weights.h5"
    data = bytearray(path.read_bytes())
    data[-200] ^= 0x10  # one bit, inside a tensor's values
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.weights\.h5' is corrupt"):
        keras_apm.APM.from_preset(str(preset))


def _as_saved_by_keras_hub(preset):
    """No checksums, and no record in metadata.json that there were any."""
    os.remove(preset / "checksums.json")
    metadata = json.loads((preset / "metadata.json").read_text())
    del metadata["keras_apm_checksums"]
    (preset / "metadata.json").write_text(json.dumps(metadata))


def test_a_preset_without_checksums_still_loads(saved):
    preset, model = saved
    _as_saved_by_keras_hub(preset)
    assert _same_weights(keras_apm.APM.from_preset(str(preset)), model)
    keras_apm.APMImageConverter.from_preset(str(preset))


def test_nan_weights_are_refused_unless_asked(tmp_path):
    model = small_apm()
    kernel = model.field.mlp.trunk[0].kernel
    value = np.asarray(kernel).copy()
    value[0, 0] = np.nan
    kernel.assign(value)
    model.save_to_preset(tmp_path / "nan")
    with pytest.raises(ValueError, match=r"model\.weights\.h5.*NaN or Inf"):
        keras_apm.APM.from_preset(str(tmp_path / "nan"))
    loaded = keras_apm.APM.from_preset(str(tmp_path / "nan"), check_weights=False)
    assert np.isnan(np.asarray(loaded.field.mlp.trunk[0].kernel)[0, 0])


def test_config_without_config_is_named(saved):
    preset, _ = saved
    os.remove(preset / "checksums.json")
    (preset / "config.json").write_text('{"registered_name": "keras_apm>APM"}')
    with pytest.raises(ValueError, match=r"config\.json.*'config' dict"):
        keras_apm.APM.from_preset(str(preset))


@pytest.mark.parametrize("checksums", [True, False])
def test_a_bad_image_converter_file_is_named(saved, checksums):
    preset, _ = saved
    if not checksums:
        _as_saved_by_keras_hub(preset)
    (preset / "image_converter.json").write_text('{"config": ')
    with pytest.raises(ValueError, match=r"image_converter\.json"):
        keras_apm.APMImageConverter.from_preset(str(preset))


def test_an_unreachable_hub_is_named_at_once(monkeypatch):
    import socket

    from keras_apm.utils.keras_hub_compat import preset_utils_module

    preset_utils = preset_utils_module()

    def unreachable(address, timeout=None, *args):
        raise OSError(101, "Network is unreachable")

    def no_download(*args, **kwargs):
        raise AssertionError("keras-hub should not be asked to download")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(preset_utils, "get_file", no_download)
    for load in (keras_apm.APM.from_preset, keras_apm.APMImageConverter.from_preset):
        with pytest.raises(ValueError) as info:
            load("hf://someone/apm_x")
        message = str(info.value)
        assert "hf://someone/apm_x" in message
        assert "huggingface.co is unreachable" in message
        assert "Network is unreachable" in message


# --- edge shapes and bad inputs ----------------------------------------------


@pytest.fixture(scope="module")
def model():
    return small_apm(global_head=True, global_num_heads=2, num_levels=2)


def test_empty_batches_give_empty_outputs_and_break_nothing(model):
    x = np.random.default_rng(0).random((3, 16, 16, 3), dtype="float32")
    reference = {k: keras.ops.convert_to_numpy(v) for k, v in model(x).items()}
    for out in (model(x[:0]), model.predict(x[:0], verbose=0)):
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            k: (0,) + v.shape[1:] for k, v in reference.items()
        }
    answers = model.evaluate_locations(x[:0], np.array([[0.5, 1.0]]))
    assert tuple(answers["features"].shape) == (0, 1, 8)
    assert tuple(answers["levels"].shape) == (0, 1, 2, 8)
    assert tuple(model.evaluate_locations(x, np.zeros((0, 2)))["rgb"].shape) == (3, 0, 3)
    converter = keras_apm.APMImageConverter((16, 16), scaling="minmax")
    assert tuple(converter(np.zeros((0, 20, 20, 3), "uint8")).shape) == (0, 16, 16, 3)
    # The object still works, and answers as before.
    predicted = model.predict(x, verbose=0)
    for key, value in reference.items():
        np.testing.assert_allclose(predicted[key], value, atol=1e-5)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(model(x)[key]), value, atol=1e-6
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": 0}, "patch_size"),
        ({"patch_size": -4}, "patch_size"),
        ({"patch_size": 2.5}, "patch_size"),
        ({"patch_size": "4"}, "patch_size"),
        ({"trunk_widths": (16, 0)}, r"trunk_widths\[1\]"),
        ({"feature_dim": 0}, "feature_dim"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"num_levels": 0}, "num_levels"),
        ({"image_shape": (16, 0, 3)}, "image_shape"),
        ({"global_head": True, "global_num_heads": 3}, "divisible"),
    ],
)
def test_hyper_parameters_are_validated(kwargs, match):
    config = dict(image_shape=(16, 16, 3), patch_size=4, trunk_widths=(16,), feature_dim=8)
    config.update(kwargs)
    with pytest.raises(ValueError, match=match):
        keras_apm.APM(**config)


@pytest.mark.parametrize(
    "images, match",
    [
        ("a string", "Received a str"),
        ([[0.0, 1.0]], "Received a list"),
        ([[0.0], [1.0, 2.0]], "Received a ragged nested list"),
        (np.full((1, 16, 16, 3), "a"), "real numbers"),
    ],
)
def test_bad_image_inputs_are_named(model, images, match):
    for call in (model, model.predict, model.trigger_column):
        with pytest.raises(ValueError, match=f"Expected images.*{match}"):
            call(images)


@pytest.mark.parametrize(
    "locations, match",
    [
        ("0,1", "Received a str"),
        ([[0, 1], [2]], "ragged"),
        (np.array([[1 + 2j, 0]]), "complex"),
        ([["a", "b"]], "numeric"),
        (np.array([["0", "1"]]), "Received dtype"),
    ],
)
def test_bad_locations_are_named(model, locations, match):
    x = np.zeros((1, 16, 16, 3), "float32")
    with pytest.raises(ValueError, match=match):
        model.evaluate_locations(x, locations)


def test_predict_runs_the_opt_in_nan_check(model):
    x = np.random.default_rng(0).random((2, 16, 16, 3), dtype="float32")
    x[1, 2, 3, 0] = np.nan
    model.predict(x, verbose=0)  # off by default
    model.check_finite = True
    try:
        with pytest.raises(ValueError, match=r"finite images.*\(1, 2, 3, 0\)"):
            model.predict(x, verbose=0)
    finally:
        model.check_finite = False


def test_out_of_memory_says_so_first(model, monkeypatch):
    message = (
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
        "123456789 bytes.\n" + "BufferAssignment details\n" * 200
    )

    def oom(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(keras.Model, "predict", oom)
    with pytest.raises(MemoryError) as info:
        model.predict(np.zeros((4, 16, 16, 3), "float32"), verbose=0)
    first, second = str(info.value).splitlines()[:2]
    assert first == "Out of device memory in APM.predict: use a smaller `batch_size`."
    assert "RESOURCE_EXHAUSTED" in second
    assert isinstance(info.value.__cause__, RuntimeError)
    monkeypatch.setattr(type(model.field), "__call__", oom)
    with pytest.raises(MemoryError, match="evaluate_locations: use a smaller `chunk_size"):
        model.evaluate_locations(np.zeros((1, 16, 16, 3), "float32"))


# --- keras-apm convert: bad checkpoints and outputs --------------------------


def _convert(tmp_path, checkpoint, output=None):
    from keras_apm.cli import main as cli_main

    output = output or str(tmp_path / "out")
    return cli_main(
        ["convert", "--checkpoint", str(checkpoint), "--variant", "ttt",
         "--output", output]
    )  # fmt: skip


def _torch_checkpoint(path, state):
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path


@pytest.mark.parametrize("kind", ["text", "random", "truncated", "empty"])
def test_convert_names_an_unreadable_checkpoint(tmp_path, capsys, kind):
    path = tmp_path / "model.pth"
    if kind == "text":
        path.write_text("<html>404 Not Found</html>\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        state = {"fc1.weight": np.ones((64, 64), "float32")}
        _torch_checkpoint(path, state)
        path.write_bytes(path.read_bytes()[:3000])
    else:
        path.write_bytes(b"")
    assert _convert(tmp_path, path) == 2
    err = capsys.readouterr().err
    assert f"Checkpoint {str(path)!r}" in err
    expected = {"text": "is a text file", "random": "not a zip archive",
                "truncated": "truncated or corrupt", "empty": "is empty"}[kind]  # fmt: skip
    assert expected in err
    assert "Traceback" not in err and "KeyError" not in err
    assert sorted(os.listdir(tmp_path)) == ["model.pth"]


@pytest.mark.parametrize("bad", ["nan", "int"])
def test_convert_refuses_nan_and_integer_tensors(tmp_path, capsys, bad):
    state = {"fc1.weight": np.ones((4, 4), "float32"), "fc1.bias": np.zeros(4, "float32")}
    if bad == "nan":
        state["fc1.bias"][2] = np.nan
    else:
        state["fc1.weight"] = np.ones((4, 4), "int64")
    path = _torch_checkpoint(tmp_path / "model.pth", state)
    assert _convert(tmp_path, path) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "fc1." in err
    assert ("NaN or Inf" if bad == "nan" else "non-float tensors") in err


def test_convert_checks_the_output_is_writable_before_loading(
    tmp_path, capsys, monkeypatch
):
    from keras_apm.convert import official

    parent = tmp_path / "readonly"
    parent.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: a read-only mount
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(parent)],
            capture_output=True,
        )
        if result.returncode != 0:
            pytest.skip("cannot make a read-only directory here")
    else:
        parent.chmod(0o555)

    def never(path):
        raise AssertionError("the checkpoint was read before the output check")

    monkeypatch.setattr(official, "load_official_state_dict", never)
    checkpoint = _torch_checkpoint(tmp_path / "model.pth", {"x": np.ones(2, "float32")})
    try:
        assert _convert(tmp_path, checkpoint, str(parent / "preset")) == 2
        err = capsys.readouterr().err
        assert "Cannot write to the parent directory" in err
        assert str(parent) in err
        assert "Read-only file system" in err or "ermission denied" in err
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(parent)], check=False)
        else:
            parent.chmod(0o755)
