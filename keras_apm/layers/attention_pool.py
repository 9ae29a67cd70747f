"""Attention-pool global head of the official TTT model."""

import keras
from keras import ops

from keras_apm.layers import fused_ops
from keras_apm.layers.position_encoding import grid_locations
from keras_apm.layers.position_encoding import sincos_position_encoding_2d


@keras.saving.register_keras_serializable(package="keras_apm")
class AttentionPoolHead(keras.layers.Layer):
    """One learned query attends over the feature grid -> one global vector.

    Keys and values are the grid features plus the 2-D sine/cosine code of
    width `D` (the official `pos_output`); the query is a learned `D`-vector.
    Standard multi-head attention with input and output projections and
    biases (the official `nn.MultiheadAttention(D, 8)`).

    Args:
        num_heads: int, attention heads (official: 8).
        query_initializer: initializer of the learned query (official:
            standard normal).

    Call args:
        features: `(B, h, w, D)` feature grid.

    Returns:
        `(B, D)` global vectors.

    Example:
    >>> head = AttentionPoolHead(num_heads=4)
    >>> head(np.zeros((2, 8, 8, 32), "float32")).shape
    (2, 32)
    """

    def __init__(self, num_heads=8, query_initializer="random_normal", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.query_initializer = keras.initializers.get(query_initializer)
        self.attention = None

    def build(self, features_shape):
        dim = features_shape[-1]
        if dim % self.num_heads:
            raise ValueError(
                f"The feature width {dim} must be divisible by num_heads="
                f"{self.num_heads}."
            )
        self.query = self.add_weight(
            shape=(dim,), initializer=self.query_initializer, name="query"
        )
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=dim // self.num_heads,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention.build((None, 1, dim), (None, None, dim), (None, None, dim))
        # The grid's codes are constants: once here, not per call (an eager
        # backend would recompute them every time).
        self._codes = None
        self._codes_cache = {}
        h, w = features_shape[1], features_shape[2]
        if h is not None and w is not None:
            try:
                self._codes = ops.convert_to_numpy(
                    sincos_position_encoding_2d(grid_locations((h, w)), dim)
                )
            except Exception:  # Built inside a trace: per call instead.
                self._codes = None
        self.built = True

    def call(self, features):
        h, w, dim = features.shape[1], features.shape[2], features.shape[3]
        batch = ops.shape(features)[0]
        keys = ops.reshape(features, (batch, h * w, dim))
        codes = getattr(self, "_codes", None)
        if codes is not None and codes.shape == (h * w, dim):
            codes = fused_ops.constant(codes, keys.dtype, self._codes_cache)
        else:
            codes = sincos_position_encoding_2d(grid_locations((h, w)), dim)
        keys = keys + ops.cast(codes, keys.dtype)[None]
        query = ops.cast(self.query, keys.dtype)
        query = ops.broadcast_to(query[None, None, :], (batch, 1, dim))
        pooled = self.attention(query, keys, keys)
        return pooled[:, 0, :]

    def compute_output_shape(self, features_shape):
        return (features_shape[0], features_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "query_initializer": keras.initializers.serialize(
                    self.query_initializer
                ),
            }
        )
        return config
