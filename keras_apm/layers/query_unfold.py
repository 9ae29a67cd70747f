"""The unfold step: one trigger column -> one query per location."""

import keras
from keras import ops

from keras_apm.layers.output_spec import output_spec
from keras_apm.layers.position_encoding import check_code_width
from keras_apm.layers.position_encoding import position_codes


@keras.saving.register_keras_serializable(package="keras_apm")
class QueryUnfold(keras.layers.Layer):
    """Builds the queries `[T ; PE(y, x)]` for a set of locations.

    No location sees another: each query is the image's trigger column next to
    the position code of its own location. This is the direct (memory-hungry)
    form; `PerceptionMLP.split_call` computes the same thing without ever
    materialising the queries.

    Args:
        position_dim: int, the width `d` of the position code (divisible by 4).

    Call args:
        trigger: `(B, n)` trigger columns.
        locations: `(L, 2)` `(y, x)` locations, integer or fractional.

    Returns:
        `(B, L, n + d)` queries.

    Example:
    >>> unfold = QueryUnfold(position_dim=64)
    >>> unfold(np.zeros((2, 64)), grid_locations((8, 8))).shape
    (2, 64, 128)
    """

    def __init__(self, position_dim, **kwargs):
        super().__init__(**kwargs)
        self.position_dim = check_code_width(position_dim, "position_dim")
        self.built = True

    def position_codes(self, locations):
        """The `(L, d)` position codes of `locations`, in the compute dtype."""
        return position_codes(locations, self.position_dim, self.compute_dtype)

    def call(self, trigger, locations):
        trigger = ops.cast(trigger, self.compute_dtype)
        return unfold_queries(trigger, self.position_codes(locations))

    def build(self, trigger_shape=None, locations_shape=None):
        # No weights; named like `call`'s arguments so Keras (and
        # keras-hub's harness) can build it from either shape.
        self.built = True

    def compute_output_spec(self, trigger, locations):
        return output_spec(self, trigger, locations)

    def compute_output_shape(self, trigger_shape, locations_shape):
        width = None if trigger_shape[-1] is None else (
            trigger_shape[-1] + self.position_dim
        )
        return (trigger_shape[0], locations_shape[0], width)

    def get_config(self):
        config = super().get_config()
        config.update({"position_dim": self.position_dim})
        return config


def unfold_queries(trigger, codes):
    """`(B, n)` triggers and `(L, d)` codes -> `(B, L, n + d)` queries `[T ; PE]`.

    Example:
    >>> unfold_queries(np.zeros((2, 64)), np.zeros((16, 32))).shape
    (2, 16, 96)
    """
    batch, num_locations = ops.shape(trigger)[0], ops.shape(codes)[0]
    trigger = ops.broadcast_to(
        trigger[:, None, :], (batch, num_locations, ops.shape(trigger)[-1])
    )
    codes = ops.broadcast_to(codes[None], (batch, num_locations, ops.shape(codes)[-1]))
    return ops.concatenate([trigger, codes], axis=-1)
