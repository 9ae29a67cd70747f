"""Teacher adapters: frozen keras-hub vision transformers as APM targets."""

from keras_apm.teachers.clip_teacher import CLIPTeacher
from keras_apm.teachers.dinov2_teacher import DINOV2Teacher
from keras_apm.teachers.teacher import Teacher
from keras_apm.teachers.vit_teacher import ViTTeacher

__all__ = ["Teacher", "ViTTeacher", "DINOV2Teacher", "CLIPTeacher"]
