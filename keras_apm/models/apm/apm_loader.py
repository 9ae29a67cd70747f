"""`load_apm`: an APM preset's model and image converter, in one call."""

from keras_apm.utils import preset_files
from keras_apm.models.apm.apm_backbone import APM
from keras_apm.models.apm.apm_image_converter import load_image_converter


def load_apm(preset, scaling="unit", load_weights=True):
    """`(model, converter)`: an APM preset's backbone and image converter.

    The preset (a built-in name, a `kaggle://` or `hf://` handle, or a
    local directory) is resolved once and both are read from it. The
    converter is the preset's own `image_converter.json`; a preset without
    one gets `APMImageConverter(model.image_shape[:2], scaling)` (see
    `load_image_converter`).

    Args:
        preset: an APM preset.
        scaling: the fallback converter's scaling (`"unit"`: `x / 255`,
            `"imagenet"`, `"none"`).
        load_weights: False builds the model with fresh weights.

    Example:
    ```python
    model, converter = load_apm("apm_tiny_digits")
    outputs = model(converter(raw_uint8_images))
    ```
    """
    handle = preset_files.resolve_handle(preset)
    model = APM.from_preset(handle, load_weights=load_weights)
    converter = load_image_converter(
        handle, model.image_shape[:2], scaling=scaling
    )
    return model, converter
