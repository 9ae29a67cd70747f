"""Teachers from Hugging Face checkpoints (`hf://` handles, local folders).

`Teacher.from_preset` hands a Hugging Face checkpoint here: an `hf://org/name`
handle or a local folder written by `save_pretrained` (its `config.json`
holds a `model_type`). The backbone comes from keras-hub's own Hugging Face
converters where they exist and are right, and from keras_apm's otherwise:

| `model_type` | keras-hub model | note |
|---|---|---|
| `dinov2`, `dinov2_with_registers` | `DINOV2Backbone` | keras-hub's converter |
| `vit` (`ViTForImageClassification`) | `ViTImageClassifier` | keras-hub's converter, with the checkpoint's `layer_norm_eps` |
| `clip` (`CLIPModel`) | `CLIPBackbone` (both towers) | `convert_hf_clip` |

The image preprocessing is always the checkpoint's own
`preprocessor_config.json`, applied as the Hugging Face image processor does
(`HFImageConverter`); keras-hub's converters ignore that file.

Reading needs `safetensors` (keras-hub's Hugging Face loader) and, for
`hf://`, the network or a filled Hugging Face cache: `pip install
'keras-apm[hf]'`.

Example:
```python
teacher = keras_apm.teachers.Teacher.from_preset("hf://facebook/dinov2-small")
```
"""

import os

import keras
import keras_hub
import numpy as np

from keras_apm.teachers.hf_image_converter import HFImageConverter
from keras_apm.utils import files
from keras_apm.utils import keras_hub_compat

HF_PREFIX = "hf://"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"

DINOV2_TYPES = ("dinov2", "dinov2_with_registers")
SUPPORTED = (
    "DINOv2 (Dinov2Model), DINOv2 with registers "
    "(Dinov2WithRegistersModel), ViT (ViTForImageClassification) and CLIP "
    "(CLIPModel)"
)


def is_hf_checkpoint(preset):
    """Whether `preset` names a Hugging Face checkpoint.

    True for `hf://` handles and for local folders whose `config.json` has a
    `model_type` (what `save_pretrained` writes; keras-hub presets have a
    `registered_name` instead).
    """
    if not isinstance(preset, str):
        return False
    if preset.startswith(HF_PREFIX):
        return True
    path = os.path.join(preset, CONFIG_FILE)
    if not os.path.isfile(path):
        return False
    config = files.read_json(path, default=None)
    return isinstance(config, dict) and "model_type" in config


def read_json(preset, filename):
    """A JSON file of the checkpoint; clear errors when it cannot be read."""
    try:
        path = keras_hub_compat.get_file(preset, filename)
    except Exception as error:  # hub clients raise many kinds
        if preset.startswith(HF_PREFIX):
            raise ValueError(
                f"Could not read {filename} of the Hugging Face checkpoint "
                f"{preset!r}: {type(error).__name__}: {_first_line(error)}. "
                "Reading an hf:// handle needs the network (or the files in "
                "the Hugging Face cache). Offline, download the checkpoint "
                "elsewhere (`huggingface-cli download "
                f"{preset[len(HF_PREFIX):]} --local-dir DIR`) and pass the "
                "local folder DIR instead."
            ) from None
        raise ValueError(
            f"Could not read {os.path.join(preset, filename)}: "
            f"{_first_line(error)}. A Hugging Face checkpoint folder holds "
            "the files `save_pretrained` writes (config.json, "
            "model.safetensors, preprocessor_config.json)."
        ) from None
    return files.read_json(
        path,
        "The Hugging Face checkpoint file",
        "Save the checkpoint again (`save_pretrained`) or download it again.",
    )


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0].rstrip(".") if text else ""


def _check_safetensors():
    try:
        import safetensors  # noqa: F401
    except ImportError:
        raise ImportError(
            "Loading a Hugging Face checkpoint needs the `safetensors` "
            "package (keras-hub's Hugging Face loader reads it). Install "
            "it with `pip install 'keras-apm[hf]'`."
        ) from None


def load_hf_image_converter(preset):
    """`HFImageConverter` for the checkpoint's `preprocessor_config.json`."""
    config = read_json(preset, PREPROCESSOR_FILE)
    return HFImageConverter.from_preprocessor_config(config)


def model_type(config, preset):
    kind = config.get("model_type")
    if kind not in DINOV2_TYPES + ("vit", "clip"):
        raise ValueError(
            f"The Hugging Face checkpoint {preset!r} is a {kind!r} model; "
            f"keras_apm teachers load {SUPPORTED}."
        )
    return kind


def load_model(preset, config, image_size, load_weights=True, **kwargs):
    """The keras-hub model (backbone or task) of a Hugging Face checkpoint.

    Args:
        preset: `hf://` handle or local folder.
        config: the checkpoint's `config.json`.
        image_size: `(H, W)` the image processor returns.
        load_weights: bool.
        **kwargs: `dtype`.
    """
    _check_safetensors()
    kind = model_type(config, preset)
    height, width = image_size
    if kind in DINOV2_TYPES:
        # DINOv2 interpolates its position embeddings to the processor's
        # crop (as the Hugging Face model does on any input size).
        if kind == "dinov2":
            native = keras_hub.models.DINOV2Backbone.from_preset(
                preset, load_weights=load_weights, **kwargs
            )
            return _interpolate_like_torch(native, (height, width))
        return keras_hub.models.DINOV2Backbone.from_preset(
            preset,
            load_weights=load_weights,
            image_shape=(height, width, 3),
            **kwargs,
        )
    if kind == "vit":
        return _load_vit(preset, config, image_size, load_weights, **kwargs)
    return load_clip_backbone(preset, config, image_size, load_weights, **kwargs)


def torch_bicubic_matrix(in_size, out_size):
    """`(out, in)` matrix of PyTorch's bicubic resize along one axis.

    `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`
    with a `size` and no antialiasing: Keys' cubic with `a = -0.75`, source
    position `(i + 0.5) * in / out - 0.5`, edge indices clamped.
    """
    a = -0.75
    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), "float64")
    for i in range(out_size):
        source = (i + 0.5) * scale - 0.5
        start = int(np.floor(source))
        t = source - start
        weights = (
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        )
        for offset, weight in zip((-1, 0, 1, 2), weights):
            matrix[i, min(max(start + offset, 0), in_size - 1)] += weight
    return matrix


def _interpolate_like_torch(native, image_size):
    """A DINOv2 backbone for `image_size`, interpolated as PyTorch does.

    WORKAROUND, delete when keras-hub interpolates like PyTorch on every
    backend: keras-hub's `DINOV2Embedding` interpolates the position
    embeddings (plain DINOv2: bicubic, no antialiasing) with the backend's
    `ops.image.resize`, whose bicubic on JAX and TensorFlow (`a = -0.5`) is
    not PyTorch's (`a = -0.75`, what Hugging Face runs): 1e-2 relative off
    Hugging Face on JAX for a tiny random model. No upstream issue is
    known. The interpolation depends on the weights only, so it is done
    once here, in NumPy, as PyTorch computes it, and the backbone is built
    at `image_size` with those embeddings as its own (no interpolation left
    in keras-hub, so saving and reloading keep them exactly).

    Args:
        native: a `DINOV2Backbone` at the checkpoint's `image_size`.
        image_size: `(H, W)` the teacher's images have.
    """
    embedding = native.embeddings
    if tuple(embedding.position_embedding_shape) == tuple(image_size):
        return native
    patch = embedding.patch_size
    table = np.asarray(
        keras.ops.convert_to_numpy(embedding.position_embeddings), "float64"
    )
    side = int(round((table.shape[1] - 1) ** 0.5))
    grid = table[0, 1:].reshape(side, side, -1)
    rows = torch_bicubic_matrix(side, image_size[0] // patch)
    cols = torch_bicubic_matrix(side, image_size[1] // patch)
    grid = np.einsum("ij,jkc,lk->ilc", rows, grid, cols)
    table = np.concatenate(
        [table[:, :1], grid.reshape(1, -1, table.shape[-1])], axis=1
    )
    config = native.get_config()
    config.update(
        image_shape=(image_size[0], image_size[1], 3),
        position_embedding_shape=tuple(image_size),
    )
    backbone = type(native).from_config(config)
    resized = {
        id(backbone.embeddings.position_embeddings),
        id(backbone.embeddings.interpolated_position_embeddings),
    }
    for source, target in zip(native.weights, backbone.weights):
        if id(target) in resized:
            target.assign(table.astype(target.dtype))
        else:
            target.assign(source)
    return backbone


def _check_size(preset, config, image_size, model_size):
    if tuple(image_size) != tuple(model_size):
        raise ValueError(
            f"The image processor of {preset!r} ({PREPROCESSOR_FILE}) makes "
            f"{image_size[0]}x{image_size[1]} images, but the model "
            f"({CONFIG_FILE}) takes {model_size[0]}x{model_size[1]}. Fix "
            "one of the two files."
        )


def _load_vit(preset, config, image_size, load_weights, **kwargs):
    architectures = config.get("architectures") or []
    if "ViTForImageClassification" not in architectures:
        raise ValueError(
            f"The ViT checkpoint {preset!r} is a {architectures}; keras-hub "
            "reads ViT weights saved from `ViTForImageClassification` (its "
            "converter expects `vit.`-prefixed names). Save the model as "
            "`ViTForImageClassification` (`save_pretrained`)."
        )
    size = int(config["image_size"])
    _check_size(preset, config, image_size, (size, size))
    # WORKAROUND, delete when keras-hub reads `layer_norm_eps`: keras-hub
    # 0.32's ViT converter (`convert_vit.convert_backbone_config`) drops
    # the checkpoint's `layer_norm_eps` (1e-12 in Google's ViTs) and the
    # backbone uses its default 1e-6, 1.7e-3 off Hugging Face's outputs.
    # No upstream issue is known. `ViTBackbone` takes the epsilon as an
    # argument, so it is passed here and serialises with the backbone.
    backbone = keras_hub.models.ViTBackbone.from_preset(
        preset,
        load_weights=load_weights,
        layer_norm_epsilon=float(config.get("layer_norm_eps", 1e-12)),
        **kwargs,
    )
    return keras_hub.models.ViTImageClassifier.from_preset(
        preset,
        load_weights=load_weights,
        backbone=backbone,
        preprocessor=None,
    )


def load_clip_backbone(
    preset, config=None, image_size=None, load_weights=True, dtype=None
):
    """A keras-hub `CLIPBackbone` (both towers) from a `CLIPModel` checkpoint.

    Example:
    ```python
    backbone = load_clip_backbone("hf://openai/clip-vit-base-patch32")
    ```
    """
    from keras_apm.teachers import convert_hf_clip

    _check_safetensors()
    if config is None:
        config = read_json(preset, CONFIG_FILE)
    if config.get("model_type") != "clip":
        raise ValueError(
            f"Expected a Hugging Face CLIP checkpoint (`model_type: clip`). "
            f"{preset!r} holds {config.get('model_type')!r}."
        )
    size = int(config["vision_config"]["image_size"])
    if image_size is not None:
        _check_size(preset, config, image_size, (size, size))
    backbone = keras_hub.models.CLIPBackbone(
        **convert_hf_clip.convert_backbone_config(config), dtype=dtype
    )
    if load_weights:
        with keras_hub_compat.SafetensorLoader(preset, prefix="") as loader:
            convert_hf_clip.convert_weights(backbone, loader, config)
    else:
        convert_hf_clip.set_position_ids(backbone)
        convert_hf_clip.set_layer_norm_epsilons(backbone, config)
    return backbone


def load_clip_tokenizer(preset):
    """A keras-hub `CLIPTokenizer` from a CLIP checkpoint's BPE files.

    Reads `vocab.json` and `merges.txt` (what the slow tokenizer saves), or
    `tokenizer.json` (the fast one).
    """
    from keras_apm.teachers import convert_hf_clip

    if keras_hub_compat.check_file_exists(preset, "vocab.json"):
        vocabulary = read_json(preset, "vocab.json")
        path = keras_hub_compat.get_file(preset, "merges.txt")
        with open(path, encoding="utf-8") as file:
            lines = file.read().split("\n")
        merges = [
            line for line in lines if line and not line.startswith("#version")
        ]
    elif keras_hub_compat.check_file_exists(preset, "tokenizer.json"):
        model = read_json(preset, "tokenizer.json")["model"]
        vocabulary, merges = model["vocab"], model["merges"]
    else:
        raise ValueError(
            f"The CLIP checkpoint {preset!r} has no tokenizer files "
            "(vocab.json + merges.txt, or tokenizer.json). Save the "
            "tokenizer with the model (`tokenizer.save_pretrained(folder)`)."
        )
    return convert_hf_clip.convert_tokenizer(vocabulary, merges)


def checkpoint_model(cls, preset, load_weights=True, **kwargs):
    """The `(teacher class, model, image converter)` of a Hugging Face
    checkpoint, for `Teacher.from_preset` (`cls`) to build its teacher."""
    from keras_apm.teachers import teacher_registry

    unknown = sorted(set(kwargs) - {"dtype"})
    if unknown:
        raise ValueError(
            f"A Hugging Face teacher takes its image size from "
            f"{PREPROCESSOR_FILE}; `from_preset` accepts only `dtype` among "
            f"the loader arguments for {preset!r}. Received {unknown}."
        )
    config = read_json(preset, CONFIG_FILE)
    model_type(config, preset)
    converter = load_hf_image_converter(preset)
    model = load_model(
        preset, config, converter.image_size, load_weights, **kwargs
    )
    teacher_cls = teacher_registry.teacher_class_for(type(model))
    if cls.__name__ != "Teacher" and not issubclass(teacher_cls, cls):
        raise ValueError(
            f"{preset!r} holds a {type(model).__name__}, which "
            f"`{teacher_cls.__name__}` adapts, not `{cls.__name__}`. Use "
            "`Teacher.from_preset`."
        )
    return teacher_cls, model, converter
