"""Image converter of APM presets: resize, scale, channel order."""

import os

import keras
import numpy as np
from keras import ops
from keras_hub.layers import ImageConverter

from keras_apm.utils import preset_files
from keras_apm.models.apm.apm_backbone import APM
from keras_apm.models.apm.apm_preset_saving import save_preset_staged
from keras_apm.utils.keras_hub_compat import in_tf_function

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALINGS = ("minmax", "imagenet", "unit", "none")
CHANNEL_ORDERS = ("rgb", "bgr")


@keras.saving.register_keras_serializable(package="keras_apm")
class APMImageConverter(ImageConverter):
    """Turns raw RGB images (values 0..255) into an APM's input.

    Resizes to `image_size` (no crop by default: the official code resizes
    straight to 448x448), then scales:
    - `"minmax"`: each image to `[0, 1]` by its own min and max (official
      COCO recipe); a constant image becomes zeros;
    - `"imagenet"`: `x / 255` then ImageNet mean/std (official TTT recipe);
    - `"unit"`: `x / 255`; `"none"`: unchanged.
    Finally `channel_order="bgr"` reverses the channels (the official COCO
    model reads images with OpenCV, so its column sees BGR). With
    `"imagenet"` the statistics are applied in RGB order before the flip.

    Works eagerly on every backend and inside `tf.data` pipelines; it is
    saved in and loaded from an APM preset (`image_converter.json`).

    Args:
        image_size: `(height, width)`.
        scaling: one of `"minmax"`, `"imagenet"`, `"unit"`, `"none"`.
        channel_order: `"rgb"` or `"bgr"`.
        crop_to_aspect_ratio, interpolation, antialias: as in
            `keras_hub.layers.ImageConverter`.

    Example:
    ```python
    converter = keras_apm.APMImageConverter((448, 448), scaling="minmax",
                                            channel_order="bgr")
    x = converter(np.random.randint(0, 256, (2, 480, 640, 3)))
    x.shape  # (2, 448, 448, 3)
    ```
    """

    backbone_cls = APM

    def __init__(
        self,
        image_size=None,
        scaling="unit",
        channel_order="rgb",
        crop_to_aspect_ratio=False,
        interpolation="bilinear",
        antialias=False,
        **kwargs,
    ):
        if scaling not in SCALINGS:
            raise ValueError(
                f"`scaling` must be one of {SCALINGS}. Received: {scaling!r}"
            )
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(
                f"`channel_order` must be one of {CHANNEL_ORDERS}. "
                f"Received: {channel_order!r}"
            )
        # Affine scalings go through the parent's scale/offset (fast, and
        # tf.data-safe); minmax needs per-image statistics, done below.
        scale = offset = None
        if scaling == "unit":
            scale = 1.0 / 255.0
        elif scaling == "imagenet":
            scale = [1.0 / (255.0 * s) for s in IMAGENET_STD]
            offset = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
        kwargs.pop("scale", None)
        kwargs.pop("offset", None)
        # An APM reads channels-last images whatever Keras' global
        # `image_data_format` is (see `APM`), so its converter does too:
        # following the global format would hand the default pair
        # (converter, model) transposed images under "channels_first".
        data_format = kwargs.pop("data_format", None)
        if data_format not in (None, "channels_last"):
            raise ValueError(
                "`APMImageConverter` works on channels-last images (H, W, C), "
                "like the APM itself, whatever "
                "`keras.config.image_data_format()` is. Received: "
                f"data_format={data_format!r}"
            )
        super().__init__(
            image_size=image_size, scale=scale, offset=offset,
            crop_to_aspect_ratio=crop_to_aspect_ratio,
            interpolation=interpolation, antialias=antialias,
            data_format="channels_last", **kwargs,
        )  # fmt: skip
        self.scaling = scaling
        self.channel_order = channel_order

    def _call_python(self, inputs):
        _check_channels_last(inputs)
        x = super()._call_python(inputs)
        if self.scaling != "minmax" and self.channel_order == "rgb":
            return x
        if in_tf_function():
            # Inside tf.data / tf.function the tensors are TensorFlow's
            # whatever the Keras backend is.
            import tensorflow as tf

            cast, amin, amax, flip = (
                tf.cast,
                tf.reduce_min,
                tf.reduce_max,
                lambda t: tf.reverse(t, [-1]),
            )
        elif isinstance(x, np.ndarray):
            # Inside a Grain pipeline keras-hub hands back NumPy arrays
            # (Grain pickles them across workers): stay in NumPy.
            cast = lambda t, dtype: np.asarray(t, dtype)  # noqa: E731
            amin, amax = np.min, np.max
            flip = lambda t: np.flip(t, axis=-1)  # noqa: E731
        else:
            cast, amin, amax = ops.cast, ops.min, ops.max
            flip = lambda t: ops.flip(t, axis=-1)  # noqa: E731
        if self.scaling == "minmax" and 0 in tuple(x.shape):
            # A batch of 0 images: nothing to scale (min/max of nothing fail).
            x = cast(x, self.compute_dtype)
        elif self.scaling == "minmax":
            x = cast(x, self.compute_dtype)
            # Per image: reduce over every axis but the batch axis.
            axes = tuple(range(len(x.shape) - 3, len(x.shape)))
            lo = amin(x, axis=axes, keepdims=True)
            hi = amax(x, axis=axes, keepdims=True)
            span = hi - lo
            x = (x - lo) / (span + cast(span <= 0, x.dtype))
        if self.channel_order == "bgr":
            x = flip(x)
        return x

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Loads the image converter of a preset (name, handle or directory).

        A local `image_converter.json` is checked first: invalid JSON, a
        file that is not a layer config or one whose checksum changed raises
        a ValueError naming the file.

        Example:
        >>> converter = keras_apm.APMImageConverter.from_preset("apm_tiny_digits")
        """
        handle = preset_files.resolve_handle(preset)
        if isinstance(handle, str) and os.path.isdir(handle):
            preset_files.check_image_converter_file(handle)
        elif isinstance(handle, str) and preset_files._is_remote(handle):
            preset_files.probe_hub(handle)
        return super().from_preset(preset, **kwargs)

    def save_to_preset(self, preset_dir):
        """Adds `image_converter.json` to a preset, staged and checksummed.

        The preset's other files are kept; the folder is swapped in at once
        (see `keras_apm.APM.save_to_preset`).

        Example:
        >>> converter.save_to_preset("./my_apm")
        """
        return save_preset_staged(preset_dir, super().save_to_preset)

    def get_config(self):
        config = super().get_config()
        config.pop("scale", None)
        config.pop("offset", None)
        config.update(
            {"scaling": self.scaling, "channel_order": self.channel_order}
        )
        return config


def load_image_converter(preset=None, image_size=None, scaling="unit"):
    """The image converter of an APM preset: the one place that finds it.

    TTT, `visualize`, `export` and the demo all take a preset's
    preprocessing from here (the keras-hub Task's preprocessor loads the
    same file). A preset with `image_converter.json` gets its own
    converter; a preset without one (or `preset=None`) gets a plain
    `APMImageConverter(image_size, scaling, antialias=True)`, the fallback
    each caller names (`"unit"`: `x / 255`; the TTT recipe asks for
    `"imagenet"`; `image_size=None` leaves the size alone).

    Args:
        preset: an APM preset (name, handle or directory), or None.
        image_size: `(height, width)` for the fallback converter.
        scaling: the fallback converter's scaling (see `APMImageConverter`).

    Example:
    ```python
    converter = load_image_converter("apm_tiny_digits", (8, 8))
    outputs = model(converter(raw_uint8_images))
    ```
    With the model too: `keras_apm.models.apm.load_apm(preset)`.
    """
    from keras_apm.utils.keras_hub_compat import check_file_exists

    if preset is not None:
        handle = preset_files.resolve_handle(preset)
        if not preset_files._is_remote(handle):
            # Says what a bad directory lacks.
            preset_files.check_local_preset(handle)
        if check_file_exists(handle, preset_files.IMAGE_CONVERTER_FILE):
            return APMImageConverter.from_preset(handle)
    if image_size is not None:
        image_size = (int(image_size[0]), int(image_size[1]))
    return APMImageConverter(image_size, scaling=scaling, antialias=True)


def _check_channels_last(images):
    """Refuses what looks like channels-first images `(..., C, H, W)`.

    Only array-likes with a known static shape are checked: a last axis
    that cannot be channels (not 1, 3 or 4) behind a 1- or 3-long axis.
    """
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) not in (3, 4):
        return
    shape = tuple(shape)
    channels, first = shape[-1], shape[-3]
    if channels is None or first is None:
        return
    if int(channels) not in (1, 3, 4) and int(first) in (1, 3):
        raise ValueError(
            "`APMImageConverter` takes channels-last images (height, width, "
            "channels), whatever `keras.config.image_data_format()` is. "
            f"Received shape {shape}, which looks channels-first: transpose "
            "it, e.g. `np.moveaxis(images, -3, -1)`."
        )
