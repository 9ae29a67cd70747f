"""The APM backbone, its image converter and presets (keras-hub layout)."""

from keras_apm.utils.lazy import lazy_exports

_EXPORTS = {
    "APM": "apm_backbone",
    "APMImageConverter": "apm_image_converter",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
