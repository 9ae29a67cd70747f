"""Teacher adapter for keras-hub's `ViTBackbone` / `ViTImageClassifier`."""

import keras
import keras_hub
from keras import ops

from keras_apm.teachers import teacher_utils
from keras_apm.teachers.teacher import Teacher


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
    - `"logits"` (task presets only): the `ViTImageClassifier` head, applied
      to the final-norm tokens exactly as the task does (`"token"` pooling:
      class token; `"gap"`: mean of all tokens; then the optional `tanh`
      pre-logits layer and the output `Dense`).

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

    backbone_classes = (
        keras_hub.models.ViTBackbone,
        keras_hub.models.ViTImageClassifier,
    )
    default_mean = teacher_utils.VIT_MEAN
    default_std = teacher_utils.VIT_STD
    default_interpolation = "bilinear"

    def _split_task(self, model):
        if isinstance(model, keras_hub.models.ViTImageClassifier):
            return model, model.backbone
        return None, model

    @property
    def _embedding(self):
        return self.backbone.get_layer("vit_patching_and_embedding")

    @property
    def _encoder(self):
        return self.backbone.get_layer("vit_encoder")

    def _data_format(self):
        return self.backbone.data_format

    def _image_hw(self):
        shape = self.backbone.image_shape
        if self._data_format() == "channels_first":
            return shape[1], shape[2]
        return shape[0], shape[1]

    def _patch_hw(self):
        return teacher_utils.as_pair(self.backbone.patch_size)

    def _num_prefix_tokens(self):
        return 1 if self.backbone.use_class_token else 0

    def _embed(self, pixels):
        # `ViTEncoder.call` starts with its dropout; keep the same order.
        return self._encoder.dropout(self._embedding(pixels))

    def _blocks(self):
        return list(self._encoder.encoder_layers)

    def _final_norm(self, tokens):
        return self._encoder.layer_norm(tokens)

    def _global(self, tokens):
        if self.backbone.use_class_token:
            return tokens[:, 0, :]
        return ops.mean(tokens, axis=1)

    def _logits(self, tokens):
        task = self.task
        if task.pooling == "token":
            x = tokens[:, 0]
        elif task.pooling == "gap":
            x = ops.mean(tokens, axis=1)
        else:
            raise ValueError(
                "Expected ViTImageClassifier pooling 'token' or 'gap'. "
                f"Received {task.pooling!r}."
            )
        if task.intermediate_dim is not None:
            x = task.intermediate_layer(x)
        return task.output_dense(x)

    @property
    def feature_dim(self):
        return int(self.backbone.hidden_dim)

    @property
    def global_dim(self):
        return int(self.backbone.hidden_dim)
