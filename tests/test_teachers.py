"""Tests of the keras-hub teacher adapters on tiny random-weight presets."""

import os

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops
from presets_factory import save_preset
from presets_factory import tiny_vit
from presets_factory import tiny_vit_classifier

import keras_apm
from keras_apm.teachers import CLIPTeacher
from keras_apm.teachers import DINOV2Teacher
from keras_apm.teachers import Teacher
from keras_apm.teachers import ViTTeacher
from keras_apm.teachers import register_teacher
from keras_apm.teachers import teacher_registry
from keras_apm.teachers import teacher_utils
from keras_apm.ttt import LinearHeadClassifier

ATOL = 1e-5


def np_(x):
    return ops.convert_to_numpy(x)


def assert_close(actual, expected, atol=ATOL):
    np.testing.assert_allclose(np_(actual), np_(expected), atol=atol)


def raw_images(rng, shape=(2, 40, 50, 3)):
    return rng.uniform(0, 255, shape).astype("float32")


def scale_offset(mean, std):
    return teacher_utils.mean_std_to_scale_offset(mean, std)


# ----------------------------------------------------------------------------
# Tiny presets, built once per module.


@pytest.fixture(scope="module")
def vit_task(tmp_path_factory):
    """ViTImageClassifier (with class token) + preprocessor, saved as a task."""
    task, converter = tiny_vit_classifier(
        tiny_vit(seed=1, patch_size=4), num_classes=5
    )
    path = save_preset(tmp_path_factory.mktemp("vit_task"), task)
    return path, task, converter


@pytest.fixture(scope="module")
def vit_gap(tmp_path_factory):
    """ViTBackbone without class token, non-square, no image converter."""
    backbone = tiny_vit(
        seed=2, image_shape=(24, 32, 3), patch_size=4, use_class_token=False
    )
    return save_preset(tmp_path_factory.mktemp("vit_gap"), backbone), backbone


@pytest.fixture(scope="module")
def dinov2_reg(tmp_path_factory):
    """DINOv2 with 4 registers, patch 7, with its image converter."""
    keras.utils.set_random_seed(3)
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=7,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        num_register_tokens=4,
        image_shape=(28, 28, 3),
        position_embedding_shape=(28, 28, 3),
    )
    scale, offset = scale_offset(
        teacher_utils.IMAGENET_MEAN, teacher_utils.IMAGENET_STD
    )
    converter = keras_hub.layers.DINOV2ImageConverter(
        image_size=(28, 28), scale=scale, offset=offset, interpolation="bicubic"
    )
    path = str(tmp_path_factory.mktemp("dinov2_reg"))
    backbone.save_to_preset(path)
    converter.save_to_preset(path)
    return path, backbone, converter


@pytest.fixture(scope="module")
def dinov2_plain(tmp_path_factory):
    """DINOv2 without registers, patch 14, no image converter."""
    keras.utils.set_random_seed(4)
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=14,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(28, 28, 3),
        position_embedding_shape=(28, 28, 3),
    )
    path = str(tmp_path_factory.mktemp("dinov2_plain"))
    backbone.save_to_preset(path)
    return path, backbone


def _clip_vision(patch_size=4):
    return keras_hub.models.CLIPVisionEncoder(
        patch_size=patch_size,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        intermediate_dim=32,
        image_shape=(32, 32, 3),
    )


def _clip_converter():
    scale, offset = scale_offset(
        teacher_utils.CLIP_MEAN, teacher_utils.CLIP_STD
    )
    return keras_hub.layers.CLIPImageConverter(
        image_size=(32, 32), scale=scale, offset=offset, interpolation="bicubic"
    )


@pytest.fixture(scope="module")
def clip_full(tmp_path_factory):
    """CLIPBackbone (vision + text) with projection 12 and its converter."""
    keras.utils.set_random_seed(5)
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=50,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=8,
    )
    backbone = keras_hub.models.CLIPBackbone(
        vision_encoder=_clip_vision(), text_encoder=text, projection_dim=12
    )
    converter = _clip_converter()
    path = str(tmp_path_factory.mktemp("clip_full"))
    backbone.save_to_preset(path)
    converter.save_to_preset(path)
    return path, backbone, converter


@pytest.fixture(scope="module")
def clip_vision(tmp_path_factory):
    """Bare CLIPVisionEncoder with a CLIP image converter."""
    keras.utils.set_random_seed(6)
    encoder = _clip_vision()
    converter = _clip_converter()
    path = str(tmp_path_factory.mktemp("clip_vision"))
    encoder.save_to_preset(path)
    converter.save_to_preset(path)
    return path, encoder, converter


# ----------------------------------------------------------------------------
# ViT.


def test_vit_task_preset(vit_task, rng):
    path, task, converter = vit_task
    teacher = Teacher.from_preset(path, layers=[0, -1])
    assert isinstance(teacher, ViTTeacher)
    assert teacher.image_size == (32, 32)
    assert teacher.patch_size == 4
    assert teacher.grid_shape == (8, 8)
    assert (teacher.feature_dim, teacher.global_dim) == (16, 16)
    assert teacher.has_classifier and teacher.num_classes == 5
    assert teacher.layer_indices == (0, 1)

    images = raw_images(rng)
    out = teacher(images)
    assert set(out) == {"grid", "global", "levels", "head_input", "logits"}
    assert tuple(out["grid"].shape) == (2, 8, 8, 16)
    assert tuple(out["global"].shape) == (2, 16)
    assert tuple(out["levels"].shape) == (2, 2, 8, 8, 16)
    assert tuple(out["logits"].shape) == (2, 5)

    # Normalisation is the preset converter's, on the same raw image.
    pixels = np_(converter(images))
    assert_close(teacher.preprocess(images), pixels)
    # Tokens of the original (in-memory) model, computed independently.
    tokens = np_(task.backbone(pixels))
    np.testing.assert_allclose(
        np_(out["grid"]), tokens[:, 1:].reshape(2, 8, 8, 16), atol=ATOL
    )
    np.testing.assert_allclose(np_(out["global"]), tokens[:, 0], atol=ATOL)
    np.testing.assert_allclose(
        np_(out["levels"][:, -1]), np_(out["grid"]), atol=ATOL
    )
    # The task head: same logits as the keras-hub task on converted pixels,
    # from the class token it reads ("token" pooling).
    np.testing.assert_allclose(np_(out["logits"]), np_(task(pixels)), atol=ATOL)
    np.testing.assert_allclose(np_(out["head_input"]), tokens[:, 0], atol=ATOL)
    np.testing.assert_allclose(
        np_(teacher.head_logits(out["head_input"])), np_(out["logits"]),
        atol=ATOL,
    )
    np.testing.assert_allclose(
        np_(teacher.classifier_logits(images)), np_(task(pixels)), atol=ATOL
    )


def test_vit_levels_match_block_outputs(vit_task, rng):
    path, task, converter = vit_task
    teacher = Teacher.from_preset(path, layers=[0], normalize_levels=False)
    images = raw_images(rng)
    pixels = converter(images)
    # Run the first encoder block by hand on the backbone's embeddings.
    embedding = task.backbone.get_layer("vit_patching_and_embedding")
    encoder = task.backbone.get_layer("vit_encoder")
    block0 = np_(encoder.encoder_layers[0](embedding(pixels)))
    level = np_(teacher(images)["levels"])
    assert level.shape == (2, 1, 8, 8, 16)
    np.testing.assert_allclose(
        level[:, 0], block0[:, 1:].reshape(2, 8, 8, 16), atol=ATOL
    )


def test_vit_without_class_token_defaults(vit_gap, rng):
    path, backbone = vit_gap
    teacher = Teacher.from_preset(path)
    assert isinstance(teacher, ViTTeacher)
    assert teacher.image_converter is None
    assert teacher.grid_shape == (6, 8)
    assert not teacher.has_classifier and teacher.num_classes is None
    images = raw_images(rng)
    out = teacher(images)
    assert set(out) == {"grid", "global"}
    # keras-hub ViT preset normalisation: x / 127.5 - 1, bilinear, crop.
    reference = keras_hub.layers.ViTImageConverter(
        image_size=(24, 32), scale=1 / 127.5, offset=-1.0
    )
    pixels = np_(reference(images))
    assert_close(teacher.preprocess(images), pixels)
    tokens = np_(backbone(pixels))
    assert tokens.shape == (2, 48, 16)  # no class token
    np.testing.assert_allclose(
        np_(out["grid"]), tokens.reshape(2, 6, 8, 16), atol=ATOL
    )
    np.testing.assert_allclose(
        np_(out["global"]), tokens.mean(axis=1), atol=ATOL
    )
    with pytest.raises(ValueError, match="no classifier head"):
        teacher.classifier_logits(images)


# ----------------------------------------------------------------------------
# DINOv2.


def test_dinov2_with_registers(dinov2_reg, rng):
    path, backbone, converter = dinov2_reg
    teacher = Teacher.from_preset(path, layers=[0, 1])
    assert isinstance(teacher, DINOV2Teacher)
    assert teacher.num_register_tokens == 4
    assert teacher.patch_size == 7
    assert teacher.grid_shape == (4, 4)
    assert (teacher.feature_dim, teacher.global_dim) == (16, 16)
    assert teacher.interpolation == "bicubic"
    images = raw_images(rng)
    out = teacher(images)
    assert tuple(out["grid"].shape) == (2, 4, 4, 16)
    assert tuple(out["global"].shape) == (2, 16)
    assert tuple(out["levels"].shape) == (2, 2, 4, 4, 16)

    pixels = np_(converter(images))
    assert_close(teacher.preprocess(images), pixels)
    tokens = np_(backbone({"images": pixels}))
    assert tokens.shape == (2, 1 + 4 + 16, 16)
    # [CLS, 4 registers, 16 patches]: the grid skips CLS and the registers.
    np.testing.assert_allclose(
        np_(out["grid"]), tokens[:, 5:].reshape(2, 4, 4, 16), atol=ATOL
    )
    np.testing.assert_allclose(np_(out["global"]), tokens[:, 0], atol=ATOL)
    np.testing.assert_allclose(
        np_(out["levels"][:, -1]), np_(out["grid"]), atol=ATOL
    )
    # Level 0 = the backbone's own first stage output through its norm.
    stages = keras.Model(backbone.inputs, backbone.pyramid_outputs["stage1"])
    stage1 = np_(backbone.layernorm(stages({"images": pixels})))
    np.testing.assert_allclose(
        np_(out["levels"][:, 0]), stage1[:, 5:].reshape(2, 4, 4, 16), atol=ATOL
    )


def test_dinov2_without_registers_defaults(dinov2_plain, rng):
    path, backbone = dinov2_plain
    teacher = Teacher.from_preset(path, layers=[-2], normalize_levels=False)
    assert isinstance(teacher, DINOV2Teacher)
    assert teacher.num_register_tokens == 0
    assert teacher.image_converter is None
    assert teacher.grid_shape == (2, 2)
    assert teacher.patch_size == 14
    images = raw_images(rng)
    out = teacher(images)
    # Default: ImageNet mean/std, bicubic, as the keras-hub DINOv2 presets.
    scale, offset = scale_offset(
        teacher_utils.IMAGENET_MEAN, teacher_utils.IMAGENET_STD
    )
    reference = keras_hub.layers.DINOV2ImageConverter(
        image_size=(28, 28), scale=scale, offset=offset, interpolation="bicubic"
    )
    pixels = np_(reference(images))
    assert_close(teacher.preprocess(images), pixels)
    tokens = np_(backbone({"images": pixels}))
    np.testing.assert_allclose(
        np_(out["grid"]), tokens[:, 1:].reshape(2, 2, 2, 16), atol=ATOL
    )
    np.testing.assert_allclose(np_(out["global"]), tokens[:, 0], atol=ATOL)
    # Raw (un-normed) level of block 0 = the backbone's stage1 pyramid output.
    stages = keras.Model(backbone.inputs, backbone.pyramid_outputs["stage1"])
    stage1 = np_(stages({"images": pixels}))
    np.testing.assert_allclose(
        np_(out["levels"][:, 0]), stage1[:, 1:].reshape(2, 2, 2, 16), atol=ATOL
    )


# ----------------------------------------------------------------------------
# CLIP.


def test_clip_backbone(clip_full, rng):
    path, backbone, converter = clip_full
    teacher = Teacher.from_preset(path, layers=[-1])
    assert isinstance(teacher, CLIPTeacher)
    assert teacher.has_projection
    assert teacher.grid_shape == (8, 8)
    assert (teacher.feature_dim, teacher.global_dim) == (16, 12)
    images = raw_images(rng)
    out = teacher(images)
    assert tuple(out["grid"].shape) == (2, 8, 8, 16)
    assert tuple(out["global"].shape) == (2, 12)
    assert tuple(out["levels"].shape) == (2, 1, 8, 8, 16)

    pixels = np_(converter(images))
    assert_close(teacher.preprocess(images), pixels)
    sequence = np_(backbone.vision_encoder({"images": pixels}))
    np.testing.assert_allclose(
        np_(out["grid"]), sequence[:, 1:].reshape(2, 8, 8, 16), atol=ATOL
    )
    # The projected image embedding, as CLIPBackbone computes it.
    np.testing.assert_allclose(
        np_(out["global"]),
        np_(backbone.get_vision_embeddings(pixels)),
        atol=ATOL,
    )
    np.testing.assert_allclose(
        np_(out["levels"][:, 0]), np_(out["grid"]), atol=ATOL
    )


def test_clip_vision_encoder(clip_vision, rng):
    path, encoder, converter = clip_vision
    teacher = Teacher.from_preset(path, layers=[0, -1])
    assert isinstance(teacher, CLIPTeacher)
    assert not teacher.has_projection
    # The converter of a bare vision-encoder preset is found too.
    assert teacher.image_converter is not None
    assert teacher.grid_shape == (8, 8)
    assert (teacher.feature_dim, teacher.global_dim) == (16, 16)
    images = raw_images(rng)
    out = teacher(images)
    pixels = np_(converter(images))
    assert_close(teacher.preprocess(images), pixels)
    sequence = np_(encoder({"images": pixels}))
    np.testing.assert_allclose(
        np_(out["grid"]), sequence[:, 1:].reshape(2, 8, 8, 16), atol=ATOL
    )
    np.testing.assert_allclose(np_(out["global"]), sequence[:, 0], atol=ATOL)
    # Level 0 = the encoder's first block output (functional node), normed.
    block0 = keras.Model(encoder.inputs, encoder.encoder_layers[0].output)
    level0 = np_(encoder.layer_norm(block0({"images": pixels})))
    np.testing.assert_allclose(
        np_(out["levels"][:, 0]), level0[:, 1:].reshape(2, 8, 8, 16), atol=ATOL
    )
    np.testing.assert_allclose(
        np_(out["levels"][:, 1]), np_(out["grid"]), atol=ATOL
    )


# ----------------------------------------------------------------------------
# Shared behaviour.


@pytest.mark.parametrize(
    "fixture", ["vit_task", "dinov2_reg", "clip_full", "clip_vision"]
)
def test_frozen(fixture, request):
    path = request.getfixturevalue(fixture)[0]
    teacher = Teacher.from_preset(path)
    assert not teacher.trainable
    assert not teacher.backbone.trainable
    assert teacher.trainable_weights == []
    assert len(teacher.non_trainable_weights) > 0


def test_grid_mismatch_and_resize(dinov2_reg, rng):
    path = dinov2_reg[0]
    teacher = Teacher.from_preset(path, layers=[0, 1])
    assert teacher.check_grid((4, 4)) == (4, 4)
    with pytest.raises(ValueError, match="resize_to_grid=\\(5, 6\\)"):
        teacher.check_grid((5, 6))
    with pytest.raises(ValueError, match="pair of positive ints"):
        teacher.check_grid((4,))

    resized = Teacher.from_preset(path, layers=[0, 1], resize_to_grid=(5, 6))
    assert resized.grid_shape == (5, 6)
    assert resized.native_grid_shape == (4, 4)
    assert resized.check_grid((5, 6)) == (5, 6)
    with pytest.raises(ValueError, match="resize_to_grid"):
        resized.check_grid((4, 4))
    images = raw_images(rng)
    native = teacher(images)
    out = resized(images)
    assert tuple(out["grid"].shape) == (2, 5, 6, 16)
    assert tuple(out["levels"].shape) == (2, 2, 5, 6, 16)
    expected = ops.image.resize(
        native["grid"], (5, 6), interpolation="bilinear"
    )
    np.testing.assert_allclose(np_(out["grid"]), np_(expected), atol=ATOL)
    np.testing.assert_allclose(
        np_(out["levels"][:, -1]), np_(out["grid"]), atol=ATOL
    )
    np.testing.assert_allclose(np_(out["global"]), np_(native["global"]))


def test_bad_images(clip_vision, rng):
    teacher = Teacher.from_preset(clip_vision[0])
    with pytest.raises(ValueError, match="rank-4"):
        teacher(raw_images(rng, (32, 32, 3)))
    with pytest.raises(ValueError, match="3 channels"):
        teacher(raw_images(rng, (1, 32, 32, 4)))
    with pytest.raises(ValueError, match="3 channels"):
        teacher.preprocess(raw_images(rng, (1, 3, 32, 32)))
    with pytest.raises(ValueError, match="dtype bool"):
        teacher.preprocess(np.zeros((1, 32, 32, 3), "bool"))


def test_integer_images_read_as_pixels(clip_vision, rng):
    teacher = Teacher.from_preset(clip_vision[0])
    images = rng.integers(0, 256, (2, 40, 50, 3)).astype("uint8")
    np.testing.assert_allclose(
        np_(teacher(images)["grid"]),
        np_(teacher(images.astype("float32"))["grid"]),
        atol=ATOL,
    )


def test_bad_arguments(vit_task, dinov2_plain, clip_vision):
    path, task, _ = vit_task
    with pytest.raises(ValueError, match="out of range"):
        ViTTeacher(task, layers=[2])
    with pytest.raises(ValueError, match="out of range"):
        ViTTeacher(task, layers=[-3])
    with pytest.raises(ValueError, match="hold ints"):
        ViTTeacher(task, layers=[0.5])
    with pytest.raises(ValueError, match="at least one"):
        ViTTeacher(task, layers=[])
    with pytest.raises(ValueError, match="pair of positive ints"):
        ViTTeacher(task, resize_to_grid=(0, 4))
    with pytest.raises(ValueError, match="expects one of"):
        DINOV2Teacher(task.backbone)
    with pytest.raises(ValueError, match="abstract base class"):
        Teacher(task.backbone)
    with pytest.raises(ValueError, match="DINOV2Backbone"):
        ViTTeacher.from_preset(dinov2_plain[0])
    with pytest.raises(ValueError, match="ImageConverter"):
        ViTTeacher(task, image_converter=object())
    # A layer index given as a single int is accepted.
    assert CLIPTeacher.from_preset(clip_vision[0], layers=-1).num_levels == 1


def test_constructor_from_backbone(vit_task, rng):
    _, task, converter = vit_task
    teacher = ViTTeacher(task.backbone, image_converter=converter)
    assert not teacher.has_classifier
    images = raw_images(rng)
    tokens = np_(task.backbone(converter(images)))
    np.testing.assert_allclose(
        np_(teacher(images)["grid"]), tokens[:, 1:].reshape(2, 8, 8, 16),
        atol=ATOL,
    )


def test_functional_model_and_serialization(clip_full, rng):
    teacher = Teacher.from_preset(clip_full[0], layers=[0])
    images = raw_images(rng)
    eager = teacher(images)

    inputs = keras.Input((40, 50, 3))
    model = keras.Model(inputs, teacher(inputs))
    compiled = model.predict(images, verbose=0)
    for key in ("grid", "global", "levels"):
        np.testing.assert_allclose(
            np_(compiled[key]), np_(eager[key]), atol=1e-4
        )

    config = keras.saving.serialize_keras_object(teacher)
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, CLIPTeacher)
    assert clone.layer_indices == (0,)
    clone.set_weights(teacher.get_weights())
    np.testing.assert_allclose(
        np_(clone(images)["global"]), np_(eager["global"]), atol=ATOL
    )


# ----------------------------------------------------------------------------
# The registry: how `Teacher.from_preset` finds a teacher, and adding one.


def test_registry_maps_keras_hub_classes_to_teachers():
    find = teacher_registry.teacher_class_for
    assert find(keras_hub.models.ViTImageClassifier) is ViTTeacher
    assert find(keras_hub.models.DINOV2Backbone) is DINOV2Teacher
    assert find(keras_hub.models.CLIPVisionEncoder) is CLIPTeacher
    # A subclass of a supported keras-hub class is adapted too (MRO).
    subclass = type("MyViT", (keras_hub.models.ViTBackbone,), {})
    assert find(subclass) is ViTTeacher
    assert find(keras_hub.models.DeiTBackbone) is None
    with pytest.raises(ValueError, match="already adapted by `ViTTeacher`"):
        register_teacher(
            type("OtherViT", (ViTTeacher,), {"__module__": __name__})
        )
    with pytest.raises(ValueError, match="backbone_classes"):
        register_teacher(type("NoClasses", (Teacher,), {}))


def test_every_teacher_module_registers_and_exports_its_class():
    # A new `*_teacher.py` file is all a new teacher needs: the package
    # imports it, it registers itself, and it is exported by name.
    folder = os.path.dirname(keras_apm.teachers.__file__)
    modules = {
        f"keras_apm.teachers.{name[:-3]}"
        for name in os.listdir(folder)
        if name.endswith("_teacher.py")
    }
    registered = teacher_registry.registered_teachers()
    assert {t.__module__ for t in registered} == modules
    for teacher_cls in registered:
        assert getattr(keras_apm.teachers, teacher_cls.__name__) is teacher_cls
        assert teacher_cls.__name__ in keras_apm.teachers.__all__


class DeiTTeacher(Teacher):
    """A teacher added the way CONTRIBUTING.md says: one class, registered.

    keras-hub's DeiT puts a class and a distillation token ahead of the
    patches, and its encoder blocks return `(tokens, attention scores)`.
    """

    backbone_classes = (
        keras_hub.models.DeiTBackbone,
        keras_hub.models.DeiTImageClassifier,
    )
    default_preprocessing = teacher_utils.Preprocessing(
        teacher_utils.IMAGENET_MEAN, teacher_utils.IMAGENET_STD, "bicubic"
    )

    @property
    def _encoder(self):
        return self.backbone.get_layer("deit_encoder")

    def _num_prefix_tokens(self):
        return 2

    def _embed(self, pixels):
        return self.backbone.get_layer("deit_patching_and_embedding")(pixels)

    def _blocks(self):
        return [lambda x, b=b: b(x)[0] for b in self._encoder.encoder_layers]

    def _final_norm(self, tokens):
        return self._encoder.layer_norm(tokens)

    def _head_input(self, tokens):
        return tokens[:, 0]  # "token" pooling

    def _head(self, vectors):
        return self.task.output_dense(vectors)


@pytest.fixture
def deit_registered(monkeypatch):
    # Registered for this test only.
    registry = dict(teacher_registry._TEACHERS)
    monkeypatch.setattr(teacher_registry, "_TEACHERS", registry)
    return register_teacher(DeiTTeacher)


def test_added_teacher_is_found_and_its_head_classifies(
    deit_registered, tmp_path, rng
):
    keras.utils.set_random_seed(9)
    backbone = keras_hub.models.DeiTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2,
        hidden_dim=8, intermediate_dim=16,
    )  # fmt: skip
    task = keras_hub.models.DeiTImageClassifier(backbone=backbone, num_classes=3)
    task.save_to_preset(str(tmp_path))
    teacher = Teacher.from_preset(str(tmp_path), layers=[-1])
    assert isinstance(teacher, DeiTTeacher) and teacher.has_classifier
    assert (teacher.grid_shape, teacher.feature_dim) == ((4, 4), 8)

    images = raw_images(rng)
    out = teacher(images)
    pixels = teacher.preprocess(images)
    tokens = np_(backbone(pixels))
    np.testing.assert_allclose(
        np_(out["grid"]), tokens[:, 2:].reshape(2, 4, 4, 8), atol=ATOL
    )
    np.testing.assert_allclose(np_(out["levels"][:, 0]), np_(out["grid"]), atol=ATOL)
    np.testing.assert_allclose(np_(out["logits"]), np_(task(pixels)), atol=ATOL)

    # Head-based classification needs nothing DeiT-specific.
    classifier = LinearHeadClassifier(teacher)
    assert (classifier.target_dim, classifier.num_classes) == (8, 3)
    np.testing.assert_allclose(
        classifier.scores(classifier.target(out)), np_(out["logits"]), atol=ATOL
    )
    np.testing.assert_allclose(classifier.teacher_scores(out), np_(out["logits"]))


def test_gap_head_reads_all_tokens_even_on_a_resized_grid(rng):
    backbone = tiny_vit(
        seed=10, image_shape=(16, 16, 3), patch_size=4, num_layers=1,
        hidden_dim=8, mlp_dim=16,
    )
    task = keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=4, pooling="gap", intermediate_dim=6
    )
    teacher = ViTTeacher(task, resize_to_grid=(3, 3))
    images = raw_images(rng)
    out = teacher(images)
    pixels = teacher.preprocess(images)
    np.testing.assert_allclose(
        np_(out["head_input"]), np_(backbone(pixels)).mean(axis=1), atol=ATOL
    )
    np.testing.assert_allclose(np_(out["logits"]), np_(task(pixels)), atol=ATOL)
    classifier = LinearHeadClassifier(teacher)
    np.testing.assert_allclose(
        classifier.scores(classifier.target(out)), np_(out["logits"]), atol=ATOL
    )
    with pytest.raises(ValueError, match=r"\(batch, 8\)"):
        teacher.head_logits(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="needs a teacher with a classifier"):
        LinearHeadClassifier(ViTTeacher(backbone))


def test_with_settings_shares_the_backbone(vit_task):
    teacher = Teacher.from_preset(vit_task[0])
    levels = teacher.with_settings(layers=[0, -1], resize_to_grid=(4, 4))
    assert levels.model is teacher.model
    assert levels.image_converter is teacher.image_converter
    assert (levels.layer_indices, levels.grid_shape) == ((0, 1), (4, 4))
    with pytest.raises(ValueError, match="with_settings"):
        teacher.with_settings(dtype="float16")
