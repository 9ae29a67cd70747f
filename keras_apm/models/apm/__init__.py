"""The APM backbone, its image converter, Tasks and presets (keras-hub layout)."""

from keras_apm.utils.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    """
    apm_backbone: APM
    apm_loader: load_apm
    apm_image_converter: APMImageConverter load_image_converter
    apm_image_classifier: APMImageClassifier
    apm_image_classifier_preprocessor: APMImageClassifierPreprocessor
""",
)
