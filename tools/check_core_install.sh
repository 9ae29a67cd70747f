#!/usr/bin/env bash
# Installs keras_apm with no extras (`pip install .`) into a fresh virtualenv,
# then loads the shipped `apm_tiny_digits` preset and runs it, and checks that
# a feature needing an extra says which (`keras_apm.data` -> `[data]`).
# Prints the install time and the size of the venv (quoted in the README).
#
# Not part of the test suite: the install takes minutes (TensorFlow comes in
# through keras-hub's tensorflow-text) and ~2.4 GB. The same checks run
# in-process in tests/test_optional_dependencies.py.
#
# Usage: tools/check_core_install.sh [VENV_DIR]
#   VENV_DIR: where to build the venv (default: a temporary one, removed
#   afterwards); an existing one is reused, keras_apm reinstalled into it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv=${1:-$work/venv}

start=$(date +%s)
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# Built from a clean copy of the tree: no build leftovers, no editable path.
mkdir -p "$work/src" && (cd "$repo" && git ls-files -z | xargs -0 cp --parents -t "$work/src")
"$venv/bin/python" -m pip install -q "$work/src"
install_s=$(( $(date +%s) - start ))

cd "$work"  # away from the checkout: import the installed package
KERAS_BACKEND=tensorflow PYTHONPATH= "$venv/bin/python" - <<'PY'
import numpy as np

import keras_apm
from keras_apm.utils.optional import MissingDependencyError

assert "site-packages" in keras_apm.__file__, keras_apm.__file__
model = keras_apm.APM.from_preset("apm_tiny_digits")
converter = keras_apm.APMImageConverter.from_preset("apm_tiny_digits")
images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3))
out = model(converter(images.astype("float32")))
assert out["features"].shape == (2, 8, 8, 64), out["features"].shape
assert np.isfinite(np.asarray(out["features"])).all()
try:
    import tensorflow_datasets  # noqa: F401
except ImportError:
    try:
        import keras_apm.data  # noqa: F401
    except MissingDependencyError as error:
        assert "keras-apm[data]" in str(error), error
    else:
        raise AssertionError("keras_apm.data imported without tfds")
else:
    raise AssertionError("tensorflow-datasets is installed without an extra")
print("core install: apm_tiny_digits runs; keras_apm.data names [data]")
PY
echo "install: ${install_s} s; venv size: $(du -sh "$venv" | cut -f1)"
