"""The fixed 2-D sine/cosine position code of the official APM."""

import functools

import keras
import numpy as np
from keras import ops

from keras_apm.layers.output_spec import output_spec


def grid_locations(grid_shape):
    """Integer `(y, x)` locations of an `(h, w)` grid, row-major.

    Args:
        grid_shape: `(h, w)` tuple of ints.

    Returns:
        A float32 tensor of shape `(h * w, 2)`; row `y * w + x` is `(y, x)`.

    Example:
    >>> grid_locations((2, 3))[4]  # (y=1, x=1)
    """
    h, w = int(grid_shape[0]), int(grid_shape[1])
    ys = ops.repeat(ops.arange(h, dtype="float32"), w)
    xs = ops.tile(ops.arange(w, dtype="float32"), [h])
    return ops.stack([ys, xs], axis=-1)


def sincos_position_encoding_2d(locations, dim):
    """Evaluates the official 2-D sinusoidal code at `(y, x)` locations.

    With `e = dim / 2` and `r_k = 10000 ** (-2k / e)` for `k < e / 2`, channel
    `2k` is `sin(x r_k)`, `2k + 1` is `cos(x r_k)`, `e + 2k` is `sin(y r_k)` and
    `e + 2k + 1` is `cos(y r_k)`. Locations may be fractional, which is what
    makes APM's field continuous.

    Args:
        locations: float tensor `(..., 2)` of `(y, x)` in grid units.
        dim: int, the code width; must be divisible by 4.

    Returns:
        A float32 tensor `(..., dim)`.

    Example:
    >>> codes = sincos_position_encoding_2d(grid_locations((32, 32)), 1024)
    """
    dim = check_code_width(dim)
    # Computed in float32 whatever the dtype policy: bf16 would round the
    # phase of high-frequency channels badly for grids of 32 and more.
    return _sincos(ops.cast(locations, "float32"), dim, ops)


@functools.lru_cache(maxsize=64)
def grid_position_codes(grid_shape, dim):
    """`sincos_position_encoding_2d(grid_locations(grid_shape), dim)`, once.

    The code of a whole grid never changes; eager backends (PyTorch) would
    recompute it on every call (about 5% of a TTT-sized step on a CPU), so
    it is computed once per `(grid_shape, dim)` with NumPy (the same
    formula) and kept as a read-only float32 array.

    Example:
    >>> grid_position_codes((32, 32), 1024).shape
    (1024, 1024)
    """
    h, w = int(grid_shape[0]), int(grid_shape[1])
    ys, xs = np.divmod(np.arange(h * w), w)
    locations = np.stack([ys, xs], axis=-1).astype("float32")
    codes = _sincos(locations, check_code_width(dim), np).astype("float32")
    codes.flags.writeable = False
    return codes


def _sincos(locations, dim, xp):
    """The formula, in `xp` (`keras.ops` or `numpy`: the same names)."""
    half = dim // 2
    rates = xp.power(
        np.float32(10000.0),
        np.float32(-2.0) * xp.arange(half // 2, dtype="float32") / np.float32(half),
    )
    y = locations[..., 0:1] * rates
    x = locations[..., 1:2] * rates

    def interleave(angles):
        # (..., half/2) sin and cos -> (..., half) as sin, cos, sin, cos ...
        pairs = xp.stack([xp.sin(angles), xp.cos(angles)], axis=-1)
        return xp.reshape(pairs, tuple(xp.shape(angles)[:-1]) + (half,))

    return xp.concatenate([interleave(x), interleave(y)], axis=-1)


def check_code_width(dim, name="dim"):
    """`dim` as an int, or a ValueError unless it is divisible by 4."""
    if int(dim) != dim or int(dim) < 4 or int(dim) % 4:
        raise ValueError(
            "The 2-D sine/cosine position code needs a width divisible by 4. "
            f"Received: {name}={dim}"
        )
    return int(dim)


def position_codes(locations, dim, dtype):
    """`sincos_position_encoding_2d` cast to `dtype` (a layer's compute dtype)."""
    return ops.cast(sincos_position_encoding_2d(locations, dim), dtype)


@keras.saving.register_keras_serializable(package="keras_apm")
class SinCosPositionEncoding2D(keras.layers.Layer):
    """Layer form of `sincos_position_encoding_2d` (no weights).

    Args:
        dim: int, the code width, divisible by 4.

    Example:
    >>> layer = SinCosPositionEncoding2D(64)
    >>> layer(grid_locations((8, 8))).shape
    (64, 64)
    """

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = check_code_width(dim)
        self.built = True

    def call(self, locations):
        return position_codes(locations, self.dim, self.compute_dtype)

    def compute_output_spec(self, locations):
        return output_spec(self, locations)

    def compute_output_shape(self, locations_shape):
        return tuple(locations_shape[:-1]) + (self.dim,)

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim})
        return config
