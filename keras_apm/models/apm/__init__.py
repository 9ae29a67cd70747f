from keras_apm.models.apm import apm_outputs
from keras_apm.models.apm.apm_backbone import APM
from keras_apm.models.apm.apm_image_classifier import APMImageClassifier
from keras_apm.models.apm.apm_image_classifier_preprocessor import (
    APMImageClassifierPreprocessor,
)
from keras_apm.models.apm.apm_image_converter import APMImageConverter
from keras_apm.models.apm.apm_presets import backbone_presets
from keras_apm.utils.keras_hub_compat import register_presets

register_presets(backbone_presets, APM)
