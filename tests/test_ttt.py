"""Test-time training: trainer, batched == per-image, no leaks, classifiers."""

import json

import keras
import keras_hub
import numpy as np
import pytest
from presets_factory import save_preset
from presets_factory import tiny_clip
from presets_factory import tiny_vit
from presets_factory import tiny_vit_classifier
from sklearn.datasets import load_digits

import keras_apm
from keras_apm.data import upscale_digits
from keras_apm.models.apm.apm_student import default_student_config
from keras_apm.teachers import Teacher
from keras_apm.ttt import BatchedTTT
from keras_apm.ttt import CLIPZeroShotClassifier
from keras_apm.ttt import EmbeddingClassifier
from keras_apm.ttt import LinearHeadClassifier
from keras_apm.ttt import TestTimeTrainer
from keras_apm.ttt import classifier_for_teacher


@pytest.fixture(scope="module")
def digits():
    """Real handwritten digits, 32x32 RGB in [0, 255], and their labels."""
    data = load_digits()
    return upscale_digits(data.images[:8]).astype("float32"), data.target[:8]


@pytest.fixture(scope="module")
def vit_preset(tmp_path_factory):
    """A tiny random ViTImageClassifier (16x16 input, 4x4 grid) as a preset."""
    backbone = tiny_vit(
        seed=7, image_shape=(16, 16, 3), patch_size=4, num_layers=1,
        hidden_dim=8, mlp_dim=16,
    )
    task, _ = tiny_vit_classifier(backbone, num_classes=10)
    return save_preset(tmp_path_factory.mktemp("vit"), task)


@pytest.fixture(scope="module")
def teacher(vit_preset):
    return Teacher.from_preset(vit_preset)


def write_clip_tokenizer_files(folder):
    """A tiny CLIP BPE vocabulary and merges (end token = largest id)."""
    words = ["a", "photo", "of", "blurry", "cat", "dog", "bird"]
    vocabulary = {}
    for char in sorted(set("".join(words))):
        vocabulary[char] = len(vocabulary)
        vocabulary[char + "</w>"] = len(vocabulary)
    merges = ["#version: 0.2", "c a", "ca t</w>", "d o", "do g</w>"]
    for merge in merges[1:]:
        vocabulary[merge.replace(" ", "")] = len(vocabulary)
    vocabulary["<|startoftext|>"] = len(vocabulary)
    vocabulary["<|endoftext|>"] = len(vocabulary)
    with open(folder / "vocabulary.json", "w") as f:
        json.dump(vocabulary, f)
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    return str(folder / "vocabulary.json"), str(folder / "merges.txt"), vocabulary


@pytest.fixture(scope="module")
def clip_preset(tmp_path_factory):
    """A tiny random CLIPBackbone with its tokenizer, saved as a preset."""
    folder = tmp_path_factory.mktemp("clip")
    vocab_path, merges_path, vocabulary = write_clip_tokenizer_files(folder)
    tokenizer = keras_hub.tokenizers.CLIPTokenizer(
        vocabulary=vocab_path, merges=merges_path
    )
    backbone = tiny_clip(
        seed=8, vocabulary_size=len(vocabulary), hidden_dim=8,
        intermediate_dim=16, projection_dim=8, image_shape=(16, 16, 3),
        patch_size=4, max_sequence_length=20,
    )
    return save_preset(folder / "preset", backbone, tokenizer), vocabulary


# Small tests build their steps the quickest way: TensorFlow graphs without
# XLA; on JAX, jit (eager JAX compiles every op on first use, which is slower).
FAST = {"jit_compile": keras.backend.backend() == "jax"}


def assert_same_result(a, b, atol=1e-4):
    np.testing.assert_allclose(a["global"], b["global"], atol=atol, rtol=1e-4)
    np.testing.assert_allclose(a["loss"], b["loss"], atol=atol, rtol=1e-4)
    np.testing.assert_array_equal(a["predictions"], b["predictions"])


# ----------------------------------------------------------------------------
# The trainer.


@pytest.fixture(scope="module")
def trainer(teacher):
    """One compiled trainer (3 images a step) shared by the tests below."""
    return TestTimeTrainer(
        teacher=teacher,
        steps=3,
        batch_size=3,
        grid_weight=0.5,
        rgb_weight=0.1,
        learning_rate=1e-2,
    )


def test_default_student_and_adaptation(trainer, teacher, digits):
    images, _ = digits
    config = trainer.student.get_config()
    assert tuple(config["image_shape"]) == (16, 16, 3)
    assert tuple(config["trunk_widths"]) == (64, 32, 16)  # (4n, 2n, n), n=16
    assert config["feature_dim"] == 8 and config["global_head"]
    result = trainer.adapt(images[:5])  # 3 + 2 (padded to 3)
    assert result["global"].shape == (5, 8)
    assert result["loss"].shape == (5, 3)
    assert result["scores"].shape == result["teacher_scores"].shape == (5, 10)
    # Each student learns its own image's target: the loss falls.
    # (Adam's second step may overshoot on these 16x16 toys; the third
    # lands below the start for every image.)
    assert np.all(result["loss"][:, -1] < result["loss"][:, 0])
    # The teacher's predictions are its own classifier's.
    logits = keras.ops.convert_to_numpy(teacher(images[:5])["logits"])
    np.testing.assert_array_equal(result["teacher_predictions"], logits.argmax(-1))
    settings = trainer.settings()
    json.dumps(settings)
    assert settings["steps"] == 3 and settings["recipe"] == "default"
    assert settings["optimizer"]["class_name"] == "Adam"


def test_batched_equals_per_image(trainer, digits):
    """One compiled step over B images == Keras' train_on_batch per image."""
    images, _ = digits
    batched = trainer.adapt(images[:3])
    reference = trainer.adapt(images[:3], engine="per_image")
    assert_same_result(batched, reference)


def test_no_state_leaks_between_images(trainer, digits):
    images, _ = digits
    first = trainer.adapt(images[:3])
    again = trainer.adapt(images[:3])  # fresh weights and moments again
    reordered = trainer.adapt(images[[2, 1, 0]])
    # Image 2 next to other images, after two batches of adaptation.
    elsewhere = trainer.adapt(images[[5, 2, 4]])
    for key in ("global", "loss"):
        np.testing.assert_allclose(again[key], first[key], atol=1e-5)
        np.testing.assert_allclose(reordered[key][::-1], first[key], atol=1e-5)
        np.testing.assert_allclose(elsewhere[key][1], first[key][2], atol=1e-5)


def test_batched_equals_per_image_cosine_sgd(teacher, digits):
    images, _ = digits
    optimizer = keras.optimizers.SGD(0.5, momentum=0.9, nesterov=True)
    trainer = TestTimeTrainer(
        teacher=teacher,
        steps=2,
        batch_size=2,
        optimizer=optimizer,
        loss="cosine",
        init="normal",
        **FAST,
    )
    batched = trainer.adapt(images[:2])
    reference = trainer.adapt(images[:2], engine="per_image")
    assert_same_result(batched, reference)
    assert trainer.optimizer is optimizer and not optimizer.built  # not mutated


def test_batched_equals_per_image_on_any_student(teacher, digits):
    """BatchedTTT takes its layout from the student's layers: GLOM levels,
    no RGB head, several column channels."""
    images, _ = digits
    keras.utils.set_random_seed(3)
    model = keras_apm.APM(
        (16, 16, 3),
        4,
        (16, 8),
        8,
        column_channels=2,
        num_levels=3,
        rgb_head=False,
        global_head=True,
        global_num_heads=2,
    )
    trainer = TestTimeTrainer(
        model, teacher, steps=2, batch_size=2, learning_rate=1e-2,
        grid_weight=0.5, loss="cosine", **FAST,
    )
    batched = trainer.adapt(images[:2])
    reference = trainer.adapt(images[:2], engine="per_image")
    assert_same_result(batched, reference)
    # The layout is the student's own variables; heads the loss does not
    # read (the lower levels) are not stacked.
    paths = set(trainer.engine.initial_weights)
    assert paths < {v.path for v in model.trainable_variables}
    assert "field/mlp/trunk_1/kernel" in paths
    assert not any("level_head" in p for p in paths)


def test_fresh_weights_are_seeded(teacher):
    def initial(seed, init="keras"):
        trainer = TestTimeTrainer(teacher=teacher, seed=seed, init=init)
        return [w.copy() for w in trainer.student.get_weights()]

    first, same, other = initial(0), initial(0), initial(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, same))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    normal = np.concatenate([w.ravel() for w in initial(0, "normal")])
    assert abs(normal.std() - 0.01) < 1e-3  # official: N(0, 0.01), biases too


def test_official_recipe(teacher):
    trainer = TestTimeTrainer(teacher=teacher, recipe="official")
    assert trainer.steps == 20 and trainer.loss == "mse"
    assert trainer.init == "normal"
    assert isinstance(trainer.optimizer, keras.optimizers.Adam)
    schedule = keras.optimizers.schedules.deserialize(
        trainer.optimizer.get_config()["learning_rate"]
    )
    np.testing.assert_allclose(
        [float(schedule(s)) for s in (0, 199, 200, 400)],
        [1e-4, 1e-4, 1e-5, 1e-6],
        rtol=1e-5,
    )
    # Explicit arguments override the recipe.
    assert TestTimeTrainer(teacher=teacher, recipe="official", steps=3).steps == 3


def test_student_from_config_and_preset(teacher, digits, tmp_path):
    images, _ = digits
    config = default_student_config(teacher, "ttt", feature_dim=8)
    config["trunk_widths"] = (32,)
    path = tmp_path / "student.json"
    path.write_text(json.dumps(config))
    trainer = TestTimeTrainer(str(path), teacher, steps=2, **FAST)
    assert trainer.student.trunk_widths == (32,)
    trainer.student.save_to_preset(str(tmp_path / "preset"))
    from_preset = TestTimeTrainer(str(tmp_path / "preset"), teacher, steps=2, **FAST)
    assert from_preset.init == "given"
    np.testing.assert_allclose(
        from_preset.adapt(images[:2])["global"],
        trainer.adapt(images[:2])["global"],
        atol=1e-5,
    )


def test_bad_arguments(teacher, digits):
    images, _ = digits
    with pytest.raises(ValueError, match="recipe"):
        TestTimeTrainer(teacher=teacher, recipe="fast")
    with pytest.raises(ValueError, match="element-wise"):
        TestTimeTrainer(teacher=teacher, optimizer=keras.optimizers.Lamb())
    with pytest.raises(ValueError, match="clipnorm"):
        TestTimeTrainer(teacher=teacher, optimizer=keras.optimizers.Adam(clipnorm=1.0))
    with pytest.raises(ValueError, match="steps"):
        TestTimeTrainer(teacher=teacher, steps=0)
    with pytest.raises(ValueError, match="Teacher"):
        TestTimeTrainer(teacher=np.zeros(3))
    with pytest.raises(ValueError, match="feature_dim=8"):
        config = default_student_config(teacher, "ttt", feature_dim=12)
        TestTimeTrainer(config, teacher)
    trainer = TestTimeTrainer(teacher=teacher, steps=1, **FAST)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        trainer.adapt(images[:2] * 2)
    with pytest.raises(ValueError, match="shape"):
        trainer.adapt(images[0])
    with pytest.raises(ValueError, match="engine"):
        trainer.adapt(images[:1], engine="fast")
    with pytest.raises(ValueError, match="global_head"):
        BatchedTTT(keras_apm.APM((16, 16, 3), 4, (8,), 8), 2, keras.optimizers.Adam())


# ----------------------------------------------------------------------------
# Classifiers.


def test_embedding_classifier(teacher, digits):
    images, _ = digits
    embeddings = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    classifier = EmbeddingClassifier(embeddings, ["x", "y", "z"])
    # Cosine: scaling a vector or a class embedding changes nothing.
    np.testing.assert_array_equal(
        classifier.predict(embeddings * [[2.0], [0.5], [3.0]]), [0, 1, 2]
    )
    outputs = teacher(images[:4])
    vectors = keras.ops.convert_to_numpy(outputs["global"])
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(
        classifier.teacher_scores(outputs),
        unit(vectors) @ unit(embeddings).T,
        atol=1e-5,
    )
    assert classifier_for_teacher(teacher, class_embeddings=embeddings) is not None
    with pytest.raises(ValueError, match="non-zero"):
        EmbeddingClassifier(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="class names"):
        EmbeddingClassifier(embeddings, ["x"])
    with pytest.raises(ValueError, match="12-d"):
        TestTimeTrainer(
            teacher=teacher, classifier=EmbeddingClassifier(np.ones((2, 12)))
        )


def test_linear_head_classifier(teacher, digits):
    images, _ = digits
    classifier = LinearHeadClassifier(teacher)
    outputs = teacher(images[:4])
    # The head applied to the teacher's own vector gives the teacher's logits.
    np.testing.assert_allclose(
        classifier.scores(classifier.target(outputs)),
        keras.ops.convert_to_numpy(outputs["logits"]),
        atol=1e-5,
    )
    assert classifier_for_teacher(teacher).__class__ is LinearHeadClassifier


def test_clip_zero_shot(clip_preset, digits):
    path, vocabulary = clip_preset
    images, _ = digits
    teacher = Teacher.from_preset(path)
    names, templates = ["cat", "dog", "bird"], ["a photo of a {}", "a blurry {}"]
    classifier = classifier_for_teacher(
        teacher, class_names=names, templates=templates, preset=path
    )
    assert isinstance(classifier, CLIPZeroShotClassifier)

    # By hand: token ids of each prompt, text embeddings, normalise, average
    # the templates, normalise.
    def ids(text):
        tokens = []
        for word in text.split():
            # Characters, the last one marked as the word's end; the merges
            # join only "cat" and "dog" into one token.
            pieces = list(word[:-1]) + [word[-1] + "</w>"]
            if word in ("cat", "dog"):
                pieces = [word + "</w>"]
            tokens += [vocabulary[p] for p in pieces]
        row = [vocabulary["<|startoftext|>"]] + tokens + [vocabulary["<|endoftext|>"]]
        return row + [0] * (20 - len(row))

    token_ids = np.array([ids(t.format(n)) for n in names for t in templates])
    text = keras.ops.convert_to_numpy(teacher.backbone.get_text_embeddings(token_ids))
    text = text / np.linalg.norm(text, axis=-1, keepdims=True)
    expected = text.reshape(3, 2, -1).mean(axis=1)
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(classifier.class_embeddings, expected, atol=1e-5)

    trainer = TestTimeTrainer(teacher=teacher, classifier=classifier, steps=3, **FAST)
    assert trainer.student.feature_dim == 8  # the projection width
    result = trainer.adapt(images[:3])
    vision = keras.ops.convert_to_numpy(teacher(images[:3])["global"])
    np.testing.assert_array_equal(
        result["teacher_predictions"], (vision @ expected.T).argmax(-1)
    )
    assert set(result["predictions"]) <= {0, 1, 2}
    with pytest.raises(ValueError, match="class names"):
        classifier_for_teacher(teacher, preset=path)
