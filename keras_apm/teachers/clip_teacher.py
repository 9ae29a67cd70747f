"""Teacher adapter for keras-hub's `CLIPBackbone` / `CLIPVisionEncoder`."""

import keras
from keras_hub.models import CLIPBackbone
from keras_hub.models import CLIPVisionEncoder

from keras_apm.teachers import teacher_utils
from keras_apm.teachers.teacher import Teacher
from keras_apm.teachers.teacher_registry import register_teacher


@register_teacher
@keras.saving.register_keras_serializable(package="keras_apm")
class CLIPTeacher(Teacher):
    """Teacher over a keras-hub CLIP vision tower (APM's TTT teacher).

    Token layout of `CLIPVisionEncoder`: `[CLS, patches]`. keras-hub applies
    the vision tower's final LayerNorm (`layer_norm`, OpenAI's
    `post_layernorm`) to the whole sequence, and `CLIPBackbone` pools token 0
    of that and projects it with `vision_projection` (no bias).

    - `"grid"`: the post-layernorm patch tokens (class token removed). Note:
      Hugging Face's `last_hidden_state` is taken *before* that norm;
      keras-hub's `sequence_output` (used here) is after it.
    - `"global"`: for a `CLIPBackbone`, the projected image embedding
      `vision_projection(sequence_output[:, 0])` (`projection_dim` long, what
      `CLIPBackbone.get_vision_embeddings` returns and what CLIP text
      embeddings are compared with); for a bare `CLIPVisionEncoder`, the
      pooled (post-layernorm class) token `sequence_output[:, 0]`.
    - `"levels"`: outputs of the chosen `CLIPEncoderLayer`s.

    The text tower of a `CLIPBackbone` is kept (not run); use
    `teacher.backbone.get_text_embeddings(token_ids)` for class prompts.

    Default preprocessing without an image converter (keras-hub CLIP
    presets): bicubic resize, OpenAI CLIP mean/std.

    Args:
        backbone: a `keras_hub.models.CLIPBackbone` or
            `keras_hub.models.CLIPVisionEncoder`.
        **kwargs: see `Teacher`.

    Example:
    >>> encoder = keras_hub.models.CLIPVisionEncoder(
    ...     patch_size=4, hidden_dim=16, num_layers=2, num_heads=2,
    ...     intermediate_dim=32, image_shape=(32, 32, 3))
    >>> teacher = CLIPTeacher(encoder)
    >>> out = teacher(np.zeros((2, 32, 32, 3)))
    >>> out["grid"].shape, out["global"].shape
    ((2, 8, 8, 16), (2, 16))
    """

    backbone_classes = (CLIPBackbone, CLIPVisionEncoder)
    default_preprocessing = teacher_utils.CLIP_PREPROCESSING

    @property
    def vision_encoder(self):
        """The `CLIPVisionEncoder` that makes the tokens."""
        if isinstance(self.backbone, CLIPBackbone):
            return self.backbone.vision_encoder
        return self.backbone

    @property
    def has_projection(self):
        """Whether `"global"` is the projected embedding (`CLIPBackbone`)."""
        return isinstance(self.backbone, CLIPBackbone)

    def _vision(self):
        return self.vision_encoder

    def _data_format(self):
        return self.vision_encoder.embedding.data_format

    def _embed(self, pixels):
        encoder = self.vision_encoder
        return encoder.pre_layer_norm(encoder.embedding(pixels))

    def _blocks(self):
        return list(self.vision_encoder.encoder_layers)

    def _final_norm(self, tokens):
        return self.vision_encoder.layer_norm(tokens)

    def _global(self, tokens):
        pooled = tokens[:, 0, :]
        if self.has_projection:
            return self.backbone.vision_projection(pooled)
        return pooled

    @property
    def global_dim(self):
        if self.has_projection:
            return int(self.backbone.projection_dim)
        return self.feature_dim
