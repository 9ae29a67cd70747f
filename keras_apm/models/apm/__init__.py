"""The APM backbone, its image converter and presets (keras-hub layout)."""

from keras_apm.utils.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    """
    apm_backbone: APM
    apm_image_converter: APMImageConverter
""",
)
