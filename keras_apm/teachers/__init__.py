"""Teacher adapters: frozen keras-hub vision transformers as APM targets.

Every `*_teacher.py` module of this package is imported here; each
registers its teacher class with `@register_teacher`, which is how
`Teacher.from_preset` finds it, and the class is exported from this package
under its own name (`keras_apm.teachers.ViTTeacher`, ...). Adding a teacher
is adding one such module (see CONTRIBUTING.md, "Add a teacher").
"""

import importlib
import pkgutil

import keras_hub

from keras_apm.teachers.teacher import Teacher
from keras_apm.teachers.teacher_presets import vit_presets
from keras_apm.teachers.teacher_registry import register_teacher
from keras_apm.teachers.teacher_registry import registered_teachers
from keras_apm.utils.keras_hub_compat import register_presets

for _module in pkgutil.iter_modules(__path__):
    if _module.name.endswith("_teacher"):
        importlib.import_module(f"{__name__}.{_module.name}")
globals().update({t.__name__: t for t in registered_teachers()})

# Makes the shipped teachers (`vit_tiny_digits`) loadable by name.
register_presets(vit_presets, keras_hub.models.ViTBackbone)

__all__ = ["Teacher", "register_teacher"] + sorted(
    t.__name__ for t in registered_teachers()
)
