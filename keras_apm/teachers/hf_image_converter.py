"""Hugging Face image preprocessing (`preprocessor_config.json`) in Keras ops.

A Hugging Face checkpoint is trained on what its image processor returns:
resize (to a fixed size, or the shortest edge to a length), centre crop,
rescale, normalise. keras-hub's `ImageConverter` only resizes the whole image
(or its central crop of the output's aspect ratio) and rescales, so a teacher
loaded from Hugging Face uses `HFImageConverter` instead, which follows the
processor step by step:

- resize like `transformers` PIL backend does (`CLIPImageProcessorPil`,
  `ViTImageProcessorPil`, ...: `PIL.Image.resize` on uint8 pixels): PIL's
  resampling filters, computed in PIL's own 22-bit fixed point, one pass
  per axis (in the order the installed Pillow uses), each rounded to uint8,
  so the resized pixels are bit-identical to PIL's;
- centre crop with the processor's offsets (`(size - crop) // 2`);
- `x * rescale_factor`, then `(x - mean) / std`, as `x * scale + offset`.

Raw pixels are read as uint8 (rounded and clipped to [0, 255]), which is what
the processor is given for RGB photos.

Example:
>>> converter = HFImageConverter.from_preprocessor_config({
...     "do_resize": True, "size": {"shortest_edge": 40}, "resample": 3,
...     "do_center_crop": True, "crop_size": {"height": 32, "width": 32},
...     "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
...     "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
>>> converter(np.zeros((2, 50, 60, 3))).shape
(2, 32, 32, 3)
"""

import functools
import math

import keras
import keras_hub
import numpy as np
from keras import ops

# PIL's fixed-point precision for 8-bit images (Resample.c: 32 - 8 - 2).
_PRECISION_BITS = 22

# `preprocessor_config.json` `resample` values (`PIL.Image.Resampling`).
_RESAMPLE_NAMES = {
    0: "nearest",
    1: "lanczos",
    2: "bilinear",
    3: "bicubic",
    4: "box",
    5: "hamming",
}
# Closest keras interpolation (only for the `resizing` attribute keras-hub
# converters carry; the resize itself is PIL's, below).
_KERAS_INTERPOLATION = {
    "lanczos": "lanczos3",
    "bilinear": "bilinear",
    "bicubic": "bicubic",
    "box": "area",
    "hamming": "bilinear",
}


def _box(x):
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _bilinear(x):
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _hamming(x):
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    return math.sin(x) / x * (0.54 + 0.46 * math.cos(x))


def _bicubic(x, a=-0.5):
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x):
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x):
    return _sinc(x) * _sinc(x / 3.0) if -3.0 < x < 3.0 else 0.0


# name -> (filter, support), as in PIL's Resample.c.
_FILTERS = {
    "box": (_box, 0.5),
    "bilinear": (_bilinear, 1.0),
    "hamming": (_hamming, 1.0),
    "bicubic": (_bicubic, 2.0),
    "lanczos": (_lanczos, 3.0),
}


def pil_resample_coefficients(in_size, out_size, resample):
    """PIL's fixed-point resampling taps for one axis.

    Mirrors `precompute_coeffs` and `normalize_coeffs_8bpc` of Pillow's
    `Resample.c`: the filter is widened by the downscale factor (PIL
    antialiases), the taps of each output pixel are normalised to sum to 1
    and rounded to 22-bit fixed point.

    Args:
        in_size: int, input length along the axis.
        out_size: int, output length.
        resample: a filter name (`"bilinear"`, `"bicubic"`, `"lanczos"`,
            `"box"`, `"hamming"`).

    Returns:
        `(indices, weights)`, two `(out_size, taps)` int32 arrays: output
        pixel `i` is `sum_t input[indices[i, t]] * weights[i, t]` in fixed
        point (unused taps have weight 0).

    Example:
    >>> indices, weights = pil_resample_coefficients(4, 2, "bilinear")
    >>> weights.sum(axis=1) == 1 << 22
    array([ True,  True])
    """
    if resample not in _FILTERS:
        raise ValueError(
            f"Expected a resample filter in {sorted(_FILTERS)}. Received "
            f"{resample!r}."
        )
    kernel, support = _FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    # PIL multiplies by the reciprocal (not divides): the taps must round
    # to the same fixed-point values.
    inverse = 1.0 / filterscale
    indices = np.zeros((out_size, taps), "int32")
    weights = np.zeros((out_size, taps), "int64")
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        # C's `(int)` truncates toward zero.
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        values = [
            kernel((x + xmin - center + 0.5) * inverse)
            for x in range(xmax)
        ]
        total = sum(values)
        for x, value in enumerate(values):
            value = value / total if total != 0.0 else value
            fixed = value * (1 << _PRECISION_BITS)
            indices[xx, x] = xmin + x
            weights[xx, x] = int(fixed - 0.5 if value < 0 else fixed + 0.5)
    return indices, weights.astype("int32")


def _resample_axis(pixels, in_size, out_size, resample, axis):
    """One PIL pass along `axis` of int32 uint8-valued pixels."""
    indices, weights = pil_resample_coefficients(in_size, out_size, resample)
    taps = indices.shape[1]
    gathered = ops.take(pixels, indices.reshape(-1), axis=axis)
    shape = list(ops.shape(gathered))
    shape[axis : axis + 1] = [out_size, taps]
    gathered = ops.reshape(gathered, [-1 if s is None else s for s in shape])
    weight_shape = [1] * len(shape)
    weight_shape[axis : axis + 2] = [out_size, taps]
    weights = ops.convert_to_tensor(
        np.reshape(weights, weight_shape), "int32"
    )
    # Exact integer arithmetic, as PIL: the sums stay below 2**31.
    total = ops.sum(gathered * weights, axis=axis + 1)
    total = total + (1 << (_PRECISION_BITS - 1))
    return ops.clip(
        ops.floor_divide(total, 1 << _PRECISION_BITS), 0, 255
    )


def pil_resize(images, size, resample):
    """Resizes `(B, H, W, C)` uint8-valued images as `PIL.Image.resize`.

    Args:
        images: `(B, H, W, C)` tensor with integer values in [0, 255] (any
            dtype); `H` and `W` must be known.
        size: `(height, width)` of the result.
        resample: a filter name, see `pil_resample_coefficients`.

    Returns:
        `(B, height, width, C)` int32 tensor, equal to PIL's uint8 result.
    """
    height, width = int(ops.shape(images)[1]), int(ops.shape(images)[2])
    out_h, out_w = int(size[0]), int(size[1])
    x = ops.cast(images, "int32")
    # PIL skips a pass whose size does not change and rounds to uint8
    # between the two passes, so their order matters.
    passes = [(2, width, out_w), (1, height, out_h)]
    if _vertical_first(height, width, out_h, out_w, resample):
        passes.reverse()
    for axis, in_size, out_size in passes:
        if in_size != out_size:
            x = _resample_axis(x, in_size, out_size, resample, axis=axis)
    return x


def _numpy_pass(x, in_size, out_size, resample, axis):
    indices, weights = pil_resample_coefficients(in_size, out_size, resample)
    x = np.moveaxis(x, axis, -1).astype("int64")
    total = (x[..., indices] * weights).sum(-1) + (1 << (_PRECISION_BITS - 1))
    total = np.clip(total >> _PRECISION_BITS, 0, 255)
    return np.moveaxis(total, -1, axis)


@functools.lru_cache(maxsize=256)
def _vertical_first(height, width, out_h, out_w, resample):
    """Whether the installed Pillow runs the vertical pass first.

    Pillow's documented two-pass resize runs the horizontal pass first, but
    Pillow 13 runs the vertical one first for some size pairs (measured: no
    simple rule of the sizes fits). When both axes change, the order is
    read off Pillow itself on a probe image of the same size, once per
    size pair; without Pillow, horizontal first.
    """
    if out_h == height or out_w == width:
        return False
    try:
        from PIL import Image
    except ImportError:
        return False
    probe = np.random.RandomState(0).randint(0, 256, (height, width))
    probe = probe.astype("uint8")
    filters = {
        "box": Image.Resampling.BOX,
        "bilinear": Image.Resampling.BILINEAR,
        "hamming": Image.Resampling.HAMMING,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }
    reference = np.asarray(
        Image.fromarray(probe).resize((out_w, out_h), filters[resample])
    )
    horizontal = _numpy_pass(
        _numpy_pass(probe, width, out_w, resample, 1),
        height, out_h, resample, 0,
    )
    return not np.array_equal(horizontal, reference)


def _shortest_edge_size(height, width, shortest_edge):
    """`transformers.image_transforms.get_resize_output_image_size`."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    if width <= height:
        return new_long, new_short
    return new_short, new_long


def _size_pair(size, name):
    if size is None:
        return None
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return (int(size["height"]), int(size["width"]))
        if set(size) == {"shortest_edge"}:
            return None
        raise ValueError(
            f"Expected `{name}` to hold 'height' and 'width' (or only "
            f"'shortest_edge'). Received {size!r}."
        )
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    return (int(size[0]), int(size[1]))


@keras.saving.register_keras_serializable(package="keras_apm")
class HFImageConverter(keras_hub.layers.ImageConverter):
    """Raw RGB pixels -> the pixels a Hugging Face image processor returns.

    A keras-hub `ImageConverter` (it carries `scale`, `offset` and a
    `resizing` layer like keras-hub's own, so `Teacher` reads it the same
    way) whose call follows the Hugging Face PIL-backend processor exactly;
    see the module docstring. Outputs are channels-last float32.

    Args:
        image_size: `(height, width)` of the output (the crop size, or the
            resize size without a crop).
        resize_size: `None` (no resize), `(height, width)`, or an int: the
            shortest edge (the long edge scales as in `transformers`).
        crop_size: `None` (no crop) or the centre crop's `(height, width)`.
        resample: PIL filter name: `"bilinear"`, `"bicubic"`, `"lanczos"`,
            `"box"` or `"hamming"`.
        scale, offset: `x * scale + offset` after the crop (per channel).
        **kwargs: base `ImageConverter` arguments.
    """

    def __init__(
        self,
        image_size=None,
        resize_size=None,
        crop_size=None,
        resample="bilinear",
        scale=None,
        offset=None,
        **kwargs,
    ):
        for key in (
            "interpolation",
            "antialias",
            "crop_to_aspect_ratio",
            "pad_to_aspect_ratio",
        ):
            kwargs.pop(key, None)
        if resample not in _FILTERS:
            raise ValueError(
                "Hugging Face `resample` must be one of PIL's "
                f"{sorted(_FILTERS)} filters for a keras_apm teacher. "
                f"Received {resample!r}."
            )
        super().__init__(
            image_size=image_size,
            scale=scale,
            offset=offset,
            interpolation=_KERAS_INTERPOLATION[resample],
            antialias=True,
            crop_to_aspect_ratio=False,
            **kwargs,
        )
        if isinstance(resize_size, (list, tuple)):
            resize_size = (int(resize_size[0]), int(resize_size[1]))
        self.resize_size = resize_size
        self.crop_size = None if crop_size is None else (
            int(crop_size[0]), int(crop_size[1])
        )
        self.resample = resample

    @classmethod
    def from_preprocessor_config(cls, config):
        """Builds the converter from a `preprocessor_config.json` dict."""
        resize_size = None
        if config.get("do_resize", True):
            size = config.get("size")
            if isinstance(size, dict) and set(size) == {"shortest_edge"}:
                resize_size = int(size["shortest_edge"])
            elif isinstance(size, dict) and "shortest_edge" in size:
                raise ValueError(
                    "keras_apm reads `size` as {'height', 'width'} or "
                    "{'shortest_edge'} in preprocessor_config.json. "
                    f"Received {size!r}."
                )
            else:
                resize_size = _size_pair(size, "size")
        crop_size = None
        if config.get("do_center_crop", False):
            crop_size = _size_pair(config.get("crop_size"), "crop_size")
        resample = _RESAMPLE_NAMES.get(config.get("resample", 2))
        if resample == "nearest" or resample is None:
            raise ValueError(
                "keras_apm teachers resize with PIL's antialiased filters; "
                "preprocessor_config.json asks for `resample` "
                f"{config.get('resample')!r}. Set `resample` to 1 (lanczos), "
                "2 (bilinear), 3 (bicubic), 4 (box) or 5 (hamming)."
            )
        factor = 1.0
        if config.get("do_rescale", True):
            factor = float(config.get("rescale_factor", 1 / 255))
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if config.get("do_normalize", True):
            mean = _channels(config.get("image_mean"), "image_mean")
            std = _channels(config.get("image_std"), "image_std")
        scale = [factor / s for s in std]
        offset = [-m / s for m, s in zip(mean, std)]
        if crop_size is not None:
            image_size = crop_size
        elif isinstance(resize_size, tuple):
            image_size = resize_size
        else:
            raise ValueError(
                "A shortest-edge resize without a centre crop gives images of "
                "varying shape, which a teacher cannot take. Expected "
                "`do_center_crop` with a `crop_size` in "
                "preprocessor_config.json."
            )
        return cls(
            image_size=image_size,
            resize_size=resize_size,
            crop_size=crop_size,
            resample=resample,
            scale=scale,
            offset=offset,
        )

    def _resize_shape(self, height, width):
        if self.resize_size is None:
            return height, width
        if isinstance(self.resize_size, tuple):
            return self.resize_size
        return _shortest_edge_size(height, width, self.resize_size)

    def _call_python(self, inputs):
        x = ops.convert_to_tensor(inputs)
        if len(x.shape) != 4 or x.shape[1] is None or x.shape[2] is None:
            raise ValueError(
                "Hugging Face preprocessing needs a batch of images of known "
                "height and width, shape (batch, height, width, 3). Received "
                f"shape {tuple(x.shape)}."
            )
        height, width = int(x.shape[1]), int(x.shape[2])
        # The processor is given uint8 RGB pixels.
        x = ops.clip(ops.round(ops.cast(x, "float32")), 0, 255)
        new_h, new_w = self._resize_shape(height, width)
        if (new_h, new_w) != (height, width):
            x = pil_resize(x, (new_h, new_w), self.resample)
        if self.crop_size is not None:
            crop_h, crop_w = self.crop_size
            if crop_h > new_h or crop_w > new_w:
                raise ValueError(
                    f"The centre crop {crop_h}x{crop_w} of "
                    "preprocessor_config.json is larger than the resized "
                    f"image {new_h}x{new_w} (input {height}x{width})."
                )
            top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
            x = x[:, top : top + crop_h, left : left + crop_w, :]
        x = ops.cast(x, "float32")
        if self.scale is not None:
            x = x * ops.reshape(ops.convert_to_tensor(self.scale, "float32"),
                                (1, 1, 1, -1))
        if self.offset is not None:
            x = x + ops.reshape(
                ops.convert_to_tensor(self.offset, "float32"), (1, 1, 1, -1)
            )
        return x

    def call(self, inputs):
        return self._call_python(inputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "resize_size": self.resize_size,
                "crop_size": self.crop_size,
                "resample": self.resample,
            }
        )
        return config


def _channels(value, name):
    values = np.asarray(value, "float64").reshape(-1)
    if values.size == 1:
        values = np.repeat(values, 3)
    if values.shape != (3,):
        raise ValueError(
            f"Expected `{name}` in preprocessor_config.json to be one number "
            f"or 3 (RGB). Received {value!r}."
        )
    return tuple(float(v) for v in values)
