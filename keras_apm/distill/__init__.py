"""Distillation of APM students from keras-hub teachers with `model.fit`."""

from keras_apm.utils.lazy import lazy_exports

_EXPORTS = {
    "DistillCheckpoint": "checkpoint",
    "save_student_preset": "checkpoint",
    "APMDistiller": "distiller",
    "distill": "recipe",
    "DistillRecipe": "recipes",
    "get_recipe": "recipes",
    "default_level_layers": "keras_apm.models.apm.apm_student",
    "default_student_config": "keras_apm.models.apm.apm_student",
    "load_teacher": "keras_apm.models.apm.apm_student",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
