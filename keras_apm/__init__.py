"""keras_apm: the Asynchronous Perception Machine for Keras 3.

Example:
```python
import keras_apm
model = keras_apm.APM.from_preset("apm_tiny_digits")
outputs = model(images)  # {"features": (B, h, w, D), "rgb": ..., ...}
```
"""

from keras_apm import layers
from keras_apm import teachers
from keras_apm import visualize
from keras_apm.distill import APMDistiller
from keras_apm.export import export
from keras_apm.models.apm import APM
from keras_apm.models.apm import APMImageConverter
from keras_apm.models.apm import apm_outputs
from keras_apm.ttt import BatchedTTT
from keras_apm.ttt import TestTimeTrainer

__version__ = "0.1.0"
