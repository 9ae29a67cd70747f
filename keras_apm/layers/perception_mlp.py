"""The shared perception MLP that answers every location's query."""

import keras
from keras import ops

from keras_apm.layers.explicit_weights import dense
from keras_apm.layers.explicit_weights import dense_weights
from keras_apm.layers.explicit_weights import split_dense
from keras_apm.layers.initializers import fresh_initializer


@keras.saving.register_keras_serializable(package="keras_apm")
class PerceptionMLP(keras.layers.Layer):
    """One MLP shared by all locations: query -> feature (and RGB).

    Trunk: `Dense + activation` for each width in `trunk_widths`. Feature head:
    a linear `Dense(feature_dim)` (one per GLOM level when `num_levels > 1`;
    the last is the top level, `"features"`). RGB head: fed with
    `[feature ; query]`, `Dense + ReLU` for each of `rgb_widths`, then
    `Dense(3)` with `rgb_activation` (the official head ends with a ReLU).

    `call(queries)` is the direct form. `split_call(trigger, codes)` gives the
    same numbers without building the queries: the query is `[T ; PE]` and `T`
    is the same at every location, so the first trunk layer (and the `T` part
    of the RGB head) is one product per image plus one per location. Both
    compute from explicit weights (`call_with_weights`,
    `split_call_with_weights`), the MLP's own or one set per image.

    Args:
        trunk_widths: tuple of ints, hidden widths of the trunk.
        feature_dim: int, width `D` of the feature head(s).
        num_levels: int, number of feature heads (GLOM levels).
        rgb_head: bool, whether the RGB head exists.
        rgb_widths: tuple of ints, hidden widths of the RGB head.
        rgb_activation: activation of the RGB output (official: `"relu"`).
        activation: trunk activation (official: `"relu"`).
        kernel_initializer, bias_initializer: Keras initializers.

    Example:
    >>> mlp = PerceptionMLP(trunk_widths=(256, 128), feature_dim=64)
    >>> out = mlp(np.zeros((2, 16, 128), "float32"))
    >>> out["features"].shape, out["rgb"].shape
    ((2, 16, 64), (2, 16, 3))
    """

    def __init__(
        self,
        trunk_widths,
        feature_dim,
        num_levels=1,
        rgb_head=True,
        rgb_widths=(256, 256),
        rgb_activation="relu",
        activation="relu",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not trunk_widths:
            raise ValueError(
                "`trunk_widths` needs at least one width. "
                f"Received: trunk_widths={trunk_widths}"
            )
        if int(num_levels) < 1:
            raise ValueError(f"`num_levels` must be >= 1. Received {num_levels}")
        self.trunk_widths = tuple(int(w) for w in trunk_widths)
        self.feature_dim = int(feature_dim)
        self.num_levels = int(num_levels)
        self.rgb_head = bool(rgb_head)
        self.rgb_widths = tuple(int(w) for w in rgb_widths)
        self.rgb_activation = keras.activations.get(rgb_activation)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

        count = iter(range(1 << 30))

        def dense(units, activation, name):
            # A fresh initializer per layer: a Keras initializer draws from
            # a fixed seed, so sharing one object would make layers of the
            # same shape start out identical.
            index = next(count)
            return keras.layers.Dense(
                units,
                activation=activation,
                kernel_initializer=fresh_initializer(
                    self.kernel_initializer, index
                ),
                bias_initializer=fresh_initializer(self.bias_initializer, index),
                dtype=self.dtype_policy,
                name=name,
            )

        self.trunk = [
            dense(w, self.activation, f"trunk_{i}")
            for i, w in enumerate(self.trunk_widths)
        ]
        # Lower GLOM levels first, the top level (`feature_head`) last.
        self.level_heads = [
            dense(self.feature_dim, None, f"level_head_{i}")
            for i in range(self.num_levels - 1)
        ]
        self.feature_head = dense(self.feature_dim, None, "feature_head")
        self.rgb_layers = []
        if self.rgb_head:
            self.rgb_layers = [
                dense(w, "relu", f"rgb_{i}")
                for i, w in enumerate(self.rgb_widths)
            ] + [dense(3, self.rgb_activation, f"rgb_{len(self.rgb_widths)}")]

    def build(self, query_shape):
        query_dim = query_shape[-1]
        shape = (None, query_dim)
        for layer in self.trunk:
            layer.build(shape)
            shape = (None, layer.units)
        for layer in self.level_heads + [self.feature_head]:
            layer.build(shape)
        shape = (None, self.feature_dim + query_dim)
        for layer in self.rgb_layers:
            layer.build(shape)
            shape = (None, layer.units)
        self.built = True

    def output_shapes(self):
        """The heads this MLP answers at one location: `{output: shape}`.

        `"features"` `(D,)`; `"levels"` `(num_levels, D)` with several GLOM
        levels; `"rgb"` `(3,)` with the RGB head. The output names are the
        per-location rows of the head table
        (`keras_apm.models.apm.apm_outputs`).

        Example:
        >>> PerceptionMLP((8,), 4, rgb_head=False).output_shapes()
        {'features': (4,)}
        """
        shapes = {"features": (self.feature_dim,)}
        if self.level_heads:
            shapes["levels"] = (self.num_levels, self.feature_dim)
        if self.rgb_head:
            shapes["rgb"] = (3,)
        return shapes

    def explicit_weights(self, outputs=None):
        """The MLP's variables as `call_with_weights` takes them.

        `{"trunk": [...], "levels": [...], "features": ..., "rgb": [...]}`,
        each entry a Dense layer's `{"kernel", "bias"}`; `"levels"` holds
        the lower GLOM levels' heads, `"rgb"` the RGB head's layers.

        Args:
            outputs: None (every head), or the output names to compute: the
                optional heads left out (`"levels"`, `"rgb"`) get no
                weights, so `call_with_weights` skips them.
        """
        weights = {
            "trunk": [dense_weights(layer) for layer in self.trunk],
            "levels": [dense_weights(layer) for layer in self.level_heads],
            "features": dense_weights(self.feature_head),
            "rgb": [dense_weights(layer) for layer in self.rgb_layers],
        }
        if outputs is not None:
            for head in ("levels", "rgb"):
                if head not in outputs:
                    weights[head] = []
        return weights

    def call_with_weights(self, weights, queries):
        """`call` from explicit weights (`explicit_weights()`'s structure).

        Each weight may carry a leading per-image axis `B` (one MLP per
        image; `queries` then `(B, ..., n + d)`). A head whose weights are
        left out (an empty `"levels"` or `"rgb"` list) is not computed.
        """
        x = queries
        for layer, layer_weights in zip(self.trunk, weights["trunk"]):
            x = dense(layer_weights, x, layer.activation)
        return self._heads(weights, x, [queries])

    def split_call_with_weights(self, weights, trigger, codes):
        """`split_call` from explicit weights, as `call_with_weights`.

        `trigger` `(B, n)` and `codes` `(L, d)` in the compute dtype.
        """
        # [T ; PE] @ K: the T share once per image, the PE share once per
        # location (for every image when the weights are stacked).
        # expand_dims, not `[:, None, :]`: its gradient is a reshape, where
        # a strided slice's is StridedSliceGrad (no LiteRT builtin).
        parts = [ops.expand_dims(trigger, 1), codes]
        x = split_dense(weights["trunk"][0], parts, self.trunk[0].activation)
        for layer, layer_weights in zip(self.trunk[1:], weights["trunk"][1:]):
            x = dense(layer_weights, x, layer.activation)
        return self._heads(weights, x, parts)

    def _heads(self, weights, hidden, query_parts):
        features = dense(weights["features"], hidden)
        outputs = {"features": features}
        if weights["levels"]:
            levels = [dense(w, hidden) for w in weights["levels"]] + [features]
            # (..., L, D): the level axis sits just before the channels.
            outputs["levels"] = ops.stack(levels, axis=-2)
        if weights["rgb"]:
            # The RGB head reads [feature ; query], split like the trunk.
            first, *rest = weights["rgb"]
            x = split_dense(
                first, [features] + query_parts, self.rgb_layers[0].activation
            )
            for layer, layer_weights in zip(self.rgb_layers[1:], rest):
                x = dense(layer_weights, x, layer.activation)
            outputs["rgb"] = x
        return outputs

    def call(self, queries):
        """Direct form: `(..., n + d)` queries -> dict of `(..., ·)`."""
        # Keras casts inputs only in `__call__`; `compute_output_spec`
        # traces `call` directly, which should compute in the same dtype.
        queries = ops.cast(queries, self.compute_dtype)
        return self.call_with_weights(self.explicit_weights(), queries)

    def split_call(self, trigger, codes):
        """Exact fast form: `(B, n)` triggers and `(L, d)` codes -> `(B, L, ·)`.

        Equal to `call` on the queries `[T ; PE]` up to float rounding.
        """
        trigger = ops.cast(trigger, self.compute_dtype)
        codes = ops.cast(codes, self.compute_dtype)
        return self.split_call_with_weights(
            self.explicit_weights(), trigger, codes
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "trunk_widths": self.trunk_widths,
                "feature_dim": self.feature_dim,
                "num_levels": self.num_levels,
                "rgb_head": self.rgb_head,
                "rgb_widths": self.rgb_widths,
                "rgb_activation": keras.activations.serialize(
                    self.rgb_activation
                ),
                "activation": keras.activations.serialize(self.activation),
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
