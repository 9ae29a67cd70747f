"""`APMImageClassifier`: a keras-hub image classification Task on an APM."""

import os

import keras
from keras_hub.models import ImageClassifier
from keras_hub.models import Task

from keras_apm.utils import preset_files
from keras_apm.models.apm.apm_backbone import APM
from keras_apm.models.apm.apm_image_classifier_preprocessor import (
    APMImageClassifierPreprocessor,
)
from keras_apm.models.apm.apm_outputs import FEATURES
from keras_apm.models.apm.apm_outputs import GLOBAL
from keras_apm.models.apm.apm_preset_saving import save_preset_staged
from keras_apm.utils.validation import check_number

POOLINGS = ("global", "avg")


@keras.saving.register_keras_serializable(package="keras_apm")
class APMImageClassifier(ImageClassifier):
    """Image classification with an APM backbone (a keras-hub `Task`).

    Wraps a `keras_apm.APM` and an `APMImageClassifierPreprocessor`; a
    `num_classes` dense head reads one vector per image:

    - `pooling="global"`: the APM's attention-pool global vector (needs a
      backbone built with `global_head=True`);
    - `pooling="avg"`: the mean of the `(h, w, D)` feature grid.

    The default is `"global"` when the backbone has a global head, else
    `"avg"`. `keras_hub.models.ImageClassifier.from_preset(<APM preset>,
    num_classes=...)` builds this class (keras-hub picks the Task subclass
    whose `backbone_cls` is the preset's backbone class); a preset saved
    from a classifier (with `task.json`) loads head and all, without
    `num_classes`.

    `fit` takes `(images, labels)`: raw RGB images in `[0, 255]` of any
    size (the preprocessor resizes and scales them) and integer labels.
    With `preprocessor=None` the inputs must already be the APM's input.

    Args:
        backbone: a `keras_apm.APM`.
        num_classes: int, the number of classes.
        preprocessor: `None`, an `APMImageClassifierPreprocessor`, or any
            keras-hub preprocessor / callable.
        pooling: `None` (see above), `"global"` or `"avg"`.
        activation: `None` (logits, the default) or the head's activation,
            e.g. `"softmax"`.
        dropout: float in `[0, 1)`, dropout before the head.
        head_dtype: `None` (the backbone's) or the head's dtype policy.
        **kwargs: `keras_hub.models.Task` arguments (`name`, `compile`).

    Example:
    ```python
    classifier = keras_hub.models.ImageClassifier.from_preset(
        "apm_tiny_digits", num_classes=10
    )  # an APMImageClassifier
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3))
    classifier.fit(images, labels, epochs=3)  # images: (N, H, W, 3) 0..255
    classifier.save_to_preset("./apm_digits_classifier")
    keras_hub.models.ImageClassifier.from_preset("./apm_digits_classifier")
    ```
    """

    backbone_cls = APM
    preprocessor_cls = APMImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes=None,
        preprocessor=None,
        pooling=None,
        activation=None,
        dropout=0.0,
        head_dtype=None,
        **kwargs,
    ):
        if not isinstance(backbone, APM):
            raise ValueError(
                "`backbone` must be a `keras_apm.APM`. Received "
                f"{type(backbone).__name__}."
            )
        if num_classes is None:
            raise ValueError(
                "`APMImageClassifier` needs `num_classes`. A preset that "
                "holds only an APM backbone (e.g. `apm_tiny_digits`) has no "
                "head: pass it, e.g. `ImageClassifier.from_preset(preset, "
                "num_classes=10)`."
            )
        check_number(num_classes, "`num_classes`", low=1, integer=True)
        if pooling is None:
            pooling = "global" if backbone.global_head else "avg"
        if pooling not in POOLINGS:
            raise ValueError(
                f"`pooling` must be one of {POOLINGS} (or None). Received "
                f"{pooling!r}."
            )
        if pooling == "global" and not backbone.global_head:
            raise ValueError(
                "`pooling='global'` reads the APM's global head, but this "
                "backbone was built with global_head=False. Use "
                "pooling='avg' (the mean over the feature grid)."
            )
        check_number(dropout, "`dropout`", low=0, high=1, high_open=True)
        head_dtype = head_dtype or backbone.dtype_policy

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        # The APM answers channels-last grids (B, h, w, D) whatever the
        # global data format.
        self.pooler = (
            keras.layers.GlobalAveragePooling2D(
                "channels_last", dtype=head_dtype, name="pooler"
            )
            if pooling == "avg"
            else None
        )
        self.output_dropout = keras.layers.Dropout(
            dropout, dtype=head_dtype, name="output_dropout"
        )
        self.output_dense = keras.layers.Dense(
            num_classes,
            activation=activation,
            dtype=head_dtype,
            name="predictions",
        )

        # === Functional Model ===
        inputs = self.backbone.input
        outputs = self.backbone(inputs)
        if self.pooler is None:
            x = outputs[GLOBAL]
        else:
            x = self.pooler(outputs[FEATURES])
        x = self.output_dropout(x)
        outputs = self.output_dense(x)
        # Skip `ImageClassifier.__init__`: it builds its own 2D pooler on the
        # backbone's (single) output.
        Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.activation = activation
        self.pooling = pooling
        self.dropout = dropout

    def compile_from_config(self, config):
        """Re-compiles a loaded `.keras` classifier with its saved settings.

        Keras skips models whose `compile` is overridden (keras-hub's Tasks
        override it for their defaults); replaying the saved arguments
        restores the optimizer, whose saved state then loads too.
        """
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Loads a classifier from a preset, every file checked first.

        A local preset's checksums (`task.json` and `task.weights.h5`
        included), JSON files and weights are checked before keras-hub
        reads them, so a bad file is named (see `keras_apm.APM.from_preset`;
        `check_weights=False` skips the checksum and NaN checks).

        Example:
        ```python
        classifier = keras_apm.APMImageClassifier.from_preset(
            "./apm_classifier")
        ```
        """
        check_weights = kwargs.pop("check_weights", True)
        handle = preset_files.resolve_handle(preset)
        if isinstance(handle, str) and not preset_files._is_remote(handle):
            preset_files.check_local_preset(handle, load_weights)
            preset_files.check_preset_files(handle, check_weights)
            if load_weights:
                weights = os.path.join(handle, preset_files.WEIGHTS_FILE)
                preset_files.weight_tensors(weights, check_weights)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

    def load_task_weights(self, filepath):
        """Loads `task.weights.h5`, checked against the preset's checksums.

        keras-hub's `ImageClassifier.from_preset` calls this; a corrupt file
        is named here instead of failing inside h5py.
        """
        directory = os.path.dirname(os.fspath(filepath))
        name = os.path.basename(os.fspath(filepath))
        if os.path.isdir(directory):
            preset_files.verify_preset(directory, names=[name])
        try:
            return super().load_task_weights(filepath)
        except Exception as e:
            raise ValueError(
                f"Weights file {os.fspath(filepath)!r} could not be loaded "
                f"into the classifier ({type(e).__name__}: {e}). The file is "
                "corrupt or from another model: re-save the preset."
            ) from e

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """Saves the classifier as a preset, staged and checksummed.

        Writes `task.json`, `task.weights.h5` (the head), the backbone
        (`config.json`, `model.weights.h5`, `metadata.json`) and the
        preprocessor (`preprocessor.json`, `image_converter.json`) into a
        folder beside `preset_dir` and swaps it in at once (see
        `keras_apm.APM.save_to_preset`).

        Example:
        ```python
        classifier.save_to_preset("./apm_classifier")
        keras_hub.models.ImageClassifier.from_preset("./apm_classifier")
        ```
        """
        save_super = super().save_to_preset
        return save_preset_staged(
            preset_dir, lambda staged: save_super(staged, max_shard_size)
        )
