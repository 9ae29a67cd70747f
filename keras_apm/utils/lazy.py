"""Package exports that the `keras-apm` command imports only when used.

The command builds its parser from constants that live beside heavy code
(recipe names, export formats, corruptions, ...). Importing a package whose
`__init__` loads everything would import Keras, TensorFlow and JAX (7-9 s)
just to print `--help`. So packages declare their exports with
`lazy_exports`: outside the command every export is loaded at import time,
exactly as plain imports would (every Keras-serializable class is registered
before a `.keras` file is read, the TFDS builder before `tfds.load`); inside
the command a name's module is imported on first use.

Example:
```python
# keras_apm/ttt/__init__.py
__getattr__, __dir__, __all__ = lazy_exports(__name__, '''
    batched: BatchedTTT
    trainer: TestTimeTrainer
''')
```
"""

import importlib
import os
import sys


def in_command():
    """True when this process is the `keras-apm` command.

    The console script and `python -m keras_apm` import the package before
    any of the command's own code runs, so the command is recognised by its
    name (`-m` is what `sys.argv[0]` reads while `-m` imports a package).
    """
    global _IN_COMMAND
    if _IN_COMMAND is None:
        # Decided once, when `keras_apm` itself is imported: under `-m`,
        # `sys.argv[0]` becomes the path of `__main__.py` afterwards.
        argv0 = sys.argv[0] if sys.argv else ""
        _IN_COMMAND = os.path.basename(argv0) == "keras-apm" or argv0 == "-m"
    return _IN_COMMAND


_IN_COMMAND = None


def lazy_exports(package, spec):
    """`(__getattr__, __dir__, __all__)` for a package exporting `spec`.

    Args:
        package: the package's `__name__`.
        spec: one line per module, `module: Name Name ...`; the module is
            relative to the package or a full `keras_apm.` path and defines
            the names. A name equal to its own module's name
            (`visualize.overfit`, the function) is set on the package after
            the import, which binds the module there.
    """
    exports = {}
    for line in spec.strip().splitlines():
        module, names = line.split(":")
        for name in names.split():
            exports[name] = module.strip()

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(
                f"module {package!r} has no attribute {name!r}"
            )
        target = exports[name]
        if not target.startswith("keras_apm."):
            target = f"{package}.{target}"
        module = importlib.import_module(target)
        value = getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(exports))

    if not in_command():
        from keras_apm.utils.optional import MissingDependencyError

        for name in exports:
            try:
                __getattr__(name)
            except MissingDependencyError:
                # A module whose extra is not installed stays lazy: the
                # package's other modules work (a `tf.data` pipeline needs
                # no tensorflow-datasets), and using the name raises the
                # error that names the extra.
                pass
    return __getattr__, __dir__, sorted(exports)
