"""Distillation losses and metrics, written with `keras.ops` (any backend).

Every function reduces to a float32 scalar, whatever the dtype of its inputs
(a `mixed_bfloat16` student's outputs are upcast first, so the reductions
are not done in bfloat16).
"""

import keras
from keras import ops

from keras_apm.models.apm import apm_outputs
from keras_apm.models.apm.apm_outputs import FEATURES
from keras_apm.models.apm.apm_outputs import GLOBAL
from keras_apm.models.apm.apm_outputs import LEVELS
from keras_apm.models.apm.apm_outputs import RGB
from keras_apm.models.apm.apm_outputs import RGB_SCALINGS  # noqa: F401
from keras_apm.models.apm.apm_outputs import patch_rgb_target  # noqa: F401


def _f32(x):
    return ops.cast(x, "float32")


def mean_squared_error(predictions, targets):
    """Mean over every element of `(predictions - targets) ** 2`.

    Example:
    >>> mean_squared_error(np.ones((2, 3)), np.zeros((2, 3)))  # 1.0
    """
    return ops.mean(ops.square(_f32(predictions) - _f32(targets)))


def cosine_similarity(predictions, targets):
    """Cosine similarity along the last axis, one per vector (float32).

    The one cosine of the package: distillation averages it
    (`mean_cosine`), test-time training's `"cosine"` loss is `1 -` it per
    image. A zero vector has cosine 0 with anything (an epsilon in the norm
    keeps the gradient finite).

    Example:
    >>> cosine_similarity(np.eye(3), np.ones((3, 3)))  # 3 x 0.577
    """
    a = ops.normalize(_f32(predictions), axis=-1, epsilon=1e-12)
    b = ops.normalize(_f32(targets), axis=-1, epsilon=1e-12)
    return ops.sum(a * b, axis=-1)


def mean_cosine(predictions, targets):
    """`cosine_similarity` averaged over all other axes.

    Example:
    >>> mean_cosine(np.eye(3), np.eye(3))  # 1.0
    """
    return ops.mean(cosine_similarity(predictions, targets))


@keras.saving.register_keras_serializable(package="keras_apm")
class HeadDistillation(keras.distillation.DistillationLoss):
    """The distillation term of one output head, from the head table.

    A `keras.distillation.DistillationLoss` whose `teacher_outputs` are the
    batch's targets (the teacher's outputs, cached targets or image targets,
    keyed as the head table says) and whose `student_outputs` are the
    student's outputs: it compares `student_outputs[head]` with
    `teacher_outputs[target]` by the head's loss, `"mse"` (mean over every
    element) or `"cosine"` (`1 - ` the mean cosine along the last axis).
    `fit` logs it as `"{name}_loss"` (and `"{name}_cosine"` for heads whose
    row asks for the cosine).

    Args:
        head: an output name of `apm_outputs` (`"features"`, an added head).
        loss: `"mse"`, `"cosine"`, or None for the head's default.
        level: for the GLOM levels, the level this term compares.

    Example:
    >>> term = HeadDistillation("features")
    >>> term.compute_loss({"grid": grid}, {"features": features})
    """

    def __init__(self, head, loss=None, level=None):
        row = apm_outputs.get_head(head)
        loss = row.loss if loss is None else loss
        if loss not in apm_outputs.HEAD_LOSSES:
            raise ValueError(
                f"The {head!r} head's loss must be one of "
                f"{apm_outputs.HEAD_LOSSES}. Received {loss!r}."
            )
        if row.per_level != (level is not None):
            raise ValueError(
                f"The {head!r} head has "
                + ("one term per level: pass `level=`." if row.per_level else
                   f"no levels. Received level={level!r}.")
            )  # fmt: skip
        self.head = head
        self.target = row.target
        self.loss = loss
        self.level = None if level is None else int(level)
        self.name = row.term_name if level is None else f"level_{level}"
        self.cosine_metric = row.cosine_metric

    def _pair(self, teacher_outputs, student_outputs):
        prediction = student_outputs[self.head]
        target = teacher_outputs[self.target]
        if self.level is not None:
            prediction, target = prediction[:, self.level], target[:, self.level]
        return prediction, target

    def validate_outputs(self, teacher_outputs, student_outputs):
        for what, outputs, key in (
            ("student output", student_outputs, self.head),
            ("target", teacher_outputs, self.target),
        ):
            if key not in outputs:
                raise ValueError(
                    f"The {self.name!r} distillation term needs the {what} "
                    f"{key!r}. Received keys {sorted(outputs)}."
                )

    def compute_terms(self, teacher_outputs, student_outputs):
        """`{"{name}_loss": ..., ["{name}_cosine": ...]}`, float32 scalars."""
        prediction, target = self._pair(teacher_outputs, student_outputs)
        terms = {}
        cosine = None
        if self.loss == "cosine" or self.cosine_metric:
            cosine = mean_cosine(prediction, target)
        if self.loss == "cosine":
            terms[f"{self.name}_loss"] = 1.0 - cosine
        else:
            terms[f"{self.name}_loss"] = mean_squared_error(prediction, target)
        if self.cosine_metric:
            terms[f"{self.name}_cosine"] = cosine
        return terms

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return self.compute_terms(teacher_outputs, student_outputs)[
            f"{self.name}_loss"
        ]

    def get_config(self):
        return {"head": self.head, "loss": self.loss, "level": self.level}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == (
            other.get_config()
        )

    def __hash__(self):
        return hash((type(self), self.name))

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class _OneHeadDistillation(HeadDistillation):
    """A `HeadDistillation` of the fixed head `HEAD`: configured by `loss`."""

    HEAD = None

    def __init__(self, loss=None):
        super().__init__(self.HEAD, loss)

    def get_config(self):
        return {"loss": self.loss}


@keras.saving.register_keras_serializable(package="keras_apm")
class GridDistillation(_OneHeadDistillation):
    """The feature grid against the teacher's `"grid"` (MSE; logs
    `grid_loss` and `grid_cosine`).

    Example:
    >>> APMDistiller(student, teacher, distillation_losses=[GridDistillation()])
    """

    HEAD = FEATURES


@keras.saving.register_keras_serializable(package="keras_apm")
class RGBDistillation(_OneHeadDistillation):
    """The RGB decode against the patch-pooled image (MSE; `rgb_loss`).

    Example:
    >>> RGBDistillation().compute_loss({"rgb": target}, {"rgb": decode})
    """

    HEAD = RGB


@keras.saving.register_keras_serializable(package="keras_apm")
class GlobalDistillation(_OneHeadDistillation):
    """The global vector against the teacher's `"global"`: `1 - cosine`
    (default) or `"mse"`; logs `global_loss` and `global_cosine`.

    Example:
    >>> GlobalDistillation("mse")
    """

    HEAD = GLOBAL


@keras.saving.register_keras_serializable(package="keras_apm")
class LevelDistillation(HeadDistillation):
    """GLOM level `level` against the teacher's level (MSE;
    `level_{level}_loss`).

    Example:
    >>> [LevelDistillation(i) for i in range(student.num_levels)]
    """

    def __init__(self, level, loss=None):
        super().__init__(LEVELS, loss, level=level)

    def get_config(self):
        return {"level": self.level, "loss": self.loss}


_BUILT_IN_TERMS = {
    FEATURES: GridDistillation,
    RGB: RGBDistillation,
    GLOBAL: GlobalDistillation,
}


def head_losses(head, student, loss=None):
    """The distillation terms of one head of `student` (one per level).

    Example:
    >>> head_losses("levels", student)  # [LevelDistillation(0), ...]
    """
    row = apm_outputs.get_head(head)
    if row.per_level:
        return [LevelDistillation(i, loss) for i in range(student.num_levels)]
    if head in _BUILT_IN_TERMS:
        return [_BUILT_IN_TERMS[head](loss)]
    return [HeadDistillation(head, loss)]


def default_losses(student, global_loss=None):
    """One term per head `student` outputs, in table order.

    Example:
    >>> [t.name for t in default_losses(student)]
    ['grid', 'rgb', 'global']
    """
    terms = []
    for row in apm_outputs.heads():
        if row.name in student.output:
            loss = global_loss if row.name == GLOBAL else None
            terms += head_losses(row.name, student, loss)
    return terms


def distillation_terms(outputs, targets, distillation_losses, weights):
    """All loss terms and metrics of one batch.

    Args:
        outputs: the student's outputs.
        targets: the targets, keyed as the terms' `target`.
        distillation_losses: `HeadDistillation` terms.
        weights: one float per term.

    Returns:
        `(total, terms)`: the weighted sum, and a dict of float32 scalars:
        `"{name}_loss"` per term and `"{name}_cosine"` where the head asks.
    """
    total, terms = 0.0, {}
    for term, weight in zip(distillation_losses, weights):
        values = term.compute_terms(targets, outputs)
        terms.update(values)
        total = total + weight * values[f"{term.name}_loss"]
    return total, terms
