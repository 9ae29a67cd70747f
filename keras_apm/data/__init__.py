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

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    """
    feature_cache: cache_teacher_features load_feature_cache
    images: IMAGE_EXTENSIONS image_dataset list_image_files
    inputs: model_inputs
    sklearn_digits: SklearnDigits digits_split_indices upscale_digits
""",
)
