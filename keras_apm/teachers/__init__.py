"""Teacher adapters: frozen keras-hub vision transformers as APM targets."""

import keras_hub

from keras_apm.teachers.clip_teacher import CLIPTeacher
from keras_apm.teachers.dinov2_teacher import DINOV2Teacher
from keras_apm.teachers.teacher import Teacher
from keras_apm.teachers.teacher_presets import vit_presets
from keras_apm.teachers.vit_teacher import ViTTeacher
from keras_apm.utils.keras_hub_compat import register_presets

# Makes the shipped teachers (`vit_tiny_digits`) loadable by name.
register_presets(vit_presets, keras_hub.models.ViTBackbone)

__all__ = ["Teacher", "ViTTeacher", "DINOV2Teacher", "CLIPTeacher"]
