"""Images in: read a photo, make it a model input, show model-space colours.

scikit-image (for `skimage:NAME` photos) and Pillow (for image files) are
optional dependencies (the `keras-apm[visualize]` extra), imported on use.
"""

import os

import numpy as np
from keras import ops

from keras_apm.utils.optional import require


def to_numpy(x, dtype="float32"):
    """A NumPy array of `x`, whatever the backend's tensor type."""
    return np.asarray(ops.convert_to_numpy(x), dtype)


def load_image(spec):
    """Reads one RGB image as `(H, W, 3)` uint8.

    Args:
        spec: a file path (anything Pillow reads), or `"skimage:NAME"` for a
            photo bundled with scikit-image (`skimage:astronaut`,
            `skimage:chelsea`, `skimage:coffee`, ...; no download).

    Returns:
        `(H, W, 3)` uint8 RGB; grey images are repeated over the channels and
        alpha is dropped.

    Example:
    ```python
    image = load_image("skimage:chelsea")  # (300, 451, 3) uint8
    ```
    """
    spec = os.fspath(spec)
    if spec.startswith("skimage:"):
        name = spec[len("skimage:") :]
        skimage_data = require("skimage.data", extra="visualize")
        if name.startswith("_") or name not in skimage_data.__all__:
            raise ValueError(
                f"scikit-image has no bundled image {name!r}. Expected e.g. "
                "skimage:astronaut, skimage:chelsea or skimage:coffee."
            )
        try:
            image = np.asarray(getattr(skimage_data, name)())
        except Exception as e:  # not an image loader, or needs a download.
            raise ValueError(f"Cannot load skimage:{name}: {e}") from None
    else:
        if not os.path.isfile(spec):
            raise ValueError(
                f"Image file {spec!r} does not exist. Expected a file path or "
                "`skimage:NAME` (e.g. skimage:astronaut)."
            )
        Image = require("PIL.Image", extra="visualize")

        try:
            with Image.open(spec) as f:
                image = np.asarray(f.convert("RGB"))
        except OSError as e:
            raise ValueError(f"Cannot read {spec!r} as an image: {e}") from None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if (
        image.ndim != 3
        or image.shape[-1] not in (3, 4)
        or image.dtype != np.uint8
    ):
        raise ValueError(
            "Expected an RGB image, uint8 of shape (H, W), (H, W, 3) or "
            f"(H, W, 4). {spec!r} is {image.dtype} of shape {image.shape}."
        )
    return image[..., :3]


def prepare_images(images, image_shape, converter=None):
    """Raw RGB images -> a model's inputs, and the same images at its size.

    Args:
        images: list of `(H, W, 3)` images with values in `[0, 255]` (their
            sizes may differ).
        image_shape: the model's `(H, W, C)`.
        converter: the preset's `APMImageConverter`
            (`keras_apm.models.apm.load_image_converter`), or None for a
            bilinear, antialiased resize and a `1 / 255` scaling.

    Returns:
        `(inputs, views)`: `(B, H, W, 3)` float32 model inputs, and the
        images resized to `(H, W)` with values in `[0, 255]`: what a teacher
        is given, so its grid covers exactly what the student sees.

    Example:
    ```python
    inputs, views = prepare_images([load_image("skimage:coffee")],
                                   model.image_shape)
    ```
    """
    from keras_apm.models.apm.apm_image_converter import load_image_converter

    size = (int(image_shape[0]), int(image_shape[1]))
    if converter is None:
        converter = load_image_converter(None, size)
    if converter.image_size is not None and tuple(converter.image_size) != size:
        raise ValueError(
            f"The image converter resizes to {tuple(converter.image_size)} "
            f"but the model takes {size[0]}x{size[1]} images."
        )
    inputs, views = [], []
    for image in images:
        raw = np.asarray(image, "float32")[None]
        if raw.ndim != 4 or raw.shape[-1] != 3:
            raise ValueError(
                f"Expected (H, W, 3) RGB images. Received shape {raw.shape[1:]}."
            )
        views.append(np.clip(to_numpy(converter.resizing(raw)), 0.0, 255.0))
        inputs.append(to_numpy(converter(raw)))
    return np.concatenate(inputs), np.concatenate(views)


def to_display(rgb, converter=None):
    """An RGB head's output as displayable RGB in `[0, 1]`.

    The RGB head predicts patch colours in `[0, 1]` in the channel order of
    the model's inputs (BGR for the official COCO preset; see
    `keras_apm.APMDistiller`): this flips BGR back and clips.

    Args:
        rgb: `(..., 3)` array or tensor.
        converter: the model's `APMImageConverter`, or None (RGB).

    Returns:
        `(..., 3)` float32 RGB in `[0, 1]`.
    """
    x = to_numpy(rgb)
    if converter is not None and converter.channel_order == "bgr":
        x = x[..., ::-1]
    return np.clip(x, 0.0, 1.0)
