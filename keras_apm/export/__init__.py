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

from keras_apm.export.apm_export import VARIANTS
from keras_apm.export.apm_export import export
from keras_apm.export.apm_export import export_variants
from keras_apm.export.checks import FORMATS
from keras_apm.export.checks import QUANTIZATIONS
from keras_apm.export.checks import SIGNATURES
from keras_apm.export.runtime import ExportedAPM
from keras_apm.export.runtime import load
