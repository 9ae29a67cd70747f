"""Attention-pool global head of the official TTT model."""

import math

import keras
from keras import ops

from keras_apm.layers.explicit_weights import float_kernel
from keras_apm.layers.position_encoding import grid_position_codes


@keras.saving.register_keras_serializable(package="keras_apm")
class AttentionPoolHead(keras.layers.Layer):
    """One learned query attends over the feature grid -> one global vector.

    Keys and values are the grid features plus the 2-D sine/cosine code of
    width `D` (the official `pos_output`); the query is a learned `D`-vector.
    Standard multi-head attention with input and output projections and
    biases (the official `nn.MultiheadAttention(D, 8)`), computed in the
    folded one-query form of `call_with_weights`. The projections are the
    variables of a `keras.layers.MultiHeadAttention` sublayer (kept so that
    weight paths, presets and the official converter stay as they are).

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
        self.built = True

    def explicit_weights(self):
        """The head's variables as `call_with_weights` takes them: the
        learned query and the attention's projections."""
        attention = self.attention
        return {
            "query": self.query,
            "query_kernel": float_kernel(attention.query_dense),
            "query_bias": attention.query_dense.bias,
            "key_kernel": float_kernel(attention.key_dense),
            "key_bias": attention.key_dense.bias,
            "value_kernel": float_kernel(attention.value_dense),
            "value_bias": attention.value_dense.bias,
            "output_kernel": float_kernel(attention.output_dense),
            "output_bias": attention.output_dense.bias,
        }

    def call_with_weights(self, weights, features):
        """The global vectors from explicit weights.

        Multi-head attention of one query, folded: location l's score in
        head h is `keys[l] . (W_k[:, h] q_h) + b_k[h] . q_h`, and as the
        attention weights sum to 1, `sum_l a_l (keys[l] W_v + b_v) =
        (sum_l a_l keys[l]) W_v + b_v`. So one query costs `D x D` work
        where projecting every key and value costs `L x D x D`; the result
        is that of `keras.layers.MultiHeadAttention` (float rounding aside).

        Args:
            weights: `explicit_weights()`'s structure; each weight may carry
                a leading per-image axis `B` (one head per image).
            features: `(B, h, w, D)` in the compute dtype.

        Returns:
            `(B, D)` global vectors.
        """
        h, w, dim = features.shape[1], features.shape[2], features.shape[3]
        dtype = features.dtype
        weights = {k: ops.cast(v, dtype) for k, v in weights.items()}
        codes = grid_position_codes((h, w), dim)
        keys = ops.reshape(features, (-1, h * w, dim)) + ops.cast(codes, dtype)
        # "..." is the per-image axis of stacked weights (empty otherwise).
        query = ops.einsum(
            "...d,...dhk->...hk", weights["query"], weights["query_kernel"]
        )
        query = query + weights["query_bias"]
        key_dim = query.shape[-1]
        query = query * ops.cast(1.0 / math.sqrt(key_dim), dtype)
        folded = ops.einsum("...dhk,...hk->...dh", weights["key_kernel"], query)
        # The key bias adds one number per head to every location's score,
        # which the softmax cancels; it is kept so that the gradient (zero
        # up to rounding) reaches it as in Keras' attention.
        offset = ops.sum(weights["key_bias"] * query, axis=-1)  # (..., heads)
        scores = ops.matmul(keys, folded) + ops.expand_dims(offset, -2)
        # The softmax in float32 whatever the policy (as cheap as it gets).
        attention = ops.softmax(ops.cast(scores, "float32"), axis=1)
        pooled = ops.einsum("blh,bld->bhd", ops.cast(attention, dtype), keys)
        values = ops.einsum("...hd,...dhk->...hk", pooled, weights["value_kernel"])
        values = values + weights["value_bias"]
        out = ops.einsum("...hk,...hke->...e", values, weights["output_kernel"])
        return out + weights["output_bias"]

    def call(self, features):
        return self.call_with_weights(self.explicit_weights(), features)

    def compute_output_spec(self, features):
        # Read from the argument itself: Keras' default passes the shapes of
        # backend tensors only, so NumPy input (as keras-hub's harness and
        # users pass) would arrive as None.
        return keras.KerasTensor(
            self.compute_output_shape(tuple(features.shape)),
            dtype=self.compute_dtype,
        )

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
