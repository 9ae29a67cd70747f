"""The private keras-hub names keras_apm needs, imported in one place.

keras-hub's public API (`keras_hub.models`, `keras_hub.layers`, ...) covers
loading and saving models, but not a few things keras_apm does around them.
Those come from `keras_hub.src`, which may change in any release; every such
import lives here, so that a keras-hub upgrade that breaks one fails at
`import keras_apm` with a message naming the name and the tested range
(`TESTED_KERAS_HUB`, also the range in `pyproject.toml`), rather than deep
inside a call. `tests/test_keras_hub_compat.py` checks that no other file
imports `keras_hub.src`.

Why each name is needed:

- `register_presets`: registers the shipped presets (`apm_tiny_digits`,
  `vit_tiny_digits`) so `from_preset("name")` finds them, as keras-hub does
  for its own models (no public registration call).
- `BUILTIN_PRESETS`: maps a registered preset name to its handle, so the
  converter and the preset checks can read files of a preset given by name.
- `check_file_exists`: whether a preset (directory or hub handle) holds a
  file, e.g. `image_converter.json` (optional in an APM preset).
- `load_json`: reads a preset's `task.json` to find its task class.
- `check_config_class`: the class a saved config names (used to tell a
  classifier preset from a bare backbone).
- `get_preset_loader`, `KerasPresetLoader`: read an image converter from a
  preset whose backbone class has no registered converter subclass (a bare
  `CLIPVisionEncoder`), which `ImageConverter.from_preset` refuses.
- `keras_hub_test_case()`: keras-hub's own test harness (`TestCase`, with
  `run_backbone_test`, `run_preset_test`, ...), shipped in the wheel; the
  test suite checks APM against keras-hub's conventions with it. Loaded on
  call only: it needs `grain` and TensorFlow (the `test` extra).
- `get_file`, `SafetensorLoader`: open a Hugging Face checkpoint's files
  (`hf://` or a folder) and read its safetensors weights, for the CLIP
  converter keras-hub lacks (`keras_apm.teachers.convert_hf_clip`,
  keras-hub #2985). `SafetensorLoader` is imported on first use (it needs
  `safetensors`, the `hf` extra).
- `in_tf_function`: whether code runs inside `tf.data` / `tf.function`,
  where the image converter must use TensorFlow ops on any Keras backend
  (keras-hub's own preprocessing layers decide the same way).

Example:
```python
from keras_apm.utils.keras_hub_compat import check_file_exists
check_file_exists("apm_tiny_digits", "image_converter.json")
```
"""

import importlib

import keras_hub

# The keras-hub versions the test suite has run with. Every name below is
# also present in 0.25.1, 0.28.0, 0.30.0 and 0.31.1 (read from their wheels),
# but the suite has not run on those.
TESTED_KERAS_HUB = ">=0.32.0,<0.33"


def _private(module, name):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ImportError(
            f"keras_apm needs `{module}.{name}` from keras-hub, a private "
            f"name that the installed keras-hub {keras_hub.__version__} "
            f"does not provide ({error}). keras_apm is tested with "
            f"keras-hub{TESTED_KERAS_HUB}: install a version in that range "
            "(pip install 'keras-hub" + TESTED_KERAS_HUB + "')."
        ) from None


_PRESET_UTILS = "keras_hub.src.utils.preset_utils"
register_presets = _private(_PRESET_UTILS, "register_presets")
BUILTIN_PRESETS = _private(_PRESET_UTILS, "BUILTIN_PRESETS")
check_file_exists = _private(_PRESET_UTILS, "check_file_exists")
load_json = _private(_PRESET_UTILS, "load_json")
check_config_class = _private(_PRESET_UTILS, "check_config_class")
get_preset_loader = _private(_PRESET_UTILS, "get_preset_loader")
KerasPresetLoader = _private(_PRESET_UTILS, "KerasPresetLoader")
in_tf_function = _private("keras_hub.src.utils.tensor_utils", "in_tf_function")


def preset_utils_module():
    """keras-hub's preset module itself, for tests that patch its downloads."""
    return importlib.import_module(_PRESET_UTILS)


def keras_hub_test_case():
    """keras-hub's `TestCase` class (its test harness), for the test suite."""
    return _private("keras_hub.src.tests.test_case", "TestCase")

# Hugging Face checkpoints (keras_apm.teachers.hf_checkpoints): keras-hub's
# download-or-open of a preset file and its safetensors reader, which the
# CLIP converter (no keras-hub converter yet, keras-hub #2985) fills the
# backbone with, as keras-hub's own converters do.
get_file = _private(_PRESET_UTILS, "get_file")


def __getattr__(name):
    # Imported on use: the safetensors reader imports `safetensors`, an
    # optional dependency (the `hf` extra).
    if name == "SafetensorLoader":
        return _private(
            "keras_hub.src.utils.transformers.safetensor_utils",
            "SafetensorLoader",
        )
    raise AttributeError(name)
