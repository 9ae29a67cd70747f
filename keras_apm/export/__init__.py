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

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    """
    apm_export: VARIANTS export export_variants
    checks: FORMATS QUANTIZATIONS SIGNATURES
    runtime: ExportedAPM load
    ttt_litert: TTT_SIGNATURES export_ttt
    ttt_runtime: LiteRTTestTimeTrainer
""",
)
