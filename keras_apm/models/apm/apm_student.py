"""An APM as the student of a teacher: sizing, loading and checking the pair.

The one home of the student/teacher plumbing that distillation
(`keras_apm.distill`), test-time training (`keras_apm.ttt`), the
visualisations, the examples and the CLI share:

- `default_student_config`: an APM config sized from a teacher, with the
  two sizings in use (`"distill"`: regress the teacher's grid; `"ttt"`:
  regress one vector per image).
- `resolve_student`: a student argument (None, a config dict, a JSON file,
  an APM preset or an `APM`) -> an `APM`.
- `load_teacher`: a teacher argument (a preset name, hub handle or
  directory, or a `Teacher`) -> a `Teacher`, optionally with GLOM levels.
- `default_level_layers`: evenly spaced teacher blocks for GLOM levels.
- `check_student_teacher`: whether a teacher's targets fit a student.

It lives next to the APM backbone (`apm_backbone.py`) as keras-hub keeps a
model's pieces together; the teachers themselves are in
`keras_apm.teachers`.

Example:
```python
teacher = load_teacher("vit_tiny_digits", levels=2)
student, _, _ = resolve_student(None, teacher, num_levels=2)
check_student_teacher(student, teacher, num_levels=2)
```
"""

import inspect
import os

import numpy as np

from keras_apm.models.apm.apm_backbone import APM
from keras_apm.teachers import Teacher
from keras_apm.utils.files import read_json
from keras_apm.utils.validation import check_number

SIZINGS = ("distill", "ttt")


def default_student_config(
    teacher,
    sizing="distill",
    feature_dim=None,
    num_levels=1,
    trunk_widths=None,
    rgb_head=None,
    global_head=None,
    image_size=None,
    patch_size=None,
):
    """An APM config whose outputs match what it learns from a teacher.

    The student reads images of the teacher's input size with the
    teacher's patch size, so its `h x w` grid is the teacher's (native)
    grid; `image_size` and `patch_size` override both. The two sizings:

    | | `"distill"` | `"ttt"` |
    | --- | --- | --- |
    | regresses | the teacher's grid (and global) | one vector per image |
    | `feature_dim` | `teacher.feature_dim` | `teacher.global_dim` |
    | trunk | `(4m, 2m, m)`, `m = max(h * w, D)` | `(4n, 2n, n)`, `n = h * w` |
    | RGB head | on, sigmoid | off; the official ReLU when on |
    | global head | when `global_dim == D` | always |

    Distillation's trunk narrows the way the official COCO trunk does
    (4096 -> 1024); test-time training's is the official TTT trunk
    (4096-2048-1024 at `n = 1024`). A fresh distilled RGB head ends in a
    sigmoid rather than the official ReLU (see the comment below).

    Args:
        teacher: a `keras_apm.teachers.Teacher`.
        sizing: `"distill"` or `"ttt"`, see above.
        feature_dim: overrides the feature width `D` (for `"ttt"`: the
            length of the vector regressed, e.g. a classifier's target).
        num_levels: GLOM levels (the teacher needs as many `layers`).
        trunk_widths: overrides the trunk widths.
        rgb_head: bool or None (the sizing's default).
        global_head: bool or None (the sizing's default).
        image_size: `None` or the student's `(H, W)`.
        patch_size: `None` or the student's patch size.

    Example:
    >>> config = default_student_config(teacher)  # 32x32, patch 4, D = 64
    >>> config["trunk_widths"]
    (256, 128, 64)
    >>> default_student_config(teacher, "ttt", feature_dim=12)["feature_dim"]
    12
    """
    if sizing not in SIZINGS:
        raise ValueError(f"`sizing` must be one of {SIZINGS}. Received {sizing!r}.")
    distill = sizing == "distill"
    patch = teacher.patch_size if patch_size is None else patch_size
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)):
        raise ValueError(
            f"The default student needs a square patch; the teacher's is "
            f"{patch}. Pass `patch_size` or build the APM config yourself."
        )
    if distill and teacher.resize_to_grid is not None and (
        image_size is None and patch_size is None
    ):
        raise ValueError(
            "The default student copies the teacher's input size and patch; "
            "a teacher with resize_to_grid needs a hand-built APM config."
        )
    size = tuple(teacher.image_size if image_size is None else image_size)
    h, w = size[0] // int(patch), size[1] // int(patch)
    if feature_dim is None:
        feature_dim = teacher.feature_dim if distill else teacher.global_dim
    d = int(feature_dim)
    if global_head is None:
        global_head = (teacher.global_dim == d and d % 4 == 0) if distill else True
    if global_head and d % 4:
        raise ValueError(
            "The student's global head adds a sine/cosine code of the "
            f"target's width, which must be divisible by 4: {d}. Pass a "
            "student config."
        )
    m = max(h * w, d) if distill else h * w
    return {
        "image_shape": size + (3,),
        "patch_size": int(patch),
        "trunk_widths": tuple(trunk_widths or (4 * m, 2 * m, m)),
        "feature_dim": d,
        # The official position code is as long as the trigger column
        # (h * w); it must be a multiple of 4.
        "position_dim": -(-h * w // 4) * 4,
        "num_levels": int(num_levels),
        "rgb_head": bool(distill if rgb_head is None else rgb_head),
        # The official head ends in a ReLU (kept for converted checkpoints
        # and the official TTT recipe); a fresh distilled student gets a
        # sigmoid, which matches the [0, 1] target and cannot die: with a
        # ReLU the digits head collapsed to 0 in the first epoch (rgb_loss
        # stuck at 0.194 = predicting black), and 3 epochs reached rgb_loss
        # 0.143 vs 0.034 (docs/distillation.md).
        "rgb_activation": "sigmoid" if distill else "relu",
        "global_head": bool(global_head),
        "global_num_heads": next(k for k in (8, 4, 2, 1) if d % k == 0),
    }


def _config_from_json(path):
    if not os.path.isfile(path):
        raise ValueError(f"Student config file {path!r} does not exist.")
    return read_json(
        path, "Student config", "Expected a JSON object of `APM` arguments."
    )


def _model_from_config(config, where):
    # Accept a bare APM config or a `keras.saving.serialize_keras_object`
    # / preset `config.json` ({"class_name": ..., "config": {...}}).
    if isinstance(config, dict):
        config = config.get("config", config)
    if not isinstance(config, dict):
        raise ValueError(f"Expected an APM config dict in {where}. Received {config!r}.")
    # Keras layers swallow unknown keywords: a typo would silently give
    # the default (COCO-sized) APM.
    known = set(inspect.signature(APM.__init__).parameters)
    unknown = sorted(set(config) - known - {"name", "trainable", "dtype"})
    if unknown:
        raise ValueError(
            f"{where} is not an APM config: unknown keys {unknown}. Expected "
            f"`keras_apm.APM` arguments ({sorted(known - {'self', 'kwargs'})})."
        )
    try:
        return APM.from_config(dict(config))
    except TypeError as e:
        raise ValueError(
            f"{where} is not an APM config: {e}. Expected a JSON object of "
            '`keras_apm.APM` arguments, e.g. {"image_shape": [32, 32, 3], '
            '"patch_size": 4, ...}.'
        ) from None


def resolve_student(student, teacher=None, trunk_widths=None, **config):
    """The APM a student argument names: `(model, preset, fresh)`.

    Args:
        student: `None` (an APM sized from `teacher` by
            `default_student_config`), an APM config dict, a path to a
            `.json` file holding one (a bare config or a preset's
            `config.json`), an APM preset (name, handle or directory), or a
            `keras_apm.APM` (used as it is).
        teacher: the `Teacher` a default student is sized from.
        trunk_widths: the default student's trunk widths; refused with a
            given student, which it cannot change.
        **config: other `default_student_config` arguments (`sizing`,
            `feature_dim`, `num_levels`, `rgb_head`, ...) for the default.

    Returns:
        `model`: the `APM`; `preset`: the preset string, or None; `fresh`:
        whether the weights are new (a default or config student: seed
        them), not a preset's or a given model's.

    Example:
    >>> model, preset, fresh = resolve_student("student.json", teacher)
    """
    if student is None:
        if teacher is None:
            raise ValueError(
                "A default student is sized from its teacher: pass a teacher "
                "or a student."
            )
        config = default_student_config(
            teacher, trunk_widths=trunk_widths, **config
        )
        return APM(**config), None, True
    if trunk_widths is not None:
        raise ValueError(
            "`trunk_widths` sizes the default student; it cannot change a "
            f"given one ({student!r}). Pass one or the other."
        )
    if isinstance(student, APM):
        return student, None, False
    if isinstance(student, dict):
        return _model_from_config(student, "The student dict"), None, True
    if isinstance(student, (str, os.PathLike)):
        student = os.fspath(student)
        if student.endswith(".json"):
            config = _config_from_json(student)
            return _model_from_config(config, repr(student)), None, True
        return APM.from_preset(student), student, False
    raise ValueError(
        "`student` must be None (sized from the teacher), an APM config "
        "dict, a JSON file holding one, an APM preset, or a `keras_apm.APM`. "
        f"Received {type(student).__name__}."
    )


def default_level_layers(num_layers, num_levels):
    """`num_levels` evenly spaced block indices of a teacher, ending at -1.

    Example:
    >>> default_level_layers(12, 3)
    (3, 7, 11)
    """
    num_layers, num_levels = int(num_layers), int(num_levels)
    if not 1 <= num_levels <= num_layers:
        raise ValueError(
            f"Cannot pick {num_levels} levels from a teacher with "
            f"{num_layers} transformer layers."
        )
    return tuple(
        round((i + 1) * num_layers / num_levels) - 1 for i in range(num_levels)
    )


def load_teacher(teacher, levels=None, **kwargs):
    """A frozen teacher from a preset, or a given `Teacher` as it is.

    Args:
        teacher: a teacher preset (keras-hub name, hub handle or local
            directory) for `Teacher.from_preset`, or a
            `keras_apm.teachers.Teacher`.
        levels: GLOM levels of a loaded teacher: None or 1 (none), an int
            `L > 1` (`L` evenly spaced blocks ending with the last, see
            `default_level_layers`) or a list of block indices. A given
            `Teacher` keeps its own (`check_student_teacher` says if they
            do not fit).
        **kwargs: `Teacher.from_preset` arguments (`resize_to_grid`,
            `normalize_levels`, `dtype`, ...); for a given `Teacher`, the
            settings to change (`Teacher.with_settings`).

    Example:
    >>> teacher = load_teacher("vit_tiny_digits", levels=2)
    >>> teacher.layer_indices
    (1, 3)
    """
    if isinstance(teacher, Teacher):
        return teacher.with_settings(**kwargs) if kwargs else teacher
    if not isinstance(teacher, (str, os.PathLike)):
        raise ValueError(
            "Expected `teacher` to be a `keras_apm.teachers.Teacher` or a "
            "teacher preset (a keras-hub preset name, hub handle or "
            f"directory). Received {type(teacher).__name__}."
        )
    if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
        check_number(levels, "`levels`", low=1, integer=True)
        levels = None if levels == 1 else int(levels)
    loaded = Teacher.from_preset(os.fspath(teacher), **kwargs)
    if levels is None:
        return loaded
    if isinstance(levels, int):
        # Same backbone, now also returning evenly spaced levels.
        levels = default_level_layers(loaded.num_layers, levels)
    return loaded.with_settings(layers=tuple(int(i) for i in levels))


def check_student_teacher(
    student,
    teacher,
    grid=True,
    global_dim=None,
    num_levels=0,
    global_source="the teacher's global embedding",
):
    """Checks that a teacher's targets fit a student; raises ValueError.

    Args:
        student: a `keras_apm.APM`.
        teacher: a `keras_apm.teachers.Teacher`.
        grid: whether the student regresses the teacher's patch grid (its
            grid size and `feature_dim` must match the teacher's grid).
        global_dim: `None`, or the length of the vector the student's global
            head regresses (`teacher.global_dim` when distilling, a
            classifier's target in test-time training).
        num_levels: how many GLOM levels the student learns from the
            teacher's (0: none); the teacher must give as many (with no
            `layers`, it counts as one).
        global_source: what the global target is, for the message.

    Example:
    >>> check_student_teacher(student, teacher, global_dim=teacher.global_dim)
    """
    d = student.feature_dim
    if grid:
        teacher.check_grid(student.grid_shape)
        if global_dim is not None and global_dim != teacher.feature_dim:
            raise ValueError(
                f"{global_source[0].upper()}{global_source[1:]} has "
                f"{global_dim} values but the teacher's grid "
                f"{teacher.feature_dim} channels: one student feature_dim "
                "cannot regress both. Use a student with global_head=False "
                "(or global_weight=0), or a teacher whose global embedding "
                "is as wide as its grid (in test-time training: "
                "grid_weight=0)."
            )
        if teacher.feature_dim != d:
            raise ValueError(
                f"The teacher's grid has {teacher.feature_dim} channels, the "
                f"student's features {d}. Build the APM with "
                f"feature_dim={teacher.feature_dim}."
            )
    if global_dim is not None and global_dim != d:
        raise ValueError(
            f"{global_source[0].upper()}{global_source[1:]} has {global_dim} "
            f"values, the student's global head gives {d} (its feature_dim). "
            f"Build the APM with feature_dim={global_dim}."
        )
    if num_levels and (teacher.num_levels or 1) != num_levels:
        example = default_level_layers(
            teacher.num_layers, min(num_levels, teacher.num_layers)
        )
        raise ValueError(
            f"The student has {student.num_levels} GLOM levels; the "
            f"teacher gives {teacher.num_levels} (layers="
            f"{teacher.layer_indices}). Build the teacher with `layers=` "
            f"{num_levels} block indices, e.g. {list(example)} (`levels="
            f"{num_levels}` in `distill`), or use a student with as many "
            "levels as the teacher."
        )
