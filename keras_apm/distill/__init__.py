"""Distillation of APM students from keras-hub teachers with `model.fit`."""

from keras_apm.distill.checkpoint import DistillCheckpoint
from keras_apm.distill.checkpoint import save_student_preset
from keras_apm.distill.distiller import APMDistiller
from keras_apm.distill.recipe import distill
from keras_apm.models.apm.apm_student import default_level_layers
from keras_apm.models.apm.apm_student import default_student_config
from keras_apm.models.apm.apm_student import load_teacher

__all__ = [
    "APMDistiller",
    "DistillCheckpoint",
    "default_level_layers",
    "default_student_config",
    "distill",
    "load_teacher",
    "save_student_preset",
]
