"""Export APMs for deployment: TensorFlow SavedModel and TFLite (LiteRT).

`keras_apm.export(model_or_preset, path, ...)` is the export function
itself; this package's other tools are imported from it.

Example:
```python
import keras_apm
from keras_apm.export import load

keras_apm.export("apm_tiny_digits", "apm.tflite", format="tflite")
runner = load("apm.tflite")
runner.predict(images)["features"]
```
"""

from keras_apm.utils.lazy import lazy_exports

_EXPORTS = {
    "VARIANTS": "apm_export",
    "export": "apm_export",
    "export_variants": "apm_export",
    "FORMATS": "checks",
    "QUANTIZATIONS": "checks",
    "SIGNATURES": "checks",
    "ExportedAPM": "runtime",
    "load": "runtime",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
