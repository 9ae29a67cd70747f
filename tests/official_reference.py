"""A NumPy forward of the official APM models, written from the spec's math.

It reads official-layout weights (PyTorch names and shapes) and NCHW images,
so it shares nothing with keras_apm's code: tests compare the two.
"""

import numpy as np


def official_position_code(d, h, w):
    """PE(d, h, w) of APM_SPEC.md as a `(d, h, w)` array (float64)."""
    e = d // 2
    pe = np.zeros((d, h, w))
    for k in range(e // 2):
        r = 10000.0 ** (-2.0 * k / e)
        for y in range(h):
            for x in range(w):
                pe[2 * k, y, x] = np.sin(x * r)
                pe[2 * k + 1, y, x] = np.cos(x * r)
                pe[e + 2 * k, y, x] = np.sin(y * r)
                pe[e + 2 * k + 1, y, x] = np.cos(y * r)
    return pe


def _linear(state, name, x):
    return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]


def _relu(x):
    return np.maximum(x, 0.0)


def reference_forward(state, images_nchw, trunk_names, patch=14):
    """Official forward pass. Returns dict of features/rgb (NHWC) and global."""
    state = {k: np.asarray(v, np.float64) for k, v in state.items()}
    x = np.asarray(images_nchw, np.float64)
    b, _, height, width = x.shape
    h, w = height // patch, width // patch
    # Conv2d(3 -> 1, kernel = stride = patch), flattened row-major.
    tiles = x.reshape(b, 3, h, patch, w, patch)
    column = np.einsum("bcyixj,ocij->boyx", tiles, state["conv1.weight"])
    column = column + state["conv1.bias"][None, :, None, None]
    trigger = column.reshape(b, h * w)
    n = h * w
    pe = official_position_code(n, h, w).reshape(n, h * w).T  # (loc, d)
    queries = np.concatenate(
        [np.repeat(trigger[:, None, :], h * w, axis=1), np.repeat(pe[None], b, 0)],
        axis=-1,
    )
    hidden = queries
    for name in trunk_names:
        hidden = _relu(_linear(state, name, hidden))
    feat = _linear(state, "feat_proj_head", hidden)
    rgb = _relu(_linear(state, "rgb_head_1", np.concatenate([feat, queries], -1)))
    rgb = _relu(_linear(state, "rgb_head_2", rgb))
    rgb = _relu(_linear(state, "rgb_head_3", rgb))
    out = {
        "features": feat.reshape(b, h, w, -1),
        "rgb": rgb.reshape(b, h, w, 3),
    }
    if "little_query" in state:
        out["global"] = _attention_pool(state, feat, h, w)
    return out


def _attention_pool(state, feat, h, w, heads=8):
    """nn.MultiheadAttention(E, 8) with one query over features + PE(E)."""
    b, n, e = feat.shape
    keys = feat + official_position_code(e, h, w).reshape(e, n).T[None]
    w_in = state["little_self_attention.in_proj_weight"]
    b_in = state["little_self_attention.in_proj_bias"]
    q = state["little_query"] @ w_in[:e].T + b_in[:e]  # (e,)
    k = keys @ w_in[e : 2 * e].T + b_in[e : 2 * e]  # (b, n, e)
    v = keys @ w_in[2 * e :].T + b_in[2 * e :]
    hd = e // heads
    q = q.reshape(heads, hd)
    k = k.reshape(b, n, heads, hd)
    v = v.reshape(b, n, heads, hd)
    scores = np.einsum("hd,bnhd->bhn", q, k) / np.sqrt(hd)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    attn = scores / scores.sum(-1, keepdims=True)
    pooled = np.einsum("bhn,bnhd->bhd", attn, v).reshape(b, e)
    return pooled @ state["little_self_attention.out_proj.weight"].T + (
        state["little_self_attention.out_proj.bias"]
    )


def random_official_state(shapes, seed=0):
    """Random weights in official layout, scaled like PyTorch's default init."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in shapes.items():
        if name == "little_query":
            state[name] = rng.standard_normal(shape)
        elif name == "norm.weight":
            state[name] = np.ones(shape)
        elif name.endswith("weight") and len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            bound = 1.0 / np.sqrt(fan_in)
            state[name] = rng.uniform(-bound, bound, shape)
        else:
            state[name] = rng.uniform(-0.05, 0.05, shape)
    return {k: v.astype(np.float32) for k, v in state.items()}
