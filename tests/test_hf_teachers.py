"""Teachers from Hugging Face checkpoints equal their `transformers` peers.

Each family is a random-weight `transformers` model built from a tiny config,
saved with `save_pretrained` next to an image processor with non-default
mean/std, and loaded with `Teacher.from_preset(folder)`. Its outputs must
equal the Hugging Face model's on the pixels the Hugging Face processor
makes from the same raw RGB images (docs/teachers.md lists which tensor each
output equals).
"""

import json
import os

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from keras import ops  # noqa: E402

from keras_apm.teachers import Teacher  # noqa: E402
from keras_apm.teachers.hf_image_converter import HFImageConverter  # noqa: E402

MEAN = [0.4, 0.5, 0.6]
STD = [0.2, 0.3, 0.25]
COMMON = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
# A tiny byte-level BPE for CLIP: every byte, its end-of-word form, a few
# merges, and the special tokens last (the end token must have the largest
# id: keras-hub's CLIP pools the text at the argmax of the ids).
MERGES = ["c a", "ca t</w>", "d o", "do g</w>", "o f</w>"]


def _processor(kind, **kwargs):
    # The PIL backends: what `AutoImageProcessor` gives without
    # torchvision, and the reference the teachers match.
    cls = {
        "clip": transformers.CLIPImageProcessorPil,
        "vit": transformers.ViTImageProcessorPil,
        "dinov2": transformers.BitImageProcessorPil,
    }[kind]
    return cls(image_mean=MEAN, image_std=STD, **kwargs)


def _clip_tokenizer(folder):
    # GPT-2's byte -> printable-character table (CLIP's BPE alphabet).
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols = [chr(b) for b in printable]
    symbols += [chr(256 + n) for n in range(256 - len(printable))]
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [m.replace(" ", "") for m in MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return vocab


def _build(kind, folder):
    torch.manual_seed(0)
    if kind in ("dinov2", "dinov2_with_registers"):
        config_cls = (
            transformers.Dinov2Config
            if kind == "dinov2"
            else transformers.Dinov2WithRegistersConfig
        )
        extra = {} if kind == "dinov2" else {"num_register_tokens": 4}
        # Trained at 42px, used at the processor's 28px crop: both
        # interpolate the position embeddings.
        config = config_cls(
            image_size=42, patch_size=7, mlp_ratio=2, **COMMON, **extra
        )
        model = transformers.AutoModel.from_config(config)
        processor = _processor(
            "dinov2",
            size={"shortest_edge": 32},
            crop_size={"height": 28, "width": 28},
            resample=3,
        )
    elif kind == "vit":
        config = transformers.ViTConfig(
            image_size=32, patch_size=8, intermediate_size=64, num_labels=5,
            **COMMON,
        )
        model = transformers.ViTForImageClassification(config)
        processor = _processor("vit", size={"height": 32, "width": 32})
    else:
        vocab = _clip_tokenizer(folder)
        end = vocab["<|endoftext|>"]
        tower = dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2,
        )
        config = transformers.CLIPConfig(
            text_config=dict(
                vocab_size=len(vocab), max_position_embeddings=16,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=end,
                pad_token_id=end, **tower,
            ),
            vision_config=dict(image_size=32, patch_size=8, **tower),
            projection_dim=16,
        )
        model = transformers.CLIPModel(config)
        processor = _processor(
            "clip",
            size={"shortest_edge": 36},
            crop_size={"height": 32, "width": 32},
        )
        transformers.CLIPTokenizer(
            os.path.join(folder, "vocab.json"),
            os.path.join(folder, "merges.txt"),
        ).save_pretrained(folder)
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


FAMILIES = ["dinov2", "dinov2_with_registers", "vit", "clip"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}
    for kind in FAMILIES:
        folder = str(tmp_path_factory.mktemp(kind))
        made[kind] = (folder,) + _build(kind, folder)
    return made


def _reference(kind, model, pixels):
    """The Hugging Face tensors our outputs must equal (docs/teachers.md)."""
    with torch.no_grad():
        x = torch.from_numpy(pixels)
        if kind == "vit":
            hidden = model.vit(x).last_hidden_state
            return {
                "grid": hidden[:, 1:],
                "global": hidden[:, 0],
                "logits": model(x).logits,
            }
        if kind == "clip":
            vision = model.vision_model(x)
            normed = model.vision_model.post_layernorm(vision.last_hidden_state)
            return {
                "grid": normed[:, 1:],
                "global": model.visual_projection(vision.pooler_output),
            }
        hidden = model(x).last_hidden_state
        prefix = 1 + getattr(model.config, "num_register_tokens", 0)
        return {"grid": hidden[:, prefix:], "global": hidden[:, 0]}


def _relative_error(ours, reference):
    ours = np.asarray(ops.convert_to_numpy(ours), "float64")
    reference = reference.detach().numpy().astype("float64")
    reference = reference.reshape(ours.shape)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("kind", FAMILIES)
def test_teacher_equals_hugging_face(checkpoints, kind):
    folder, model, processor = checkpoints[kind]
    teacher = Teacher.from_preset(folder)
    rng = np.random.RandomState(1)
    # Raw photos larger than the crop, of two aspect ratios: the resize,
    # the crop and the normalisation are all the processor's.
    for shape in [(2, 45, 61, 3), (2, 70, 40, 3)]:
        images = rng.randint(0, 256, shape).astype("uint8")
        pixels = processor(images=list(images), return_tensors="np")
        pixels = pixels["pixel_values"]
        np.testing.assert_allclose(
            ops.convert_to_numpy(teacher.preprocess(images)),
            pixels.transpose(0, 2, 3, 1),
            atol=2e-6,
        )
        outputs = teacher(images)
        expected = _reference(kind, model, pixels)
        assert set(expected) <= set(outputs)
        errors = {}
        for name, reference in expected.items():
            error = _relative_error(outputs[name], reference)
            errors[name] = error
        assert max(errors.values()) <= 1e-5, (kind, errors)


@pytest.mark.parametrize("kind", ["dinov2", "clip"])
def test_hf_teacher_config_round_trip(checkpoints, kind):
    # The Hugging Face preprocessing and the PyTorch-interpolated DINOv2
    # position embeddings survive `get_config` / `from_config` + weights.
    teacher = Teacher.from_preset(checkpoints[kind][0])
    restored = type(teacher).from_config(teacher.get_config())
    restored.set_weights(teacher.get_weights())
    assert isinstance(restored.converter, HFImageConverter)
    images = np.random.RandomState(3).randint(0, 256, (1, 50, 41, 3))
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored(images)["grid"]),
        ops.convert_to_numpy(teacher(images)["grid"]),
        atol=1e-6,
    )


def test_vit_layer_norm_epsilon_is_the_checkpoints(checkpoints):
    folder = checkpoints["vit"][0]
    teacher = Teacher.from_preset(folder)
    # keras-hub's converter would leave its 1e-6 default here.
    assert teacher.backbone.layer_norm_epsilon == 1e-12
    assert teacher.num_classes == 5


def test_clip_text_tower_equals_hugging_face(checkpoints):
    from keras_apm.teachers import hf_checkpoints
    from keras_apm.ttt.classifiers import clip_text_embeddings

    folder, model, _ = checkpoints["clip"]
    backbone = hf_checkpoints.load_clip_backbone(folder)
    tokenizer = hf_checkpoints.load_clip_tokenizer(folder)
    prompts = ["a cat", "of a dog", "cat dog"]
    ours = clip_text_embeddings(backbone, tokenizer, prompts)
    hf_tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    ids = hf_tokenizer(
        prompts, padding="max_length", max_length=16, return_tensors="pt"
    )["input_ids"]
    with torch.no_grad():
        text = model.text_model(input_ids=ids)
        reference = model.text_projection(text.pooler_output)
    assert _relative_error(ours, reference) <= 1e-5


def test_image_converter_matches_processor_on_any_size():
    # Down- and up-scaling, both axes or one: bit-identical resized pixels.
    rng = np.random.RandomState(2)
    processor = _processor(
        "clip", size={"shortest_edge": 24}, crop_size={"height": 20,
                                                       "width": 20},
    )
    converter = HFImageConverter.from_preprocessor_config(processor.to_dict())
    for shape in [(1, 77, 39, 3), (1, 45, 115, 3), (1, 13, 17, 3)]:
        images = rng.randint(0, 256, shape).astype("uint8")
        expected = processor(images=list(images), return_tensors="np")
        np.testing.assert_allclose(
            ops.convert_to_numpy(converter(images.astype("float32"))),
            expected["pixel_values"].transpose(0, 2, 3, 1),
            atol=2e-6,
        )


def test_offline_hub_handle_is_a_clear_error(monkeypatch):
    # What an offline machine sees, without waiting for the hub client's
    # network retries.
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="local folder"):
        Teacher.from_preset("hf://openai/clip-vit-base-patch32")


def test_unsupported_model_type(tmp_path):
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, vocab_size=50,
    )
    transformers.BertModel(config).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="keras_apm teachers load"):
        Teacher.from_preset(str(tmp_path))


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="CLI plumbing is backend-free; the Hugging Face teacher's numbers "
    "are checked on every backend by test_teacher_equals_hugging_face",
)
def test_distill_cli_from_hf_teacher(checkpoints, tmp_path):
    from keras_apm.cli import main

    folder = checkpoints["vit"][0]
    out = str(tmp_path / "run")
    code = main(
        [
            "distill",
            "--teacher", folder,
            "--dataset", "sklearn_digits",
            "--split", "train[:32]",
            "--validation-split", "test[:16]",
            "--batch-size", "16",
            "--epochs", "1",
            "--data-dir", str(tmp_path / "tfds"),
            "--output", out,
        ]
    )
    assert code == 0
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    assert np.isfinite(metrics["validation"]["grid_loss"])
    assert -1 <= metrics["validation"]["grid_cosine"] <= 1


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="CLI plumbing is backend-free; the Hugging Face teacher's numbers "
    "are checked on every backend by test_teacher_equals_hugging_face",
)
def test_ttt_cli_zero_shot_with_hf_clip(checkpoints, tmp_path):
    from keras_apm.cli import main
    from test_ttt_cli import write_digit_folder

    folder = checkpoints["clip"][0]
    photos = write_digit_folder(tmp_path / "digits", per_class=1)
    out = tmp_path / "result.json"
    code = main(
        [
            "ttt",
            "--teacher", folder,
            "--dataset", photos,
            "--steps", "2",
            "--batch-size", "3",
            "--output", str(out),
        ]
    )
    assert code == 0
    record = json.loads(out.read_text())
    assert record["num_images"] == 3
    assert {p["teacher"] for p in record["predictions"]} <= {0, 1, 2}
