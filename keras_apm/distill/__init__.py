"""Distillation of APM students from keras-hub teachers with `model.fit`."""

from keras_apm.utils.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    """
    checkpoint: DistillCheckpoint save_student_preset
    distiller: APMDistiller
    recipe_runner: distill
    recipes: DistillRecipe get_recipe
    keras_apm.models.apm.apm_student: default_level_layers load_teacher
    keras_apm.models.apm.apm_student: default_student_config
""",
)
