"""Tiny random keras-hub models for tests: one place that builds them.

Each builder seeds Keras first (the same seed, the same weights) and takes
the few sizes tests vary; `save_preset` writes a model and its companions
(converter, tokenizer) into one preset folder, as keras-hub saves them.

Example:
```python
from presets_factory import save_preset, tiny_vit

path = save_preset(tmp_path / "vit", tiny_vit(seed=7))
teacher = Teacher.from_preset(path)
```
"""

import os

import keras
import keras_hub


def tiny_vit(seed, image_shape=(32, 32, 3), patch_size=8, num_layers=2,
             hidden_dim=16, mlp_dim=32, **kwargs):
    """A random `ViTBackbone` with 2 heads (`kwargs`: `use_class_token`)."""
    keras.utils.set_random_seed(seed)
    return keras_hub.models.ViTBackbone(
        image_shape=image_shape,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        **kwargs,
    )


def tiny_vit_classifier(backbone, num_classes, scale=1 / 127.5, offset=-1.0,
                        **kwargs):
    """`(task, converter)`: a `ViTImageClassifier` over `backbone` with a
    `ViTImageConverter` preprocessor at the backbone's size."""
    converter = keras_hub.layers.ViTImageConverter(
        image_size=tuple(backbone.image_shape[:2]), scale=scale, offset=offset
    )
    task = keras_hub.models.ViTImageClassifier(
        backbone=backbone,
        num_classes=num_classes,
        preprocessor=keras_hub.models.ViTImageClassifierPreprocessor(converter),
        **kwargs,
    )
    return task, converter


def tiny_clip(seed, vocabulary_size, hidden_dim, intermediate_dim,
              projection_dim, image_shape=(32, 32, 3), patch_size=8,
              max_sequence_length=8):
    """A random one-layer `CLIPBackbone` (vision encoder built first)."""
    keras.utils.set_random_seed(seed)
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=patch_size,
        hidden_dim=hidden_dim,
        num_layers=1,
        num_heads=2,
        intermediate_dim=intermediate_dim,
        image_shape=image_shape,
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=vocabulary_size,
        embedding_dim=hidden_dim,
        hidden_dim=hidden_dim,
        num_layers=1,
        num_heads=2,
        intermediate_dim=intermediate_dim,
        max_sequence_length=max_sequence_length,
    )
    return keras_hub.models.CLIPBackbone(
        vision_encoder=vision, text_encoder=text, projection_dim=projection_dim
    )


def save_preset(path, *parts):
    """Saves each of `parts` (a model, converter, tokenizer) into the preset
    folder `path`; returns it as a string."""
    path = os.fspath(path)
    for part in parts:
        part.save_to_preset(path)
    return path
