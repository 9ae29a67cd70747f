"""Attention-pool global head of the official TTT model."""

import math

import keras
from keras import ops

from keras_apm.layers.explicit_weights import float_kernel
from keras_apm.layers.output_spec import output_spec
from keras_apm.layers.position_encoding import grid_position_codes


def _swap_axes(x, a, b):
    # ops.transpose with a full permutation: it also takes the variables
    # that compiled TTT steps pass (ops.moveaxis reads `x.ndim`).
    perm = list(range(len(x.shape)))
    perm[a], perm[b] = perm[b], perm[a]
    return ops.transpose(x, perm)


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

    def call_with_weights(self, weights, features, codes=None):
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
            features: `(B, h, w, D)` in the compute dtype; or `(B, L, D)`
                at L locations of the grid, given with their `codes`.
            codes: `None` (the whole grid), or the `(L, D)` position codes
                of the L locations that `features` answer (test-time
                training on a subset of the grid pools over that subset).

        Returns:
            `(B, D)` global vectors.
        """
        dtype = features.dtype
        weights = {k: ops.cast(v, dtype) for k, v in weights.items()}
        if codes is None:
            h, w, dim = features.shape[1], features.shape[2], features.shape[3]
            codes = grid_position_codes((h, w), dim)
            features = ops.reshape(features, (-1, h * w, dim))
        keys = features + ops.cast(codes, dtype)
        # "..." is the per-image axis of stacked weights (empty otherwise).
        # Every contraction is a (batched) matmul: the same sums as the
        # einsums they stand for, and LiteRT's converter lowers matmuls and
        # their gradients to builtin ops where it mislowers some einsum
        # gradients with stacked weights (on-device TTT exports this head).
        query_kernel = weights["query_kernel"]
        dim, heads, key_dim = query_kernel.shape[-3:]
        lead = tuple(query_kernel.shape[:-3])
        query = ops.matmul(
            ops.expand_dims(weights["query"], -2),
            ops.reshape(query_kernel, lead + (dim, heads * key_dim)),
        )  # (..., 1, heads * key_dim)
        query = ops.reshape(query, lead + (heads, key_dim))
        query = query + weights["query_bias"]
        query = query * ops.cast(1.0 / math.sqrt(key_dim), dtype)
        # folded[..., d, h] = sum_k key_kernel[..., d, h, k] query[..., h, k]
        folded = ops.matmul(
            _swap_axes(weights["key_kernel"], -2, -3),  # (..., h, d, k)
            ops.expand_dims(query, -1),
        )  # (..., h, d, 1)
        folded = _swap_axes(ops.squeeze(folded, -1), -1, -2)  # (..., d, h)
        # The key bias adds one number per head to every location's score,
        # which the softmax cancels; it is kept so that the gradient (zero
        # up to rounding) reaches it as in Keras' attention.
        offset = ops.sum(weights["key_bias"] * query, axis=-1)  # (..., heads)
        scores = ops.matmul(keys, folded) + ops.expand_dims(offset, -2)
        # The softmax in float32 whatever the policy (as cheap as it gets).
        attention = ops.softmax(ops.cast(scores, "float32"), axis=1)
        pooled = ops.matmul(
            _swap_axes(ops.cast(attention, dtype), 1, 2), keys
        )  # (B, h, D)
        values = ops.matmul(
            ops.expand_dims(pooled, -2),  # (B, h, 1, D)
            _swap_axes(weights["value_kernel"], -2, -3),  # (..., h, D, k)
        )
        values = ops.squeeze(values, -2) + weights["value_bias"]  # (B, h, k)
        kernel = weights["output_kernel"]
        kernel = ops.reshape(
            kernel, lead + (heads * key_dim, kernel.shape[-1])
        )
        values = ops.reshape(values, (-1, 1, heads * key_dim))
        out = ops.squeeze(ops.matmul(values, kernel), -2)
        return out + weights["output_bias"]

    def call(self, features):
        return self.call_with_weights(self.explicit_weights(), features)

    def compute_output_spec(self, features):
        return output_spec(self, features)

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
