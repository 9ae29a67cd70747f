"""Helpers shared by the teacher adapters: preset probing and argument checks.

The normalisation constants below are the ones keras-hub's own checkpoint
conversion scripts write into the presets' `image_converter.json`
(`scale = 1 / 255 / std`, `offset = -mean / std`); they are only used when a
backbone comes without an image converter.
"""

from typing import NamedTuple

import numpy as np

# ImageNet statistics (DINOv2 presets).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP statistics (CLIP presets).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Google ViT statistics (ViT presets): maps [0, 255] to [-1, 1].
VIT_MEAN = (0.5, 0.5, 0.5)
VIT_STD = (0.5, 0.5, 0.5)


class Preprocessing(NamedTuple):
    """Per-channel `mean`, `std` (of [0, 1] images) and the resize method."""

    mean: tuple
    std: tuple
    interpolation: str


# What each family's keras-hub presets do (a teacher's default).
VIT_PREPROCESSING = Preprocessing(VIT_MEAN, VIT_STD, "bilinear")
DINOV2_PREPROCESSING = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, "bicubic")
CLIP_PREPROCESSING = Preprocessing(CLIP_MEAN, CLIP_STD, "bicubic")

IMAGE_CONVERTER_CONFIG_FILE = "image_converter.json"
TASK_CONFIG_FILE = "task.json"


def mean_std_to_scale_offset(mean, std):
    """Turns per-channel mean/std (of [0, 1] images) into scale/offset.

    keras-hub's `ImageConverter` computes `x * scale + offset` on [0, 255]
    pixels, so `scale = 1 / 255 / std` and `offset = -mean / std`.

    Example:
    >>> scale, offset = mean_std_to_scale_offset((0.5,) * 3, (0.5,) * 3)
    >>> [round(s * 127.5, 6) for s in scale], offset
    ([1.0, 1.0, 1.0], [-1.0, -1.0, -1.0])
    """
    scale = [1.0 / 255.0 / s for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    return scale, offset


def normalization_values(value, name):
    """Checks a converter `scale`/`offset`: None, a number or 3 numbers.

    Returns `None`, a Python float or a float32 NumPy array of shape `(3,)`.
    """
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not (
        isinstance(value, bool)
    ):
        return float(value)
    array = np.asarray(value, dtype="float64")
    if array.ndim == 0:
        return float(array)
    if array.shape != (3,) or not np.all(np.isfinite(array)):
        raise ValueError(
            f"Expected the image converter's `{name}` to be None, a number "
            f"or 3 finite per-channel numbers (RGB). Received {value!r}."
        )
    return array.astype("float32")


def normalize_grid_shape(value, name):
    """Checks an `(h, w)` pair of positive ints; `None` passes through."""
    if value is None:
        return None
    try:
        pair = tuple(value)
    except TypeError:
        pair = None
    if (
        pair is None
        or len(pair) != 2
        or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            for v in pair
        )
        or min(pair) < 1
    ):
        raise ValueError(
            f"Expected `{name}` to be a pair of positive ints (height, "
            f"width). Received {value!r}."
        )
    return (int(pair[0]), int(pair[1]))


def normalize_layer_indices(indices, num_layers):
    """Checks transformer-block indices and makes negative ones positive.

    Index `i` names the output of block `i` (0-based); `-1` is the last block.

    Example:
    >>> normalize_layer_indices([0, -1], num_layers=12)
    (0, 11)
    """
    if indices is None:
        return None
    if isinstance(indices, (int, np.integer)) and not isinstance(
        indices, bool
    ):
        indices = [indices]
    try:
        indices = list(indices)
    except TypeError:
        raise ValueError(
            "Expected `layers` to be None or a list of transformer-layer "
            f"indices (ints). Received {indices!r}."
        )
    if not indices:
        raise ValueError(
            "Expected `layers` to name at least one transformer layer, or to "
            "be None. Received an empty list."
        )
    result = []
    for index in indices:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise ValueError(
                "Expected `layers` to hold ints (transformer-layer indices). "
                f"Received {index!r} of type {type(index).__name__} in "
                f"{indices!r}."
            )
        if not -num_layers <= index < num_layers:
            raise ValueError(
                f"Layer index {index} is out of range: this teacher has "
                f"{num_layers} transformer layers, so indices must lie in "
                f"[{-num_layers}, {num_layers - 1}]. Received layers="
                f"{indices!r}."
            )
        result.append(int(index) % num_layers)
    return tuple(result)


def as_pair(value):
    """`p` or `(ph, pw)` -> `(ph, pw)` ints."""
    if isinstance(value, (int, np.integer)):
        return (int(value), int(value))
    return (int(value[0]), int(value[1]))


def _preset_utils():
    # keras-hub's public API has no "does this preset hold file X" call; the
    # loader functions `from_preset` uses internally come through one module.
    from keras_apm.utils import keras_hub_compat

    return keras_hub_compat


def _check_preset(preset):
    if not isinstance(preset, str):
        raise ValueError(
            "Expected `preset` to be a string: a keras-hub preset name, a "
            f"hub handle or a local directory. Received {preset!r}."
        )


def preset_backbone_class(preset):
    """The backbone class a preset holds (what `Backbone.from_preset` reads).

    Works for keras-hub presets and for the hub formats keras-hub converts
    (Hugging Face transformers, timm), without loading any weights.
    """
    _check_preset(preset)
    return _preset_utils().get_preset_loader(preset).check_backbone_class()


def preset_task_class(preset):
    """The task class saved in a preset's `task.json`, or `None`."""
    utils = _preset_utils()
    _check_preset(preset)
    if not utils.check_file_exists(preset, TASK_CONFIG_FILE):
        return None
    config = utils.load_json(preset, TASK_CONFIG_FILE)
    try:
        return utils.check_config_class(config)
    except ValueError:
        return None


def load_preset_image_converter(preset):
    """Loads a keras-hub preset's own image converter, or `None` if it has none.

    (The teacher's; an APM student's is
    `keras_apm.models.apm.load_image_converter`.)

    Uses `keras_hub.layers.ImageConverter.from_preset`. That call refuses
    presets whose backbone class has no registered converter subclass (a bare
    `CLIPVisionEncoder` preset, say) even when the preset holds an
    `image_converter.json`; those are read with the same preset loader.
    """
    import keras_hub

    utils = _preset_utils()
    loader = utils.get_preset_loader(preset)
    if isinstance(loader, utils.KerasPresetLoader) and not (
        utils.check_file_exists(preset, IMAGE_CONVERTER_CONFIG_FILE)
    ):
        return None
    try:
        return keras_hub.layers.ImageConverter.from_preset(preset)
    except FileNotFoundError:
        return None
    except ValueError as error:
        if "Unable to find a subclass" not in str(error):
            raise
    return loader.load_image_converter(keras_hub.layers.ImageConverter)
