"""Teacher adapter for keras-hub's `ViTBackbone` / `ViTImageClassifier`."""

import keras
from keras import ops
from keras_hub.models import ViTBackbone
from keras_hub.models import ViTImageClassifier

from keras_apm.teachers import teacher_utils
from keras_apm.teachers.teacher import Teacher
from keras_apm.teachers.teacher_registry import register_teacher


@register_teacher
@keras.saving.register_keras_serializable(package="keras_apm")
class ViTTeacher(Teacher):
    """Teacher over a keras-hub ViT (`ViTBackbone` or `ViTImageClassifier`).

    Token layout of `ViTBackbone`: `[CLS, patches]` (or `[patches]` when built
    with `use_class_token=False`), all passed through the encoder's final
    LayerNorm, which is the backbone output.

    - `"grid"`: final-norm patch tokens (class token removed).
    - `"global"`: final-norm class token; without a class token, the mean of
      the final-norm patch tokens.
    - `"levels"`: outputs of the chosen `ViTEncoderBlock`s.
    - `"head_input"`, `"logits"` (task presets only): what the
      `ViTImageClassifier` head reads from the final-norm tokens (`"token"`
      pooling: the class token; `"gap"`: the mean of all tokens) and its
      output (the optional `tanh` pre-logits layer, then the output
      `Dense`), exactly as the task computes them.

    Default preprocessing without an image converter (keras-hub ViT presets):
    bilinear resize, `x / 127.5 - 1` (mean = std = 0.5).

    Args:
        backbone: a `keras_hub.models.ViTBackbone` or
            `keras_hub.models.ViTImageClassifier`.
        **kwargs: see `Teacher`.

    Example:
    >>> backbone = keras_hub.models.ViTBackbone(
    ...     image_shape=(32, 32, 3), patch_size=4, num_layers=2, num_heads=2,
    ...     hidden_dim=16, mlp_dim=32)
    >>> teacher = ViTTeacher(backbone, layers=[0, -1])
    >>> out = teacher(np.random.uniform(0, 255, (2, 40, 50, 3)))
    >>> out["grid"].shape, out["global"].shape, out["levels"].shape
    ((2, 8, 8, 16), (2, 16), (2, 2, 8, 8, 16))
    """

    backbone_classes = (ViTBackbone, ViTImageClassifier)
    default_preprocessing = teacher_utils.VIT_PREPROCESSING

    @property
    def _encoder(self):
        return self.backbone.get_layer("vit_encoder")

    def _num_prefix_tokens(self):
        return 1 if self.backbone.use_class_token else 0

    def _embed(self, pixels):
        # `ViTEncoder.call` starts with its dropout; keep the same order.
        embedding = self.backbone.get_layer("vit_patching_and_embedding")
        return self._encoder.dropout(embedding(pixels))

    def _blocks(self):
        return list(self._encoder.encoder_layers)

    def _final_norm(self, tokens):
        return self._encoder.layer_norm(tokens)

    def _global(self, tokens):
        if self.backbone.use_class_token:
            return tokens[:, 0, :]
        return ops.mean(tokens, axis=1)

    def _head_input(self, tokens):
        pooling = self.task.pooling
        if pooling == "token":
            return tokens[:, 0]
        if pooling == "gap":
            return ops.mean(tokens, axis=1)
        raise ValueError(
            "Expected ViTImageClassifier pooling 'token' or 'gap'. "
            f"Received {pooling!r}."
        )

    def _head(self, vectors):
        if self.task.intermediate_dim is not None:
            vectors = self.task.intermediate_layer(vectors)
        return self.task.output_dense(vectors)
