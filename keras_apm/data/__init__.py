"""Data: the offline `sklearn_digits` TFDS builder and image pipelines.

Importing this package registers the `sklearn_digits` TFDS builder, so
`tfds.load("sklearn_digits")` works afterwards.

Example:

```python
import keras_apm.data
import tensorflow_datasets as tfds

images, labels = tfds.as_numpy(tfds.load(
    "sklearn_digits", split="test", as_supervised=True, batch_size=-1))
ds = keras_apm.data.image_dataset("sklearn_digits", split="train",
                                  batch_size=64, shuffle=True, seed=0)
```
"""

from keras_apm.data.feature_cache import cache_teacher_features
from keras_apm.data.feature_cache import load_feature_cache
from keras_apm.data.images import IMAGE_EXTENSIONS
from keras_apm.data.images import image_dataset
from keras_apm.data.images import list_image_files
from keras_apm.data.inputs import model_inputs
from keras_apm.data.sklearn_digits import SklearnDigits
from keras_apm.data.sklearn_digits import digits_split_indices
from keras_apm.data.sklearn_digits import upscale_digits

__all__ = [
    "IMAGE_EXTENSIONS",
    "SklearnDigits",
    "cache_teacher_features",
    "digits_split_indices",
    "image_dataset",
    "list_image_files",
    "load_feature_cache",
    "model_inputs",
    "upscale_digits",
]
