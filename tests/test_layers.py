"""Each APM layer on its own, against the spec's math."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_apm import layers
from official_reference import official_position_code


def to_np(x):
    return ops.convert_to_numpy(x)


def test_position_code_matches_spec_formula_on_the_grid():
    h, w, d = 5, 7, 24
    codes = to_np(layers.sincos_position_encoding_2d(layers.grid_locations((h, w)), d))
    expected = official_position_code(d, h, w).reshape(d, h * w).T
    np.testing.assert_allclose(codes, expected, atol=1e-6)


def test_cached_grid_code_is_the_formula_and_read_only():
    from keras_apm.layers.position_encoding import grid_position_codes

    h, w, d = 32, 32, 1024  # the official grid: phases up to 31 radians
    cached = grid_position_codes((h, w), d)
    codes = to_np(layers.sincos_position_encoding_2d(layers.grid_locations((h, w)), d))
    np.testing.assert_allclose(cached, codes, atol=2e-6)
    expected = official_position_code(d, h, w).reshape(d, h * w).T
    np.testing.assert_allclose(cached, expected, atol=2e-6)
    assert cached.dtype == np.float32 and not cached.flags.writeable
    assert grid_position_codes((h, w), d) is cached


def test_position_code_at_fractional_locations():
    d = 16
    loc = np.array([[0.5, 2.25], [3.0, 0.0]], "float32")
    codes = to_np(layers.sincos_position_encoding_2d(loc, d))
    e = d // 2
    for row, (y, x) in zip(codes, loc):
        for k in range(e // 2):
            r = 10000.0 ** (-2 * k / e)
            np.testing.assert_allclose(
                row[[2 * k, 2 * k + 1, e + 2 * k, e + 2 * k + 1]],
                [np.sin(x * r), np.cos(x * r), np.sin(y * r), np.cos(y * r)],
                atol=1e-6,
            )


def test_grid_locations_are_row_major():
    loc = to_np(layers.grid_locations((2, 3)))
    np.testing.assert_array_equal(loc[4], [1, 1])
    np.testing.assert_array_equal(loc[2], [0, 2])


@pytest.mark.parametrize("dim", [6, 10])
def test_position_code_needs_width_divisible_by_4(dim):
    with pytest.raises(ValueError, match="divisible by 4"):
        layers.SinCosPositionEncoding2D(dim)


def test_trigger_column_is_a_strided_conv_flattened_row_major(rng):
    images = rng.random((2, 12, 16, 3)).astype("float32")
    column = layers.TriggerColumn(patch_size=4)
    trigger = to_np(column(images))
    assert trigger.shape == (2, 3 * 4)
    kernel = to_np(column.conv.kernel)[..., 0]  # (p, p, 3)
    bias = to_np(column.conv.bias)[0]
    y, x = 2, 1
    patch = images[1, y * 4 : y * 4 + 4, x * 4 : x * 4 + 4]
    np.testing.assert_allclose(
        trigger[1, y * 4 + x], (patch * kernel).sum() + bias, rtol=1e-5,
        # The value depends on the random kernel and may sit near 0, where a
        # float32 sum of 48 products differs from NumPy's by ~1e-7.
        atol=1e-6,
    )


def test_trigger_column_with_several_channels(rng):
    column = layers.TriggerColumn(patch_size=4, channels=3)
    out = column(rng.random((1, 8, 8, 3)).astype("float32"))
    assert tuple(out.shape) == (1, 2 * 2 * 3)


def test_trigger_column_rejects_sizes_not_divisible_by_patch():
    column = layers.TriggerColumn(patch_size=14)
    with pytest.raises(ValueError, match="divisible by the patch size 14"):
        column(np.zeros((1, 100, 112, 3), "float32"))


def test_query_unfold_concatenates_trigger_and_code(rng):
    trigger = rng.random((2, 8)).astype("float32")
    loc = np.array([[0, 1], [1.5, 0.5], [2, 2]], "float32")
    queries = to_np(layers.QueryUnfold(position_dim=8)(trigger, loc))
    assert queries.shape == (2, 3, 16)
    np.testing.assert_allclose(queries[1, 2, :8], trigger[1])
    np.testing.assert_allclose(
        queries[0, 1, 8:], to_np(layers.sincos_position_encoding_2d(loc, 8))[1],
        atol=1e-6,
    )


def test_mlp_split_call_equals_direct_call(rng):
    mlp = layers.PerceptionMLP(trunk_widths=(32, 16), feature_dim=8, num_levels=2)
    trigger = rng.random((3, 12)).astype("float32")
    loc = rng.random((10, 2)).astype("float32") * 3
    unfold = layers.QueryUnfold(position_dim=12)
    direct = mlp(unfold(trigger, loc))
    split = mlp.split_call(trigger, unfold.position_codes(loc))
    assert set(direct) == {"features", "rgb", "levels"}
    for key in direct:
        np.testing.assert_allclose(to_np(split[key]), to_np(direct[key]), atol=1e-5)
    assert tuple(direct["levels"].shape) == (3, 10, 2, 8)
    np.testing.assert_allclose(
        to_np(direct["levels"])[:, :, -1], to_np(direct["features"])
    )


def test_mlp_rgb_head_is_fed_feature_and_query(rng):
    mlp = layers.PerceptionMLP(
        trunk_widths=(16,), feature_dim=4, rgb_widths=(8,), rgb_activation=None
    )
    queries = rng.random((1, 5, 6)).astype("float32")
    out = mlp(queries)
    rgb0, rgb1 = mlp.rgb_layers
    x = np.concatenate([to_np(out["features"]), queries], -1)
    x = np.maximum(x @ to_np(rgb0.kernel) + to_np(rgb0.bias), 0)
    x = x @ to_np(rgb1.kernel) + to_np(rgb1.bias)
    np.testing.assert_allclose(to_np(out["rgb"]), x, atol=1e-5)
    # Official: the RGB head ends with a ReLU by default.
    assert layers.PerceptionMLP((4,), 4).rgb_activation is keras.activations.relu


def test_attention_pool_head_matches_manual_attention(rng):
    head = layers.AttentionPoolHead(num_heads=2)
    feats = rng.random((2, 3, 4, 8)).astype("float32")
    head.build(feats.shape)
    att = head.attention
    for variable in att.weights:  # Non-zero biases, the key's included.
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    pooled = to_np(head(feats))
    keys = feats.reshape(2, 12, 8) + to_np(
        layers.sincos_position_encoding_2d(layers.grid_locations((3, 4)), 8)
    )
    # The folded one-query form is Keras' own multi-head attention.
    query = np.broadcast_to(to_np(head.query), (2, 1, 8))
    np.testing.assert_allclose(pooled, to_np(att(query, keys, keys))[:, 0], atol=1e-5)
    q = np.einsum("e,ehd->hd", to_np(head.query), to_np(att.query_dense.kernel))
    q = q + to_np(att.query_dense.bias)
    k = np.einsum("bne,ehd->bnhd", keys, to_np(att.key_dense.kernel)) + to_np(
        att.key_dense.bias
    )
    v = np.einsum("bne,ehd->bnhd", keys, to_np(att.value_dense.kernel)) + to_np(
        att.value_dense.bias
    )
    s = np.einsum("hd,bnhd->bhn", q, k) / np.sqrt(4)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("bhn,bnhd->bhd", a, v)
    expected = np.einsum("bhd,hde->be", o, to_np(att.output_dense.kernel))
    expected += to_np(att.output_dense.bias)
    np.testing.assert_allclose(pooled, expected, atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        layers.SinCosPositionEncoding2D(8),
        layers.TriggerColumn(4, channels=2),
        layers.QueryUnfold(8),
        layers.PerceptionMLP((8, 4), 4, num_levels=2, rgb_activation="sigmoid"),
        layers.AttentionPoolHead(num_heads=2),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_configs_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(restored) is type(layer)


def test_field_rejects_bad_chunk_size():
    mlp = layers.PerceptionMLP((8,), 4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            layers.PerceptionField((2, 2), 4, mlp, chunk_size=bad)


def test_mlp_layers_of_one_shape_start_different():
    # One shared initializer object would give same-shape layers the same
    # weights (Keras initializers draw from a seed fixed at creation).
    mlp = layers.PerceptionMLP(trunk_widths=(16, 16, 16), feature_dim=16)
    mlp.build((None, 16))
    kernels = [to_np(layer.kernel) for layer in mlp.trunk + [mlp.feature_head]]
    for i in range(len(kernels)):
        for j in range(i + 1, len(kernels)):
            assert not np.allclose(kernels[i], kernels[j])


def test_mlp_seeded_initializer_is_reproducible():
    def kernels():
        init = keras.initializers.GlorotUniform(seed=3)
        mlp = layers.PerceptionMLP(
            trunk_widths=(8, 8), feature_dim=8, kernel_initializer=init
        )
        mlp.build((None, 8))
        return [to_np(layer.kernel) for layer in mlp.trunk]

    first, second = kernels(), kernels()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], first[1])


def test_trigger_column_width_is_static_in_a_functional_model():
    images = keras.Input((16, 24, 3))
    trigger = layers.TriggerColumn(patch_size=8, channels=2)(images)
    assert tuple(trigger.shape) == (None, 2 * 3 * 2)


@pytest.mark.parametrize("num_levels,rgb_head", [(1, True), (3, False)])
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("fractional", [False, True])
def test_field_output_spec_matches_what_it_computes(
    num_levels, rgb_head, dtype, fractional
):
    # The spec is written out (the torch backend would otherwise trace by
    # running the MLP), so check it against a real call.
    mlp = layers.PerceptionMLP(
        (8, 8), 6, num_levels=num_levels, rgb_head=rgb_head, rgb_widths=(4,),
        dtype=dtype,
    )
    field = layers.PerceptionField((2, 3), 4, mlp, dtype=dtype)
    locations = (
        ops.convert_to_tensor([[0.5, 1.25], [1.0, 2.0], [0.0, 0.0], [1, 0.5]])
        if fractional
        else None
    )
    symbolic = field(keras.Input((5,)), locations)
    real = field(np.ones((2, 5), "float32"), locations)
    assert set(symbolic) == set(real)
    for key in real:
        assert tuple(symbolic[key].shape)[1:] == tuple(real[key].shape)[1:]
        assert symbolic[key].dtype == keras.backend.standardize_dtype(
            real[key].dtype
        ), key


# ----------------------------------------------------------------------------
# Explicit weights: `call` is `call_with_weights` on the layer's own weights,
# and stacked weights give each image its own layer.


def _check_explicit_weights(layer, inputs, call, call_with_weights, batch=3):
    own = layer.explicit_weights()
    # A stacked axis of 1 is the layer itself.
    one = keras.tree.map_structure(lambda v: to_np(v)[None], own)
    _assert_image(call_with_weights(one, inputs[:1]), call(inputs[:1]), 0)
    # A stacked axis of B: image b meets only its own (different) weights.
    rng = np.random.default_rng(0)
    per_image = [
        keras.tree.map_structure(
            lambda v: to_np(v) * (1 + 0.2 * b)
            + rng.normal(0, 0.1, v.shape).astype("float32"),
            own,
        )
        for b in range(batch)
    ]
    stacked = keras.tree.map_structure(lambda *xs: np.stack(xs), *per_image)
    got = call_with_weights(stacked, inputs)
    for b, weights in enumerate(per_image):
        keras.tree.map_structure(lambda v, x: v.assign(x), own, weights)
        _assert_image(got, call(inputs[b : b + 1]), b)


def _assert_image(got, expected, b):
    """Image `b` of `got` is the one-image output `expected`."""
    keras.tree.map_structure(
        lambda g, e: np.testing.assert_allclose(
            to_np(g)[b : b + 1], to_np(e), rtol=1e-5, atol=1e-5
        ),
        got,
        expected,
    )


def test_trigger_column_explicit_weights(rng):
    column = layers.TriggerColumn(patch_size=4, channels=2)
    images = rng.random((3, 8, 12, 3)).astype("float32")
    column(images)
    _check_explicit_weights(column, images, column, column.call_with_weights)


def test_mlp_explicit_weights_direct_and_split(rng):
    mlp = layers.PerceptionMLP((16, 8), 6, num_levels=2, rgb_widths=(4,))
    queries = rng.random((3, 5, 12)).astype("float32")
    mlp(queries)
    _check_explicit_weights(mlp, queries, mlp, mlp.call_with_weights)
    trigger = rng.random((3, 8)).astype("float32")
    codes = to_np(layers.QueryUnfold(4).position_codes(rng.random((5, 2)) * 3))
    _check_explicit_weights(
        mlp,
        trigger,
        lambda t: mlp.split_call(t, codes),
        lambda w, t: mlp.split_call_with_weights(w, t, codes),
    )


def test_attention_pool_explicit_weights(rng):
    head = layers.AttentionPoolHead(num_heads=2)
    features = rng.random((3, 2, 3, 8)).astype("float32")
    head(features)
    _check_explicit_weights(head, features, head, head.call_with_weights)


@pytest.mark.parametrize("fast_path", [True, False])
def test_field_explicit_weights(rng, fast_path):
    mlp = layers.PerceptionMLP((8,), 4, num_levels=2, rgb_widths=(4,))
    field = layers.PerceptionField((2, 3), 4, mlp, chunk_size=4, fast_path=fast_path)
    trigger = rng.random((3, 6)).astype("float32")
    field(trigger)
    _check_explicit_weights(field, trigger, field, field.call_with_weights)
