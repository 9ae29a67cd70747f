"""keras_apm: the Asynchronous Perception Machine for Keras 3.

Example:
```python
import keras_apm
model = keras_apm.APM.from_preset("apm_tiny_digits")
outputs = model(images)  # {"features": (B, h, w, D), "rgb": ..., ...}
```
"""

import importlib

from keras_apm.utils.lazy import in_command

__version__ = "0.1.0"

# Public name -> module that defines it. `import keras_apm` loads them all
# (so every Keras-serializable class is registered before a `.keras` file is
# loaded), except in the `keras-apm` command, which loads only what the
# chosen subcommand needs: importing Keras, TensorFlow, JAX and keras-hub
# costs 7-9 s, far too much for `keras-apm --help`.
_EXPORTS = {
    # name: (module, attribute; None for the module itself)
    "layers": ("keras_apm.layers", None),
    "teachers": ("keras_apm.teachers", None),
    "visualize": ("keras_apm.visualize", None),
    "APMDistiller": ("keras_apm.distill", "APMDistiller"),
    "export": ("keras_apm.export", "export"),
    "APM": ("keras_apm.models.apm", "APM"),
    "APMImageConverter": ("keras_apm.models.apm", "APMImageConverter"),
    "APMImageClassifier": ("keras_apm.models.apm", "APMImageClassifier"),
    "APMImageClassifierPreprocessor": (
        "keras_apm.models.apm",
        "APMImageClassifierPreprocessor",
    ),
    "apm_outputs": ("keras_apm.models.apm.apm_outputs", None),
    "BatchedTTT": ("keras_apm.ttt", "BatchedTTT"),
    "TestTimeTrainer": ("keras_apm.ttt", "TestTimeTrainer"),
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_apm' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    module = importlib.import_module(module)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


if not in_command():
    for _name in _EXPORTS:
        __getattr__(_name)
    del _name
