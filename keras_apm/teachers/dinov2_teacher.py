"""Teacher adapter for keras-hub's `DINOV2Backbone` (registers or not)."""

import keras
from keras_hub.models import DINOV2Backbone

from keras_apm.teachers import teacher_utils
from keras_apm.teachers.teacher import Teacher
from keras_apm.teachers.teacher_registry import register_teacher


@register_teacher
@keras.saving.register_keras_serializable(package="keras_apm")
class DINOV2Teacher(Teacher):
    """Teacher over a keras-hub `DINOV2Backbone` (APM's COCO teacher).

    Token layout of `DINOV2Backbone`: `[CLS, registers (num_register_tokens),
    patches]`; the backbone output is that sequence through the final
    `layernorm`.

    - `"grid"`: final-norm patch tokens, i.e. `output[:, 1 + R:]` reshaped
      row-major to `(h, w)` (class AND register tokens removed; the official
      APM code's `tokens[:-5]` shifted grid is not reproduced).
    - `"global"`: final-norm class token `output[:, 0]`.
    - `"levels"`: outputs of the chosen `DINOV2Layer`s (the backbone's
      `pyramid_outputs["stage{i + 1}"]` before any `apply_layernorm`).

    The backbone's `apply_layernorm` only changes its `pyramid_outputs` and
    is ignored here; use `normalize_levels` instead.

    Default preprocessing without an image converter (keras-hub DINOv2
    presets): bicubic resize, ImageNet mean/std.

    Args:
        backbone: a `keras_hub.models.DINOV2Backbone`.
        **kwargs: see `Teacher`.

    Example:
    >>> backbone = keras_hub.models.DINOV2Backbone(
    ...     patch_size=14, num_layers=2, hidden_dim=32, num_heads=2,
    ...     intermediate_dim=64, num_register_tokens=4,
    ...     image_shape=(28, 28, 3), position_embedding_shape=(28, 28, 3))
    >>> teacher = DINOV2Teacher(backbone)
    >>> teacher(np.zeros((1, 64, 64, 3)))["grid"].shape
    (1, 2, 2, 32)
    """

    backbone_classes = (DINOV2Backbone,)
    default_preprocessing = teacher_utils.DINOV2_PREPROCESSING

    def _data_format(self):
        return self.backbone.embeddings.data_format

    @property
    def num_register_tokens(self):
        return int(self.backbone.num_register_tokens)

    def _num_prefix_tokens(self):
        return 1 + self.num_register_tokens

    def _embed(self, pixels):
        return self.backbone.embeddings(pixels)

    def _blocks(self):
        return list(self.backbone.encoder.layers)

    def _final_norm(self, tokens):
        return self.backbone.layernorm(tokens)
