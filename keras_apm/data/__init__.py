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

from keras_apm.utils.lazy import lazy_exports

_EXPORTS = {
    "cache_teacher_features": "feature_cache",
    "load_feature_cache": "feature_cache",
    "IMAGE_EXTENSIONS": "images",
    "image_dataset": "images",
    "list_image_files": "images",
    "SklearnDigits": "sklearn_digits",
    "digits_split_indices": "sklearn_digits",
    "upscale_digits": "sklearn_digits",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
