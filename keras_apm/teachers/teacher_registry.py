"""Which `Teacher` subclass adapts which keras-hub model class.

Each teacher module registers its class with `@register_teacher`, which
files it under every keras-hub class in its `backbone_classes`.
`Teacher.from_preset` reads the model class a preset holds (as keras-hub's
own `Backbone.from_preset` does, from the preset's saved config) and looks
the teacher up here, walking the class's MRO so that a subclass of a
supported keras-hub model is adapted too. This module imports no teacher:
the teachers import it, and `keras_apm.teachers` imports every
`*_teacher.py` module, so the dispatch sits above the subclasses and no
module imports one that imports it back.

Example:
>>> teacher_class_for(keras_hub.models.ViTImageClassifier).__name__
'ViTTeacher'
"""

# keras-hub model class -> the Teacher subclass that adapts it.
_TEACHERS = {}


def _qualified_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def register_teacher(teacher_cls):
    """Class decorator: makes `Teacher.from_preset` pick `teacher_cls`.

    The class lists the keras-hub classes it adapts in `backbone_classes`.
    Registering a second class for a keras-hub class that another teacher
    already adapts is refused (re-registering the same class, e.g. when its
    module is reloaded, is not).

    Example:
    ```python
    @register_teacher
    class DeiTTeacher(Teacher):
        backbone_classes = (keras_hub.models.DeiTBackbone,)
        ...
    ```
    """
    model_classes = tuple(getattr(teacher_cls, "backbone_classes", ()) or ())
    if not model_classes:
        raise ValueError(
            f"`{teacher_cls.__name__}` must list the keras-hub classes it "
            "adapts in `backbone_classes` before it is registered. Received "
            "none."
        )
    for model_cls in model_classes:
        known = _TEACHERS.get(model_cls)
        if known is not None and (
            _qualified_name(known) != _qualified_name(teacher_cls)
        ):
            raise ValueError(
                f"`{model_cls.__name__}` is already adapted by "
                f"`{known.__name__}`; cannot register `{teacher_cls.__name__}`"
                " for it too. Subclass the registered teacher and build it "
                "directly."
            )
    for model_cls in model_classes:
        _TEACHERS[model_cls] = teacher_cls
    return teacher_cls


def teacher_class_for(model_cls):
    """The registered teacher for a keras-hub class (or a subclass), or None."""
    for cls in getattr(model_cls, "__mro__", ()):
        if cls in _TEACHERS:
            return _TEACHERS[cls]
    return None


def registered_teachers():
    """The registered teacher classes, in registration order."""
    return list(dict.fromkeys(_TEACHERS.values()))


def supported_model_names(teacher_classes=None):
    """Sorted names of the keras-hub classes the given teachers adapt."""
    teacher_classes = teacher_classes or registered_teachers()
    return sorted(
        {c.__name__ for t in teacher_classes for c in t.backbone_classes}
    )
