"""Preprocessor of `APMImageClassifier`: raw images -> the APM's input."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from keras_apm.models.apm.apm_backbone import APM
from keras_apm.models.apm.apm_image_converter import APMImageConverter
from keras_apm.utils.preset_files import IMAGE_CONVERTER_FILE
from keras_apm.utils.keras_hub_compat import check_file_exists


@keras.saving.register_keras_serializable(package="keras_apm")
class APMImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """Image classification preprocessing for an `APMImageClassifier`.

    Holds an `APMImageConverter` (resize, scaling, channel order) and maps
    `(images, labels, sample_weight)` to the APM's input, passing labels and
    weights through, as every keras-hub `ImageClassifierPreprocessor` does.
    Images are raw RGB pixels in `[0, 255]` (any integer or float dtype);
    works eagerly on every backend and inside `tf.data` pipelines.

    `from_preset` reads the converter saved in an APM preset
    (`image_converter.json`); a preset without one is refused with an error
    naming the file rather than guessing the scaling its model was trained
    with.

    Args:
        image_converter: a `keras_apm.APMImageConverter`.
        **kwargs: `keras_hub.models.Preprocessor` arguments (`name`, ...).

    Example:
    ```python
    preprocessor = keras_apm.APMImageClassifierPreprocessor.from_preset(
        "apm_tiny_digits"
    )
    x, y = preprocessor(np.random.randint(0, 256, (2, 64, 64, 3)), [0, 3])
    x.shape  # (2, 32, 32, 3), scaled as the preset's model expects
    ```
    """

    backbone_cls = APM
    image_converter_cls = APMImageConverter

    @classmethod
    def _add_missing_kwargs(cls, loader, kwargs):
        # keras-hub would fail deep in a JSON read; say which file is missing.
        if "image_converter" not in kwargs and not check_file_exists(
            loader.preset, IMAGE_CONVERTER_FILE
        ):
            raise ValueError(
                f"The APM preset {loader.preset!r} has no "
                f"{IMAGE_CONVERTER_FILE}, so the scaling its model expects is "
                "unknown. Pass `image_converter=keras_apm.APMImageConverter("
                "...)` (or `preprocessor=` to the classifier), or save one "
                "into the preset with `converter.save_to_preset(preset)`."
            )
        return super()._add_missing_kwargs(loader, kwargs)
