"""Each optional feature, with its package missing, names the extra to install.

The packages are hidden in-process (their modules dropped from `sys.modules`
and a finder that refuses them), then each feature is driven through its
public function. `import keras_apm` itself, without any optional package, runs
in a subprocess. A real install with only `pip install .` is checked by
`tools/check_core_install.sh` (see README, "Install").
"""

import importlib.abc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_apm.utils.optional import MissingDependencyError
from keras_apm.utils.optional import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, packages):
        self.packages = set(packages)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.packages:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def hide(monkeypatch):
    """`hide("scipy", ...)`: those packages cannot be imported until the end."""

    def hide(*packages):
        for name in list(sys.modules):
            if name.split(".")[0] in packages:
                monkeypatch.delitem(sys.modules, name)
        monkeypatch.setattr(sys, "meta_path", [_Refuse(packages)] + sys.meta_path)

    return hide


def _names_extra(info, extra, pip_name):
    message = str(info.value)
    assert f"pip install 'keras-apm[{extra}]'" in message, message
    assert pip_name in message, message
    assert isinstance(info.value, ImportError)


def test_require_names_the_extra_and_the_pip_name(hide):
    hide("sklearn")
    with pytest.raises(MissingDependencyError) as info:
        require("sklearn.cluster", extra="visualize")
    _names_extra(info, "visualize", "scikit-learn")


def test_require_passes_on_an_installed_package_failing_inside(hide):
    # numpy is there; a failure of one of *its* imports is its own error.
    hide("no_such_dependency")

    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "keras_apm_broken_package":
                raise ModuleNotFoundError("inner", name="no_such_dependency")

    sys.meta_path.insert(0, Broken())
    try:
        with pytest.raises(ModuleNotFoundError) as info:
            require("keras_apm_broken_package", extra="data")
        assert not isinstance(info.value, MissingDependencyError)
    finally:
        sys.meta_path.remove(next(f for f in sys.meta_path if isinstance(f, Broken)))


@pytest.mark.parametrize(
    "package, pip_name, name",
    [
        ("scipy", "scipy", "gaussian_blur"),
        ("PIL", "Pillow", "pixelate"),
    ],
)
def test_corruptions_name_their_extra(hide, rng, package, pip_name, name):
    from keras_apm.data import corruptions

    image = rng.integers(0, 256, (32, 32, 3)).astype("float32")
    hide(package)
    with pytest.raises(MissingDependencyError) as info:
        corruptions.corrupt(image, name, 3)
    _names_extra(info, "corruptions", pip_name)


def test_visualize_features_name_their_extra(hide, rng, tmp_path):
    from keras_apm.visualize import files
    from keras_apm.visualize import images
    from keras_apm.visualize import islands
    from keras_apm.visualize import upsample

    grid = rng.random((4, 4, 8)).astype("float32")
    cases = [
        ("sklearn", "scikit-learn", lambda: islands.pca_colors(grid)),
        ("matplotlib", "matplotlib", lambda: islands.cluster_palette(3)),
        ("scipy", "scipy", lambda: upsample.bilinear_upsample(grid, 2)),
        ("skimage", "scikit-image", lambda: images.load_image("skimage:astronaut")),
        (
            "PIL",
            "Pillow",
            lambda: files.save_png(np.zeros((4, 4, 3), "uint8"), str(tmp_path / "a.png")),
        ),
    ]
    for package, pip_name, run in cases:
        with pytest.MonkeyPatch.context() as patch:
            for name in list(sys.modules):
                if name.split(".")[0] == package:
                    patch.delitem(sys.modules, name)
            patch.setattr(sys, "meta_path", [_Refuse([package])] + sys.meta_path)
            with pytest.raises(MissingDependencyError) as info:
                run()
        _names_extra(info, "visualize", pip_name)
    assert not (tmp_path / "a.png").exists()


def test_grain_input_names_the_grain_extra_numpy_needs_none(hide):
    from keras_apm.data import inputs

    hide("grain")
    with pytest.raises(MissingDependencyError) as info:
        inputs.grain_inputs([np.zeros((8, 8, 3), "uint8")], image_size=(4, 4))
    _names_extra(info, "grain", "grain")
    out = inputs.array_inputs(np.zeros((2, 8, 8, 1), "uint8"), image_size=(4, 4))
    assert out["images"].shape == (2, 4, 4, 3)


def test_loading_a_tflite_file_names_the_export_extra(hide, tmp_path):
    from keras_apm.export import runtime

    path = tmp_path / "apm.tflite"
    path.write_bytes(b"\0" * 64)
    hide("ai_edge_litert")
    with pytest.raises(MissingDependencyError) as info:
        runtime._load_tflite(str(path), None)
    _names_extra(info, "export", "ai-edge-litert")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
    reason="runs its own TensorFlow-backend interpreter: once, in the TF pass",
)
def test_import_keras_apm_and_run_a_preset_without_optional_packages(tmp_path):
    # A fresh interpreter: the optional packages are refused from the first
    # import on, as in an install with no extras (TensorFlow stays: keras-hub
    # pulls it in through tensorflow-text; JAX needs scipy, so TF backend).
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        OPTIONAL = {{"tensorflow_datasets", "scipy", "PIL", "sklearn",
                    "matplotlib", "skimage", "ai_edge_litert", "grain",
                    "etils"}}
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in OPTIONAL:
                    raise ModuleNotFoundError(name, name=name)
        sys.meta_path.insert(0, Refuse())
        import numpy as np
        import keras_apm
        model = keras_apm.APM.from_preset("apm_tiny_digits")
        converter = keras_apm.APMImageConverter.from_preset("apm_tiny_digits")
        images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3))
        out = model(converter(images.astype("float32")))
        assert out["features"].shape == (2, 8, 8, 64), out["features"].shape
        assert np.isfinite(np.asarray(out["features"])).all()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in OPTIONAL)
        assert not loaded, loaded
        # A plain tf.data pipeline needs no tensorflow-datasets: the
        # distiller adapts it (dict of "image", another size) and trains.
        import tensorflow as tf
        from keras_apm.distill import APMDistiller, default_student_config
        teacher = keras_apm.teachers.Teacher.from_preset("vit_tiny_digits")
        distiller = APMDistiller(
            keras_apm.APM(**default_student_config(teacher)), teacher)
        distiller.compile(optimizer="adam")
        raw = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3))
        ds = tf.data.Dataset.from_tensor_slices({{"image": raw.astype("uint8")}})
        logs = distiller.fit(ds, epochs=1, verbose=0).history
        assert np.isfinite(logs["loss"][0]), logs
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in OPTIONAL)
        assert not loaded, loaded
        # What does need it names the extra.
        try:
            keras_apm.data.image_dataset
        except keras_apm.utils.optional.MissingDependencyError as error:
            assert "keras-apm[data]" in str(error), error
            assert "tensorflow-datasets" in str(error), error
        else:
            raise AssertionError("image_dataset imported without tfds")
        print("CORE OK")
        """
    )
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0 and "CORE OK" in result.stdout, (
        result.stdout[-3000:] + result.stderr[-3000:]
    )
