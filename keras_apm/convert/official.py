"""Converts the official PyTorch APM checkpoints into keras_apm presets.

The official `state_dict`s (github: rajatmodi62/apm) hold PyTorch layouts:
`Linear.weight` is `[out, in]`, `Conv2d.weight` is `[out, in, kh, kw]` and
`MultiheadAttention.in_proj_weight` stacks q, k and v. Keras wants `[in,
out]`, `[kh, kw, in, out]` and per-head `[in, heads, head_dim]` kernels.
Position codes are not stored: both sides recompute them.
"""

import os

import numpy as np

from keras_apm.utils.files import atomic_write
from keras_apm.utils.files import check_writable_dir
from keras_apm.utils.optional import require


def _linear(prefix, out_dim, in_dim):
    return {f"{prefix}.weight": (out_dim, in_dim), f"{prefix}.bias": (out_dim,)}


def _official_shapes(trunk_names, trunk_widths, feature_dim, global_head):
    n = d = 1024
    shapes = {"conv1.weight": (1, 3, 14, 14), "conv1.bias": (1,)}
    width = n + d
    for name, out in zip(trunk_names, trunk_widths):
        shapes.update(_linear(name, out, width))
        width = out
    shapes.update(_linear("feat_proj_head", feature_dim, width))
    shapes.update(_linear("rgb_head_1", 256, feature_dim + n + d))
    shapes.update(_linear("rgb_head_2", 256, 256))
    shapes.update(_linear("rgb_head_3", 3, 256))
    if global_head:
        e = feature_dim
        shapes.update(
            {
                "norm.weight": (n,),
                "norm.bias": (n,),
                "little_query": (e,),
                "little_self_attention.in_proj_weight": (3 * e, e),
                "little_self_attention.in_proj_bias": (3 * e,),
                "little_self_attention.out_proj.weight": (e, e),
                "little_self_attention.out_proj.bias": (e,),
            }
        )
    return shapes


# What each official variant is, in the official names and in ours.
OFFICIAL_VARIANTS = {
    "coco": {
        "trunk_names": ("fc1", "fc2", "fc3", "fc4", "fc5"),
        "config": {
            "image_shape": (448, 448, 3),
            "patch_size": 14,
            "trunk_widths": (4096, 4096, 4096, 2048, 1024),
            "feature_dim": 1024,
            "position_dim": 1024,
            "rgb_head": True,
            "global_head": False,
        },
        # model_15.pth was trained on OpenCV (BGR) reads scaled per image.
        "converter": {"scaling": "minmax", "channel_order": "bgr"},
    },
    "ttt": {
        "trunk_names": ("fc1", "fc4", "fc5"),
        "config": {
            "image_shape": (448, 448, 3),
            "patch_size": 14,
            "trunk_widths": (4096, 2048, 1024),
            "feature_dim": 768,
            "position_dim": 1024,
            "rgb_head": True,
            "global_head": True,
            "global_num_heads": 8,
        },
        "converter": {"scaling": "imagenet", "channel_order": "rgb"},
    },
}
for _variant in OFFICIAL_VARIANTS.values():
    _config = _variant["config"]
    _variant["shapes"] = _official_shapes(
        _variant["trunk_names"],
        _config["trunk_widths"],
        _config["feature_dim"],
        _config["global_head"],
    )
# The TTT model owns a LayerNorm its forward never uses: checked, then dropped.
UNUSED_OFFICIAL_KEYS = ("norm.weight", "norm.bias")


def _check_variant(variant):
    if variant not in OFFICIAL_VARIANTS:
        raise ValueError(
            f"Unknown official variant {variant!r}. Expected one of "
            f"{sorted(OFFICIAL_VARIANTS)}."
        )
    return OFFICIAL_VARIANTS[variant]


def _sniff_checkpoint(path):
    """Raises a ValueError naming `path` unless it looks like a checkpoint.

    `torch.save` writes a zip archive (older versions a pickle); text or
    random bytes would fail deep inside the unpickler ("KeyError: 101").
    """
    with open(path, "rb") as f:
        head = f.read(512)
    size = os.path.getsize(path)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return
    if not head:
        what = "is empty"
    elif all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        what = f"is a text file (starts with {head[:40].decode()!r})"
    else:
        what = f"is not a zip archive or a pickle (starts with {head[:8]!r})"
    raise ValueError(
        f"Checkpoint {path!r} ({size:,} bytes) {what}. Expected an official "
        "APM checkpoint written by `torch.save` (.pth) or a .npz of the same "
        "tensors."
    )


def _check_tensors(path, state):
    """Raises a ValueError naming `path` and tensors that are not finite floats."""
    integer = sorted(k for k, v in state.items() if v.dtype.kind not in "f")
    if integer:
        raise ValueError(
            f"Checkpoint {path!r} holds non-float tensors {integer[:5]} "
            f"(dtype {state[integer[0]].dtype}). Official APM weights are "
            "floating point: this is not an official checkpoint, or it was "
            "quantized."
        )
    nonfinite = sorted(k for k, v in state.items() if not np.isfinite(v).all())
    if nonfinite:
        raise ValueError(
            f"Checkpoint {path!r} holds NaN or Inf values in {nonfinite[:5]}. "
            "A model converted from it would answer NaN: use a checkpoint "
            "saved before training diverged."
        )


def load_official_state_dict(path):
    """Reads an official checkpoint (`.pth`) into `{name: float32 array}`.

    Accepts a bare `state_dict`, one wrapped as `{"model": ...}` or
    `{"state_dict": ...}`, and `module.` prefixes left by `DataParallel`.
    Reading PyTorch pickles needs `torch` (CPU is enough); `.npz` files with
    the same names need only NumPy. Text, random or truncated files, and
    tensors that are integers or hold NaN/Inf, raise a ValueError naming the
    file.
    """
    if not os.path.isfile(path):
        raise ValueError(f"Checkpoint {path!r} does not exist.")
    _sniff_checkpoint(path)
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: data[k] for k in data.files}
        except Exception as e:
            raise ValueError(
                f"Checkpoint {path!r} cannot be read as a .npz archive; it is "
                f"truncated or corrupt ({type(e).__name__}: {e})."
            ) from None
    else:
        # Only to unpickle PyTorch files (the CPU build is enough).
        torch = require("torch", extra="convert")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"Checkpoint {path!r} cannot be read as a PyTorch state_dict: "
                f"it is truncated or corrupt ({type(e).__name__}: {e}). "
                "Download it again."
            ) from None
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise ValueError(
                f"Checkpoint {path!r} holds a {type(state).__name__}, not a "
                "state_dict (a dict of tensors)."
            )
        state = {
            k: v.detach().cpu().numpy()
            for k, v in state.items()
            if hasattr(v, "detach")
        }
    state = {k.removeprefix("module."): np.asarray(v) for k, v in state.items()}
    _check_tensors(path, state)
    return {k: v.astype("float32", copy=False) for k, v in state.items()}


def check_official_state_dict(state, variant):
    """Raises a ValueError listing missing, unexpected and mis-shaped keys."""
    spec = _check_variant(variant)["shapes"]
    missing = sorted(set(spec) - set(state))
    unexpected = sorted(set(state) - set(spec))
    misshaped = sorted(
        f"{k}: expected {spec[k]}, found {tuple(np.shape(state[k]))}"
        for k in set(spec) & set(state)
        if tuple(np.shape(state[k])) != spec[k]
    )
    if missing or unexpected or misshaped:
        others = [
            name
            for name, v in OFFICIAL_VARIANTS.items()
            if name != variant and set(v["shapes"]) == set(state)
        ]
        hint = f" It looks like the {others[0]!r} variant." if others else ""
        raise ValueError(
            f"The checkpoint does not match the official {variant!r} "
            f"variant.{hint} Missing tensors: {missing or 'none'}. "
            f"Unexpected tensors: {unexpected or 'none'}. Mis-shaped "
            f"tensors: {misshaped or 'none'}."
        )


def build_official_model(variant, **kwargs):
    """An APM with the official architecture of `variant` (random weights)."""
    from keras_apm.models.apm.apm_backbone import APM

    config = dict(_check_variant(variant)["config"])
    config.update(kwargs)
    return APM(**config)


def set_official_weights(model, state, variant):
    """Copies a checked official `state_dict` into an APM of that variant."""
    check_official_state_dict(state, variant)
    spec = OFFICIAL_VARIANTS[variant]
    mlp = model.field.mlp
    assign = []
    conv = model.column.conv
    # [out, in, kh, kw] -> [kh, kw, in, out]
    assign += [
        (conv.kernel, state["conv1.weight"].transpose(2, 3, 1, 0)),
        (conv.bias, state["conv1.bias"]),
    ]
    linear = list(zip(spec["trunk_names"], mlp.trunk))
    linear += [("feat_proj_head", mlp.feature_head)]
    linear += [(f"rgb_head_{i + 1}", layer) for i, layer in enumerate(mlp.rgb_layers)]
    for name, layer in linear:
        assign += [
            (layer.kernel, state[f"{name}.weight"].T),
            (layer.bias, state[f"{name}.bias"]),
        ]
    if model.global_pool is not None:
        pool = model.global_pool
        attention = pool.attention
        e = model.feature_dim
        heads = attention.num_heads
        w_in = state["little_self_attention.in_proj_weight"]
        b_in = state["little_self_attention.in_proj_bias"]
        projections = (
            attention.query_dense,
            attention.key_dense,
            attention.value_dense,
        )
        for i, dense in enumerate(projections):
            w = w_in[i * e : (i + 1) * e]  # [out, in], out = head * hd + j
            assign += [
                (dense.kernel, w.T.reshape(e, heads, e // heads)),
                (dense.bias, b_in[i * e : (i + 1) * e].reshape(heads, e // heads)),
            ]
        w_out = state["little_self_attention.out_proj.weight"]
        assign += [
            (
                attention.output_dense.kernel,
                w_out.T.reshape(heads, e // heads, e),
            ),
            (
                attention.output_dense.bias,
                state["little_self_attention.out_proj.bias"],
            ),
            (pool.query, state["little_query"]),
        ]
    for variable, value in assign:
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"Internal layout error for {variable.path}: expected "
                f"{tuple(variable.shape)}, got {value.shape}."
            )
        variable.assign(value.astype(variable.dtype))
    return model


def convert_official_checkpoint(checkpoint, variant, output, overwrite=False):
    """Converts an official checkpoint into a preset directory.

    The preset (config, weights and image converter) is written to a
    temporary directory beside `output` and renamed into place, so a failed
    conversion leaves nothing behind.

    Args:
        checkpoint: path of the official `.pth` (or a `.npz` of the same
            tensors).
        variant: `"coco"` or `"ttt"`.
        output: preset directory to create.
        overwrite: replace an existing `output`.

    Returns:
        The converted `keras_apm.APM`.

    Example:
    ```python
    convert_official_checkpoint("model_15.pth", "coco", "./apm_coco")
    model = keras_apm.APM.from_preset("./apm_coco")
    ```
    """
    spec = _check_variant(variant)
    # The input first: a missing checkpoint is the likelier mistake.
    if not os.path.isfile(checkpoint):
        raise ValueError(f"Checkpoint {checkpoint!r} does not exist.")
    output = os.path.abspath(output)
    if os.path.exists(output) and not overwrite:
        raise ValueError(
            f"Output {output!r} exists. Pass overwrite=True (--overwrite) to "
            "replace it."
        )
    parent = os.path.dirname(output)
    # Every command creates its output's missing parents (like `mkdir -p`).
    os.makedirs(parent, exist_ok=True)
    # Before the checkpoint is read (tens of seconds for the official ones).
    check_writable_dir(parent, f"the parent directory of {output!r}")
    state = load_official_state_dict(checkpoint)
    check_official_state_dict(state, variant)
    model = set_official_weights(build_official_model(variant), state, variant)
    from keras_apm.models.apm.apm_image_converter import APMImageConverter

    config = spec["config"]
    converter = APMImageConverter(
        image_size=config["image_shape"][:2], **spec["converter"]
    )

    def write(staged):
        model.save_to_preset(staged)
        converter.save_to_preset(staged)

    atomic_write(output, write)
    return model
