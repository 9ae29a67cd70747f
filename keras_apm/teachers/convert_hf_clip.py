"""Hugging Face `CLIPModel` -> keras-hub `CLIPBackbone` (weights and config).

WORKAROUND, delete when keras-hub converts CLIP itself: keras-hub 0.32 has no
Hugging Face converter for `model_type: "clip"` (keras-hub issue #2985,
https://github.com/keras-team/keras-hub/issues/2985, open), so
`keras_hub.models.CLIPBackbone.from_preset("hf://openai/clip-vit-...")`
fails. This module is that converter, written like keras-hub's own
`keras_hub/src/utils/transformers/convert_*.py` (same loader, same weight
layout), and used only by `keras_apm.teachers.hf_checkpoints`. Once keras-hub
ships one, drop this file and the `"clip"` branch there.

Mapping (Hugging Face name -> keras-hub layer):

- `vision_model.embeddings.{patch_embedding, class_embedding,
  position_embedding}` -> `vision_encoder.embedding.*`
- `vision_model.pre_layrnorm` -> `vision_encoder.pre_layer_norm`
- `{vision,text}_model.encoder.layers.N.self_attn.{q,k,v,out}_proj`,
  `layer_norm1/2`, `mlp.fc1/fc2` -> `encoder_layers[N].attention`,
  `layer_norm_1/2`, `dense_1/2`
- `vision_model.post_layernorm` -> `vision_encoder.layer_norm` (keras-hub
  applies it to the whole sequence; Hugging Face to the pooled token only)
- `visual_projection`, `text_projection` -> `vision_projection`,
  `text_projection`; `logit_scale` -> `clip_head.logit_scale`
- `text_model.embeddings.{token,position}_embedding`,
  `text_model.final_layer_norm` -> `text_encoder.embedding.*`,
  `text_encoder.layer_norm`

keras-hub hard-codes the LayerNorm epsilons (1e-5 in the vision tower and
the blocks, 1e-6 for the text tower's final norm); the checkpoint's
`layer_norm_eps` (1e-5 for OpenAI CLIP) is set on the built layers.

Example:
```python
config = keras_apm.utils.keras_hub_compat.load_json(folder, "config.json")
backbone = keras_hub.models.CLIPBackbone(**convert_backbone_config(config))
with SafetensorLoader(folder) as loader:
    convert_weights(backbone, loader, config)
```
"""

import keras_hub
import numpy as np


def _transformer_args(config, tower):
    """The transformer sizes both CLIP towers take, from a tower's config."""
    activation = config.get("hidden_act", "quick_gelu")
    if activation not in ("quick_gelu", "gelu"):
        raise ValueError(
            f"keras-hub's CLIP takes `hidden_act` 'quick_gelu' or 'gelu'; "
            f"the checkpoint's {tower} config has {activation!r}."
        )
    return dict(
        hidden_dim=int(config["hidden_size"]),
        num_layers=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        intermediate_dim=int(config["intermediate_size"]),
        intermediate_activation=activation,
    )


def convert_backbone_config(transformers_config, image_shape=None):
    """`config.json` of a `CLIPModel` -> `CLIPBackbone` keyword arguments.

    Args:
        transformers_config: dict, the checkpoint's `config.json`.
        image_shape: `None` (the config's `image_size`) or an `(H, W, 3)`.
    """
    vision = transformers_config["vision_config"]
    text = transformers_config["text_config"]
    size = int(vision["image_size"])
    if image_shape is not None and tuple(image_shape[:2]) != (size, size):
        raise ValueError(
            f"keras-hub's CLIP has no position-embedding interpolation: the "
            f"checkpoint takes {size}x{size} images, not "
            f"{image_shape[0]}x{image_shape[1]}."
        )
    projection_dim = transformers_config.get("projection_dim", 512)
    return {
        "vision_encoder": keras_hub.models.CLIPVisionEncoder(
            patch_size=int(vision["patch_size"]),
            image_shape=(size, size, 3),
            **_transformer_args(vision, "vision"),
        ),
        "text_encoder": keras_hub.models.CLIPTextEncoder(
            vocabulary_size=int(text["vocab_size"]),
            embedding_dim=int(text["hidden_size"]),
            max_sequence_length=int(text["max_position_embeddings"]),
            **_transformer_args(text, "text"),
        ),
        "projection_dim": int(projection_dim),
    }


def _layer_norms(encoder):
    norms = [encoder.layer_norm]
    for block in encoder.encoder_layers:
        norms += [block.layer_norm_1, block.layer_norm_2]
    return norms


def set_layer_norm_epsilons(backbone, transformers_config):
    """Sets the checkpoint's `layer_norm_eps` on every CLIP LayerNorm."""
    vision = transformers_config["vision_config"]
    text = transformers_config["text_config"]
    vision_norms = _layer_norms(backbone.vision_encoder) + [
        backbone.vision_encoder.pre_layer_norm
    ]
    for norm in vision_norms:
        norm.epsilon = float(vision.get("layer_norm_eps", 1e-5))
    for norm in _layer_norms(backbone.text_encoder):
        norm.epsilon = float(text.get("layer_norm_eps", 1e-5))


def set_position_ids(backbone):
    """Fills the vision tower's `position_ids` weight with `0..N-1`.

    keras-hub keeps the position indices as a weight, zeros until a preset
    fills it; Hugging Face keeps them as a buffer, not in the safetensors
    file, so a converted backbone must set them.
    """
    positions = backbone.vision_encoder.embedding.position_ids
    positions.assign(
        np.arange(positions.shape[1], dtype="int64").reshape(positions.shape)
    )


def convert_weights(backbone, loader, transformers_config):
    """Copies a `CLIPModel`'s safetensors weights into a `CLIPBackbone`."""

    def port_ln(layer, key):
        loader.port_weight(layer.gamma, f"{key}.weight")
        loader.port_weight(layer.beta, f"{key}.bias")

    def port_dense(layer, key):
        loader.port_weight(
            layer.kernel, f"{key}.weight", hook_fn=lambda x, _: x.T
        )
        if layer.bias is not None:
            loader.port_weight(layer.bias, f"{key}.bias")

    def port_mha(attention, key, num_heads, hidden_dim):
        head_dim = hidden_dim // num_heads
        for keras_name, hf_name in (
            ("query_dense", "q_proj"),
            ("key_dense", "k_proj"),
            ("value_dense", "v_proj"),
        ):
            dense = getattr(attention, keras_name)
            loader.port_weight(
                dense.kernel,
                f"{key}.{hf_name}.weight",
                hook_fn=lambda x, _: np.reshape(
                    x.T, (hidden_dim, num_heads, head_dim)
                ),
            )
            loader.port_weight(
                dense.bias,
                f"{key}.{hf_name}.bias",
                hook_fn=lambda x, _: np.reshape(x, (num_heads, head_dim)),
            )
        loader.port_weight(
            attention.output_dense.kernel,
            f"{key}.out_proj.weight",
            hook_fn=lambda x, _: np.reshape(
                x.T, (num_heads, head_dim, hidden_dim)
            ),
        )
        loader.port_weight(
            attention.output_dense.bias, f"{key}.out_proj.bias"
        )

    def port_blocks(encoder, prefix):
        for index, block in enumerate(encoder.encoder_layers):
            key = f"{prefix}.encoder.layers.{index}"
            port_mha(
                block.attention,
                f"{key}.self_attn",
                block.num_heads,
                block.hidden_dim,
            )
            port_ln(block.layer_norm_1, f"{key}.layer_norm1")
            port_ln(block.layer_norm_2, f"{key}.layer_norm2")
            port_dense(block.dense_1, f"{key}.mlp.fc1")
            port_dense(block.dense_2, f"{key}.mlp.fc2")

    vision = backbone.vision_encoder
    loader.port_weight(
        vision.embedding.patch_embedding.kernel,
        "vision_model.embeddings.patch_embedding.weight",
        hook_fn=lambda x, _: np.transpose(x, (2, 3, 1, 0)),
    )
    loader.port_weight(
        vision.embedding.position_embedding.embeddings,
        "vision_model.embeddings.position_embedding.weight",
    )
    loader.port_weight(
        vision.embedding.class_embedding,
        "vision_model.embeddings.class_embedding",
    )
    set_position_ids(backbone)
    port_ln(vision.pre_layer_norm, "vision_model.pre_layrnorm")
    port_blocks(vision, "vision_model")
    port_ln(vision.layer_norm, "vision_model.post_layernorm")
    port_dense(backbone.vision_projection, "visual_projection")

    text = backbone.text_encoder
    loader.port_weight(
        text.embedding.token_embedding.embeddings,
        "text_model.embeddings.token_embedding.weight",
    )
    loader.port_weight(
        text.embedding.position_embedding.position_embeddings,
        "text_model.embeddings.position_embedding.weight",
    )
    port_blocks(text, "text_model")
    port_ln(text.layer_norm, "text_model.final_layer_norm")
    port_dense(backbone.text_projection, "text_projection")
    loader.port_weight(
        backbone.clip_head.logit_scale,
        "logit_scale",
        hook_fn=lambda x, shape: np.reshape(x, shape),
    )
    set_layer_norm_epsilons(backbone, transformers_config)


def convert_tokenizer(vocabulary, merges):
    """A keras-hub `CLIPTokenizer` from the checkpoint's BPE files.

    Args:
        vocabulary: dict token -> id (`vocab.json`, or `tokenizer.json`'s
            `model.vocab`).
        merges: list of `"a b"` merge rules (`merges.txt` without its
            version header, or `tokenizer.json`'s `model.merges`).
    """
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m for m in merges]
    return keras_hub.tokenizers.CLIPTokenizer(
        vocabulary=dict(vocabulary), merges=list(merges)
    )
