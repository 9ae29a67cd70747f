"""The asynchronous part: evaluate the shared MLP at any set of locations."""

import keras
from keras import ops

from keras_apm.layers.perception_mlp import PerceptionMLP
from keras_apm.layers.position_encoding import grid_position_codes
from keras_apm.layers.position_encoding import sincos_position_encoding_2d
from keras_apm.layers.query_unfold import QueryUnfold
from keras_apm.layers.query_unfold import unfold_queries


@keras.saving.register_keras_serializable(package="keras_apm")
class PerceptionField(keras.layers.Layer):
    """Answers the queries of a set of locations, `chunk_size` at a time.

    Each location's answer depends only on the trigger column and its own
    `(y, x)`, so the locations can be evaluated in any order and in chunks of
    any size; the results do not change (up to float rounding). With
    `chunk_size=None` all locations go through the MLP in one call, with no
    Python loop, which is the fast path on accelerators.

    Args:
        grid_shape: `(h, w)`, the patch grid the default call evaluates.
        position_dim: int, width of the position code.
        mlp: a `PerceptionMLP` (or its config dict).
        chunk_size: int or None, locations per MLP call.
        fast_path: bool. If True, use `PerceptionMLP.split_call` (exact
            algebra: the trigger column's share of the first layer is
            computed once per image); if False, build the queries.

    Call args:
        trigger: `(B, n)` trigger columns.
        locations: optional `(L, 2)` `(y, x)` locations; default: the grid.
        chunk_size: optional override of the layer's `chunk_size`.

    Returns:
        dict with `"features"` `(B, L, D)`, `"rgb"` `(B, L, 3)` if the MLP has
        an RGB head and `"levels"` `(B, L, num_levels, D)` if it has several.
    """

    def __init__(
        self,
        grid_shape,
        position_dim,
        mlp,
        chunk_size=None,
        fast_path=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.grid_shape = (int(grid_shape[0]), int(grid_shape[1]))
        self.position_dim = int(position_dim)
        if isinstance(mlp, dict):
            mlp = keras.saving.deserialize_keras_object(mlp)
        self.mlp = mlp
        self.chunk_size = _check_chunk_size(chunk_size)
        self.fast_path = bool(fast_path)
        # Kept (no weights) so the layer tree of saved APMs stays the same;
        # the math uses `unfold_queries` in the compute dtype of the call.
        self.unfold = QueryUnfold(
            self.position_dim, dtype=self.dtype_policy, name="unfold"
        )

    def build(self, trigger_shape):
        # A prebuilt MLP (passed in, or shared) keeps its weights: building
        # it again would add a second set of variables.
        if not self.mlp.built:
            self.mlp.build((None, trigger_shape[-1] + self.position_dim))
        self.built = True

    def explicit_weights(self, outputs=None):
        """The MLP's weights (`PerceptionMLP.explicit_weights`)."""
        return self.mlp.explicit_weights(outputs)

    def call_with_weights(self, weights, trigger, locations=None, chunk_size="default"):
        """`call` from explicit weights: the MLP's, or one set per image.

        Computes in the dtype of `trigger`; see
        `PerceptionMLP.call_with_weights` for the weights.
        """
        # float32 codes (cached for the grid), cast once per chunk below.
        if locations is None:
            codes = grid_position_codes(tuple(self.grid_shape), self.position_dim)
        else:
            codes = sincos_position_encoding_2d(locations, self.position_dim)
        chunk_size = (
            self.chunk_size
            if chunk_size == "default"
            else _check_chunk_size(chunk_size)
        )
        num_locations = codes.shape[0]
        if chunk_size is None or num_locations <= chunk_size:
            return self._evaluate(weights, trigger, codes)
        # The asynchronous evaluation: independent chunks of locations.
        pieces = [
            self._evaluate(weights, trigger, codes[start : start + chunk_size])
            for start in range(0, num_locations, chunk_size)
        ]
        return {
            key: ops.concatenate([piece[key] for piece in pieces], axis=1)
            for key in pieces[0]
        }

    def _evaluate(self, weights, trigger, codes):
        codes = ops.cast(codes, trigger.dtype)
        if self.fast_path:
            return self.mlp.split_call_with_weights(weights, trigger, codes)
        return self.mlp.call_with_weights(weights, unfold_queries(trigger, codes))

    def call(self, trigger, locations=None, chunk_size="default"):
        # Keras autocasts float inputs only: an integer trigger would cast
        # the weights to integers (all-zero answers) on every backend.
        trigger = ops.convert_to_tensor(trigger)
        if not keras.backend.is_float_dtype(trigger.dtype):
            trigger = ops.cast(trigger, self.compute_dtype)
        return self.call_with_weights(
            self.explicit_weights(), trigger, locations, chunk_size
        )

    def compute_output_spec(self, trigger, locations=None, chunk_size="default"):
        # Written out rather than traced: the torch backend traces a layer
        # by running it on real zeros, which for the COCO-sized MLP costs a
        # full forward pass (over a minute on a CPU) every time an APM is
        # built.
        if locations is None:
            num_locations = self.grid_shape[0] * self.grid_shape[1]
        else:
            num_locations = locations.shape[0]
        batch = trigger.shape[0]
        dtype = self.mlp.compute_dtype
        return {
            key: keras.KerasTensor((batch, num_locations, *tail), dtype=dtype)
            for key, tail in self.mlp.output_shapes().items()
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "grid_shape": self.grid_shape,
                "position_dim": self.position_dim,
                "mlp": keras.saving.serialize_keras_object(self.mlp),
                "chunk_size": self.chunk_size,
                "fast_path": self.fast_path,
            }
        )
        return config


def _check_chunk_size(chunk_size):
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or (
        chunk_size < 1
    ):
        raise ValueError(
            "`chunk_size` must be a positive integer or None (all locations "
            f"in one call). Received: chunk_size={chunk_size!r}"
        )
    return int(chunk_size)
