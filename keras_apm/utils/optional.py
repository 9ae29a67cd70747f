"""Optional dependencies, and the extra that installs each.

`pip install keras-apm` brings Keras, keras-hub and NumPy: enough to load,
run, save and distill APMs from arrays. Features beyond that need more
packages, grouped into extras in `pyproject.toml` (`data`, `export`,
`visualize`, `corruptions`, `demo`, `convert`). Every optional import goes
through `require`, so that a missing package says which extra to install
instead of failing with a bare `ModuleNotFoundError` deep inside a call.

Example:
```python
from keras_apm.utils.optional import require
ndimage = require("scipy.ndimage", extra="corruptions")
```
"""

import importlib

# Import name -> the name pip installs it by, where the two differ.
PIP_NAMES = {
    "ai_edge_litert": "ai-edge-litert",
    "PIL": "Pillow",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "tensorflow_datasets": "tensorflow-datasets",
}


class MissingDependencyError(ImportError):
    """An optional dependency is missing; the message names its extra."""


def require(module, extra):
    """Imports `module`, or raises naming the extra that installs it.

    Args:
        module: dotted module name, e.g. `"scipy.ndimage"`.
        extra: the `keras-apm` extra that provides it, e.g. `"corruptions"`.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: (an `ImportError`) when the package is not
            installed, saying `pip install 'keras-apm[<extra>]'`. A package
            that is installed but fails to import raises its own error.

    Example:
    >>> tfds = require("tensorflow_datasets", extra="data")
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        missing = getattr(error, "name", None)
        if missing is not None and missing.split(".")[0] != package:
            # The package is there but one of its own imports failed:
            # that error says more than "install the extra" would.
            raise
        pip_name = PIP_NAMES.get(package, package)
        raise MissingDependencyError(
            f"This feature of keras_apm needs `{pip_name}`, which is not "
            f"installed. Install it with the `{extra}` extra: "
            f"pip install 'keras-apm[{extra}]' (or pip install {pip_name})."
        ) from error
