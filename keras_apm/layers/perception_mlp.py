"""The shared perception MLP that answers every location's query."""

import keras
from keras import ops

from keras_apm.layers import fused_ops
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
    of the RGB head) is one product per image plus one per location.

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

    def _dense(self, layer, x):
        # `layer(x)` through `fused_ops`: one fused kernel per layer where
        # the backend has one (see fused_ops), the same numbers otherwise.
        return fused_ops.dense(
            x,
            ops.cast(layer.kernel, self.compute_dtype),
            ops.cast(layer.bias, self.compute_dtype),
            layer.activation,
        )

    def _heads(self, hidden, queries_or_parts):
        features = self._dense(self.feature_head, hidden)
        outputs = {"features": features}
        if self.level_heads:
            levels = [self._dense(head, hidden) for head in self.level_heads]
            levels = levels + [features]
            # (..., L, D): the level axis sits just before the channels.
            outputs["levels"] = ops.stack(levels, axis=-2)
        if self.rgb_head:
            outputs["rgb"] = self._rgb(features, queries_or_parts)
        return outputs

    def _rgb(self, features, queries_or_parts):
        first = self.rgb_layers[0]
        if isinstance(queries_or_parts, tuple):
            trigger, codes = queries_or_parts
            kernel = ops.cast(first.kernel, self.compute_dtype)
            d, n = self.feature_dim, ops.shape(trigger)[-1]
            bias = ops.cast(first.bias, self.compute_dtype)
            per_image = fused_ops.dense(trigger, kernel[d : d + n], bias)
            per_location = fused_ops.dense(codes, kernel[d + n :])
            x = fused_ops.add_activation(
                [
                    fused_ops.dense(features, kernel[:d]),
                    per_image[:, None, :],
                    per_location[None],
                ],
                first.activation,
            )
        else:
            x = self._dense(
                first, ops.concatenate([features, queries_or_parts], axis=-1)
            )
        for layer in self.rgb_layers[1:]:
            x = self._dense(layer, x)
        return x

    def call(self, queries):
        """Direct form: `(..., n + d)` queries -> dict of `(..., ·)`."""
        queries = ops.cast(queries, self.compute_dtype)
        x = queries
        for layer in self.trunk:
            x = self._dense(layer, x)
        return self._heads(x, queries)

    def split_call(self, trigger, codes):
        """Exact fast form: `(B, n)` triggers and `(L, d)` codes -> `(B, L, ·)`.

        Equal to `call` on the queries `[T ; PE]` up to float rounding.
        """
        trigger = ops.cast(trigger, self.compute_dtype)
        codes = ops.cast(codes, self.compute_dtype)
        first = self.trunk[0]
        kernel = ops.cast(first.kernel, self.compute_dtype)
        n = ops.shape(trigger)[-1]
        bias = ops.cast(first.bias, self.compute_dtype)
        per_image = fused_ops.dense(trigger, kernel[:n], bias)  # (B, w1)
        per_location = fused_ops.dense(codes, kernel[n:])  # (L, w1)
        x = fused_ops.add_activation(
            [per_image[:, None, :], per_location[None]], first.activation
        )
        for layer in self.trunk[1:]:
            x = self._dense(layer, x)
        return self._heads(x, (trigger, codes))

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
