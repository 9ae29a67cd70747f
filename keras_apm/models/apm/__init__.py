from keras_hub.src.utils.preset_utils import register_presets

from keras_apm.models.apm.apm_backbone import APM
from keras_apm.models.apm.apm_image_converter import APMImageConverter
from keras_apm.models.apm.apm_presets import backbone_presets

register_presets(backbone_presets, APM)
