"""Private keras-hub names come through `keras_apm.utils.keras_hub_compat`."""

import os
import re

import keras_hub
import pytest
from packaging.specifiers import SpecifierSet

import keras_apm
from keras_apm.utils import keras_hub_compat

PACKAGE = os.path.dirname(keras_apm.__file__)
ROOT = os.path.dirname(PACKAGE)
COMPAT = os.path.join(PACKAGE, "utils", "keras_hub_compat.py")


def _python_files():
    for folder in ("keras_apm", "tests", "tools", "benchmarks", "examples"):
        for root, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in names:
                if name.endswith(".py"):
                    yield os.path.join(root, name)


def test_only_the_compat_module_names_keras_hub_src():
    this = os.path.abspath(__file__)
    offenders = []
    for path in _python_files():
        if os.path.abspath(path) in (COMPAT, this):
            continue
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if "keras_hub.src" in line:
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{number}")
    assert not offenders, (
        "Import private keras-hub names through "
        f"keras_apm.utils.keras_hub_compat: {offenders}"
    )


def test_pyproject_range_is_the_tested_range_and_holds_the_installed():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        match = re.search(r'"keras-hub([^"]*)"', f.read())
    assert match, "pyproject.toml names no keras-hub dependency"
    assert match.group(1) == keras_hub_compat.TESTED_KERAS_HUB
    assert keras_hub.__version__ in SpecifierSet(match.group(1))


def test_a_missing_private_name_names_the_tested_range():
    with pytest.raises(ImportError) as info:
        keras_hub_compat._private(
            "keras_hub.src.utils.preset_utils", "no_such_name"
        )
    message = str(info.value)
    assert "no_such_name" in message
    assert keras_hub_compat.TESTED_KERAS_HUB in message
    assert keras_hub.__version__ in message
    with pytest.raises(ImportError, match="no_such_module"):
        keras_hub_compat._private("keras_hub.src.no_such_module", "x")
