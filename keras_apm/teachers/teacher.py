"""Base class of the teacher adapters over keras-hub vision transformers."""

import os

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_apm.teachers import teacher_outputs
from keras_apm.teachers import teacher_registry
from keras_apm.teachers import teacher_utils
from keras_apm.utils.validation import check_pixel_dtype


@keras.saving.register_keras_serializable(package="keras_apm")
class Teacher(keras.layers.Layer):
    """A frozen keras-hub vision transformer that yields APM's targets.

    A teacher takes raw RGB images, resizes and normalises them exactly as the
    keras-hub preset's image converter does, runs the backbone and returns

    - `"grid"`: `(B, h, w, D)`, the patch tokens of the final (normed) token
      sequence, laid out row-major on the patch grid. Class and register
      tokens are dropped.
    - `"global"`: `(B, Dg)`, the teacher's global image embedding (what it is
      depends on the teacher, see the subclasses).
    - `"levels"`: `(B, L, h, w, D)`, only when `layers` was given: the patch
      grids after the chosen transformer blocks (with the teacher's final
      norm applied when `normalize_levels=True`).
    - `"head_input"` and `"logits"`: only for teachers built from an image
      classifier task (e.g. `ViTImageClassifier`): the `(B, head_dim)`
      vector the task's head reads and the head's `(B, num_classes)` output.

    The teacher and its backbone are frozen (`trainable=False`). Build one
    with `Teacher.from_preset(...)`, which picks the subclass registered
    for the preset's model class (`teacher_registry`), or construct a
    subclass from a built backbone.

    Args:
        backbone: a built keras-hub backbone (or task) the subclass supports.
        layers: `None` or a list of transformer-block indices (0-based,
            negative counts from the end: `-1` is the last block) whose patch
            grids to return as `"levels"`.
        resize_to_grid: `None` or an `(h, w)` grid size. If given, every
            returned grid is bilinearly resized to it (no antialiasing);
            otherwise `check_grid()` rejects student grids of another size.
        image_converter: `None` or a `keras_hub.layers.ImageConverter` whose
            `scale`, `offset`, `interpolation`, `antialias`,
            `crop_to_aspect_ratio` and `pad_to_aspect_ratio` define the
            preprocessing. `None` uses the model family's keras-hub preset
            values. The images are always resized to the backbone's input
            size (the converter's `image_size` is not used: a backbone loaded
            with another `image_shape` still needs its own size).
        normalize_levels: bool, whether `"levels"` go through the teacher's
            final norm (the norm that produces `"grid"`), so that level `-1`
            equals `"grid"`. With `False` they are the raw residual stream.
        **kwargs: base `keras.layers.Layer` arguments (`name`, ...).

    Example:
    >>> teacher = Teacher.from_preset(
    ...     "dinov2_with_registers_small", image_shape=(224, 224, 3))
    >>> out = teacher(np.random.uniform(0, 255, (2, 300, 400, 3)))
    >>> out["grid"].shape, out["global"].shape
    ((2, 16, 16, 384), (2, 384))
    """

    # Keras-hub classes (backbones or tasks) the subclass adapts.
    backbone_classes = ()
    # A `teacher_utils.Preprocessing`: what the family's keras-hub presets
    # do, used when the backbone comes without an image converter.
    default_preprocessing = None

    def __init__(
        self,
        backbone,
        layers=None,
        resize_to_grid=None,
        image_converter=None,
        normalize_levels=True,
        **kwargs,
    ):
        # Raw [0, 255] pixels must reach the resize untouched by autocasting.
        kwargs["autocast"] = False
        kwargs.pop("trainable", None)
        super().__init__(trainable=False, **kwargs)
        if type(self) is Teacher:
            names = ", ".join(
                f"`{t.__name__}`"
                for t in teacher_registry.registered_teachers()
            )
            raise ValueError(
                "`Teacher` is the abstract base class. Build a teacher with "
                f"`Teacher.from_preset(preset)` or one of {names}."
            )
        if not isinstance(backbone, self.backbone_classes):
            expected = ", ".join(c.__name__ for c in self.backbone_classes)
            raise ValueError(
                f"`{type(self).__name__}` expects one of ({expected}). "
                f"Received {type(backbone).__name__}."
            )
        self.model = backbone
        self.task, self.backbone = self._split_task(backbone)
        if not self.backbone.built:
            raise ValueError(
                f"Expected a built {type(self.backbone).__name__}. Build it "
                "first (keras-hub backbones are built on construction)."
            )
        self.backbone.trainable = False
        self.model.trainable = False
        # A backbone deserialised from a saved teacher (`trainable: false`
        # in its config) can keep trainable sublayers (seen on TensorFlow),
        # which would hand the teacher's weights to a student's optimizer.
        for layer in self.model._flatten_layers():
            layer.trainable = False
        self._check_data_format()

        self.layer_indices = teacher_utils.normalize_layer_indices(
            layers, self.num_layers
        )
        self.resize_to_grid = teacher_utils.normalize_grid_shape(
            resize_to_grid, "resize_to_grid"
        )
        self.normalize_levels = bool(normalize_levels)
        self.image_converter = image_converter
        self._set_preprocessing(image_converter)

        height, width = self.image_size
        patch_h, patch_w = self._patch_hw()
        if height % patch_h or width % patch_w:
            raise ValueError(
                f"The backbone's input size {height}x{width} is not divisible "
                f"by its patch size {patch_h}x{patch_w}."
            )
        self._native_grid = (height // patch_h, width // patch_w)

    # ------------------------------------------------------------------
    # Hooks for the subclasses. The defaults follow keras-hub's vision
    # backbones: `image_shape`, `patch_size`, `hidden_dim` and
    # `data_format` attributes, a class token first, and a task (an image
    # classifier) that holds its backbone as `task.backbone`.

    def _split_task(self, model):
        """Returns `(task or None, backbone)`."""
        if isinstance(model, keras_hub.models.Task):
            return model, model.backbone
        return None, model

    def _vision(self):
        """The keras-hub model with `image_shape`, `patch_size`, `hidden_dim`."""
        return self.backbone

    def _data_format(self):
        return getattr(self._vision(), "data_format", "channels_last")

    def _image_hw(self):
        shape = self._vision().image_shape
        if self._data_format() == "channels_first":
            return shape[1], shape[2]
        return shape[0], shape[1]

    def _patch_hw(self):
        return teacher_utils.as_pair(self._vision().patch_size)

    def _num_prefix_tokens(self):
        """Tokens ahead of the patch tokens (class, registers)."""
        return 1

    def _embed(self, pixels):
        """Normalised pixels -> token sequence entering the first block."""
        raise NotImplementedError

    def _blocks(self):
        raise NotImplementedError

    def _final_norm(self, tokens):
        raise NotImplementedError

    def _global(self, tokens):
        """Final normed token sequence -> `(B, global_dim)`: the class token."""
        return tokens[:, 0, :]

    def _head_input(self, tokens):
        """Final normed tokens -> `(B, head_dim)`, what the task head reads.

        Only called when the teacher has a task (`has_classifier`).
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot read the head of a "
            f"{type(self.task).__name__}."
        )

    def _head(self, vectors):
        """`(B, head_dim)` head inputs -> `(B, num_classes)` head outputs."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot apply the head of a "
            f"{type(self.task).__name__}."
        )

    @property
    def feature_dim(self):
        """Channels `D` of the patch grid."""
        return int(self._vision().hidden_dim)

    @property
    def global_dim(self):
        """Length `Dg` of the global embedding."""
        return self.feature_dim

    @property
    def head_dim(self):
        """Length of the vector the classifier head reads (`"head_input"`)."""
        return self.feature_dim

    @property
    def num_layers(self):
        """Number of transformer blocks (valid `layers` indices)."""
        return len(self._blocks())

    # ------------------------------------------------------------------
    # Properties.

    @property
    def image_size(self):
        """`(H, W)` the images are resized to before the backbone."""
        return tuple(int(v) for v in self._image_hw())

    @property
    def patch_size(self):
        """The backbone's patch size: an int, or `(ph, pw)` if not square."""
        patch_h, patch_w = self._patch_hw()
        return patch_h if patch_h == patch_w else (patch_h, patch_w)

    @property
    def native_grid_shape(self):
        """`(h, w)` patch grid of the backbone, before any resizing."""
        return self._native_grid

    @property
    def grid_shape(self):
        """`(h, w)` of the returned grids (`resize_to_grid` if given)."""
        return self.resize_to_grid or self._native_grid

    @property
    def num_levels(self):
        """How many grids `"levels"` holds (0 without `layers`)."""
        return len(self.layer_indices or ())

    @property
    def has_classifier(self):
        """Whether the teacher carries a classifier head (`"logits"`)."""
        return self.task is not None

    @property
    def num_classes(self):
        """Classes of the classifier head, or `None` without one."""
        return getattr(self.task, "num_classes", None)

    # ------------------------------------------------------------------
    # Public methods.

    def check_grid(self, student_grid_shape):
        """Checks that the teacher's grid matches a student's `(h, w)` grid.

        Args:
            student_grid_shape: `(h, w)` of the student's feature grid.

        Returns:
            The `(h, w)` grid shape the teacher returns.

        Raises:
            ValueError: if the sizes differ. Without `resize_to_grid` the
                teacher's native grid must match; with it, `resize_to_grid`
                must equal the student grid.

        Example:
        >>> teacher.grid_shape
        (16, 16)
        >>> teacher.check_grid((16, 16))
        (16, 16)
        """
        student = teacher_utils.normalize_grid_shape(
            student_grid_shape, "student_grid_shape"
        )
        if self.resize_to_grid is not None:
            if student != self.resize_to_grid:
                raise ValueError(
                    f"The teacher resizes its grid to {self.resize_to_grid} "
                    f"(resize_to_grid), but the student grid is {student}. "
                    f"Build the teacher with resize_to_grid={student}."
                )
            return self.resize_to_grid
        if student != self._native_grid:
            height, width = self.image_size
            raise ValueError(
                f"The teacher's patch grid is {self._native_grid} "
                f"({height}x{width} input, patch {self.patch_size}), but the "
                f"student grid is {student}. Pass resize_to_grid={student} "
                "to resize the teacher grid bilinearly, or give the student a "
                f"{self._native_grid[0]}x{self._native_grid[1]} grid."
            )
        return self._native_grid

    def preprocess(self, images):
        """Resizes and normalises raw RGB images for the backbone.

        Args:
            images: `(B, H, W, 3)` RGB pixels in `[0, 255]`, any `H, W`, float
                (integer dtypes are read as pixel values).

        Returns:
            `(B, *image_size, 3)` float32 images: `resized * scale + offset`,
            exactly what the preset's image converter returns.
        """
        images = self._check_images(images)
        x = ops.cast(images, "float32")
        # keras-hub's own converter does the work (resize, then
        # `x * scale + offset`). Its `_call_python` is what its `call` runs
        # outside tf.function/tf.data; `call` would, inside a TensorFlow
        # training step, take its tf.data route pinned to the CPU.
        return self.converter._call_python(x)

    def call(self, images):
        pixels = self.preprocess(images)
        if self._data_format() == "channels_first":
            pixels = ops.transpose(pixels, (0, 3, 1, 2))
        tokens, hidden = self._forward(pixels)
        outputs = {
            teacher_outputs.GRID: self._to_grid(tokens),
            teacher_outputs.GLOBAL: self._global(tokens),
        }
        if self.layer_indices is not None:
            levels = []
            for index in self.layer_indices:
                level = hidden[index]
                if self.normalize_levels:
                    level = self._final_norm(level)
                levels.append(self._to_grid(level))
            outputs[teacher_outputs.LEVELS] = ops.stack(levels, axis=1)
        if self.task is not None:
            head_input = self._head_input(tokens)
            outputs[teacher_outputs.HEAD_INPUT] = head_input
            outputs[teacher_outputs.LOGITS] = self._head(head_input)
        return outputs

    def classifier_logits(self, images):
        """The classifier head's output for raw images (`(B, num_classes)`).

        Only for teachers built from an image classifier task (e.g. a
        `ViTImageClassifier` preset). The head's own activation, if any, is
        applied (keras-hub ViT presets have none: these are logits).
        """
        self._check_has_classifier("classifier_logits()")
        return self(images)[teacher_outputs.LOGITS]

    def head_logits(self, vectors):
        """The classifier head applied to `(B, head_dim)` vectors.

        What the teacher does to its own `"head_input"` output, on any
        vectors of that width (e.g. a student's regressed ones). The result
        is the head's output, as `"logits"` (`(B, num_classes)`).

        Example:
        >>> out = teacher(images)
        >>> teacher.head_logits(out["head_input"])  # == out["logits"]
        """
        self._check_has_classifier("head_logits()")
        vectors = ops.convert_to_tensor(vectors, "float32")
        shape = tuple(vectors.shape)
        if len(shape) != 2 or shape[-1] != self.head_dim:
            raise ValueError(
                f"Expected head inputs of shape (batch, {self.head_dim}). "
                f"Received shape {shape}."
            )
        return self._head(vectors)

    def with_settings(self, **settings):
        """The same frozen backbone with other `Teacher` settings.

        Takes `layers`, `resize_to_grid` and `normalize_levels` (see
        `Teacher`); the others keep this teacher's values. No weights are
        loaded or copied: both teachers share the backbone.

        Example:
        >>> resized = teacher.with_settings(resize_to_grid=(8, 8))
        """
        current = {
            "layers": self.layer_indices,
            "resize_to_grid": self.resize_to_grid,
            "normalize_levels": self.normalize_levels,
        }
        unknown = sorted(set(settings) - set(current))
        if unknown:
            raise ValueError(
                f"`with_settings` takes {sorted(current)}. Received {unknown}."
            )
        current.update(settings)
        return type(self)(
            self.model, image_converter=self.image_converter, **current
        )

    # ------------------------------------------------------------------
    # Internals.

    def _forward(self, pixels):
        wanted = set(self.layer_indices or ())
        hidden = {}
        x = self._embed(pixels)
        for index, block in enumerate(self._blocks()):
            x = block(x)
            if index in wanted:
                hidden[index] = x
        return self._final_norm(x), hidden

    def _check_has_classifier(self, what):
        if self.task is None:
            raise ValueError(
                f"This {type(self).__name__} has no classifier head: it was "
                f"built from a bare {type(self.backbone).__name__}. Load an "
                "image-classifier preset (a preset with a `task.json`, e.g. "
                f"a `ViTImageClassifier`) to use `{what}`."
            )

    def _to_grid(self, tokens):
        """`(B, prefix + h*w, D)` tokens -> `(B, h, w, D)` patch grid."""
        height, width = self._native_grid
        patches = tokens[:, self._num_prefix_tokens() :, :]
        grid = ops.reshape(patches, (-1, height, width, ops.shape(tokens)[-1]))
        if self.resize_to_grid is not None and (
            self.resize_to_grid != self._native_grid
        ):
            dtype = grid.dtype
            grid = ops.image.resize(
                ops.cast(grid, "float32"),
                size=self.resize_to_grid,
                interpolation="bilinear",
                antialias=False,
                data_format="channels_last",
            )
            grid = ops.cast(grid, dtype)
        return grid

    def _check_images(self, images):
        if isinstance(images, dict) or not hasattr(images, "shape"):
            if isinstance(images, (list, tuple)):
                images = np.asarray(images)
            else:
                raise ValueError(
                    "Expected a batch of RGB images of shape (batch, height, "
                    f"width, 3). Received {type(images).__name__}."
                )
        shape = tuple(images.shape)
        if len(shape) != 4:
            hint = ""
            if len(shape) == 3:
                hint = " Add a batch axis with `x[None]`."
            raise ValueError(
                "Expected a rank-4 batch of channels-last RGB images "
                "(batch, height, width, 3) with values in [0, 255]. "
                f"Received rank {len(shape)} with shape {shape}.{hint}"
            )
        if shape[-1] is not None and shape[-1] != 3:
            raise ValueError(
                "Expected channels-last RGB images with 3 channels, shape "
                f"(batch, height, width, 3). Received shape {shape} with "
                f"{shape[-1]} channels."
            )
        for axis, name in ((1, "height"), (2, "width")):
            if shape[axis] is not None and shape[axis] < 1:
                raise ValueError(
                    f"Expected images with a positive {name}. Received "
                    f"shape {shape}."
                )
        check_pixel_dtype(images)
        return images

    def _check_data_format(self):
        data_format = self._data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"Unknown backbone data format {data_format!r}.")

    def _set_preprocessing(self, converter):
        if converter is None:
            if self.default_preprocessing is None:
                raise ValueError(
                    f"`{type(self).__name__}` has no default preprocessing: "
                    "pass an `image_converter`."
                )
            mean, std, self.interpolation = self.default_preprocessing
            scale, offset = teacher_utils.mean_std_to_scale_offset(mean, std)
            self.antialias = False
            # keras-hub's `ImageConverter` centre-crops to the aspect ratio
            # by default.
            self.crop_to_aspect_ratio = True
            self.pad_to_aspect_ratio = False
        else:
            for attribute in ("scale", "offset", "resizing"):
                if not hasattr(converter, attribute):
                    raise ValueError(
                        "Expected `image_converter` to be a keras-hub "
                        "`ImageConverter` (with `scale`, `offset` and "
                        f"`resizing`). Received {type(converter).__name__}."
                    )
            scale, offset = converter.scale, converter.offset
            resizing = converter.resizing
            self.interpolation = resizing.interpolation
            self.antialias = bool(resizing.antialias)
            self.crop_to_aspect_ratio = bool(resizing.crop_to_aspect_ratio)
            self.pad_to_aspect_ratio = bool(resizing.pad_to_aspect_ratio)
        self.scale = teacher_utils.normalization_values(scale, "scale")
        self.offset = teacher_utils.normalization_values(offset, "offset")
        # One owner of the teacher's preprocessing: keras-hub's
        # `ImageConverter` (the preset's own class and settings, or the
        # family's defaults), resized to the backbone's input size and kept
        # channels_last (`call` transposes for channels_first backbones).
        if converter is None:
            self.converter = keras_hub.layers.ImageConverter(
                image_size=self.image_size,
                scale=None if self.scale is None else np.asarray(
                    self.scale
                ).tolist(),
                offset=None if self.offset is None else np.asarray(
                    self.offset
                ).tolist(),
                interpolation=self.interpolation,
                antialias=self.antialias,
                crop_to_aspect_ratio=self.crop_to_aspect_ratio,
                pad_to_aspect_ratio=self.pad_to_aspect_ratio,
                data_format="channels_last",
                dtype="float32",
            )
        else:
            config = converter.get_config()
            config.update(
                image_size=self.image_size,
                data_format="channels_last",
                dtype="float32",
            )
            self.converter = type(converter).from_config(config)

    # ------------------------------------------------------------------
    # Construction from presets and serialization.

    @classmethod
    def from_preset(
        cls,
        preset,
        layers=None,
        resize_to_grid=None,
        normalize_levels=True,
        load_weights=True,
        **kwargs,
    ):
        """Loads a teacher from a keras-hub preset.

        The teacher class is the one registered for the model class the
        preset holds (`teacher_registry`; keras-hub's `Backbone.from_preset`
        finds a backbone's class from the preset the same way):
        `ViTBackbone` -> `ViTTeacher`, `DINOV2Backbone` -> `DINOV2Teacher`,
        `CLIPBackbone` or `CLIPVisionEncoder` -> `CLIPTeacher`. A preset
        saved from a task whose head a teacher reads (e.g. a
        `ViTImageClassifier`, with a `task.json`) loads as that task, head
        included; otherwise its backbone is loaded. A Hugging Face
        checkpoint (`hf://` handle or `save_pretrained` folder: DINOv2,
        ViT, CLIP) loads through `hf_checkpoints`, with its own
        `preprocessor_config.json` preprocessing. On a subclass
        (`ViTTeacher.from_preset`) only that class is considered. The
        preset's image converter (if any) sets the normalisation.

        Args:
            preset: a keras-hub preset name, hub handle or local directory.
            layers, resize_to_grid, normalize_levels: see `Teacher`.
            load_weights: bool, load the preset's weights (else random).
            **kwargs: forwarded to the keras-hub loader, e.g. `dtype` or
                `image_shape` (DINOv2 interpolates its position embeddings
                to a new `image_shape`).

        Example:
        >>> teacher = Teacher.from_preset("clip_vit_large_patch14")
        >>> teacher.grid_shape, teacher.feature_dim, teacher.global_dim
        ((16, 16), 1024, 768)
        """
        from keras_apm.teachers import hf_checkpoints

        if hf_checkpoints.is_hf_checkpoint(preset):
            teacher_cls, model, converter = hf_checkpoints.checkpoint_model(
                cls, preset, load_weights=load_weights, **kwargs
            )
        else:
            teacher_cls, model, converter = cls._preset_model(
                preset, load_weights=load_weights, **kwargs
            )
        return teacher_cls(
            model,
            layers=layers,
            resize_to_grid=resize_to_grid,
            image_converter=converter,
            normalize_levels=normalize_levels,
        )

    @classmethod
    def _preset_model(cls, preset, load_weights=True, **kwargs):
        """The `(teacher class, model, image converter)` of a keras-hub preset."""
        # Checksums and files of a local preset, named when bad (keras-hub
        # reads them without saying which file failed).
        from keras_apm.utils import preset_files

        handle = preset_files.resolve_handle(preset)
        if isinstance(handle, str) and os.path.isdir(handle):
            preset_files.check_preset_files(handle)
        task_cls = teacher_utils.preset_task_class(preset)
        backbone_cls = teacher_utils.preset_backbone_class(preset)
        teacher_cls = None
        for model_cls in (task_cls, backbone_cls):
            teacher_cls = cls._adapter_for(model_cls)
            if teacher_cls is not None:
                break
        if teacher_cls is None:
            supported = teacher_registry.supported_model_names(
                None if cls is Teacher else [cls]
            )
            raise ValueError(
                f"Preset {preset!r} holds a {backbone_cls.__name__}; "
                f"`{cls.__name__}.from_preset` supports {supported}."
            )
        model = model_cls.from_preset(
            preset, load_weights=load_weights, **kwargs
        )
        converter = None
        if getattr(model, "preprocessor", None) is not None:
            converter = getattr(model.preprocessor, "image_converter", None)
        if converter is None:
            converter = teacher_utils.load_preset_image_converter(preset)
        return teacher_cls, model, converter

    @classmethod
    def _adapter_for(cls, model_cls):
        """The teacher class for a keras-hub class, or None."""
        if model_cls is None:
            return None
        if cls is Teacher:
            return teacher_registry.teacher_class_for(model_cls)
        return cls if issubclass(model_cls, cls.backbone_classes) else None

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.model),
                "layers": (
                    None
                    if self.layer_indices is None
                    else list(self.layer_indices)
                ),
                "resize_to_grid": self.resize_to_grid,
                "image_converter": (
                    None
                    if self.image_converter is None
                    else keras.saving.serialize_keras_object(
                        self.image_converter
                    )
                ),
                "normalize_levels": self.normalize_levels,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"]
        )
        if config.get("image_converter") is not None:
            config["image_converter"] = keras.saving.deserialize_keras_object(
                config["image_converter"]
            )
        return cls(**config)
