"""Classifiers for test-time training: vectors -> class scores.

A test-time-trained student ends with one global vector per image; a
classifier turns it into a class. Each classifier also says which teacher
output the student must regress (`target`), and how the teacher itself
classifies (`teacher_scores`), so the teacher's and the student's accuracy
are measured the same way.

- `EmbeddingClassifier`: user-given class embeddings; prediction = argmax
  cosine similarity.
- `CLIPZeroShotClassifier`: class embeddings from CLIP's text tower, for
  prompts "a photo of a {class}" (several templates averaged), as in APM's
  zero-shot TTT.
- `LinearHeadClassifier`: the teacher's own classifier head (any teacher
  with one, e.g. from a `ViTImageClassifier` preset), applied to the
  student's vector in place of the one the head normally reads; prediction
  = argmax logits.
"""

import numpy as np
from keras import ops
from keras_apm.teachers import teacher_outputs as outputs_lib

# The official APM TTT prompt.
DEFAULT_TEMPLATES = ("a photo of a {}",)


def _to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x), dtype="float32")


def _l2_normalize(x):
    norm = np.sqrt(np.maximum(np.sum(np.square(x), axis=-1, keepdims=True), 1e-12))
    return x / norm


def _check_vectors(vectors, dim, what="vectors"):
    vectors = _to_numpy(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(
            f"Expected {what} of shape (batch, {dim}). Received shape {vectors.shape}."
        )
    return vectors


class Classifier:
    """Base class: scores `(B, target_dim)` vectors against classes.

    Subclasses set `target_dim`, `num_classes`, `class_names` and implement
    `scores`. `target(teacher_outputs)` is the vector the student regresses
    (default: the teacher's `"global"` embedding); `teacher_scores` is how
    the teacher classifies (default: `scores(target)`).
    """

    target_dim = None
    num_classes = None
    class_names = None

    def scores(self, vectors):
        """`(B, num_classes)` NumPy scores of `(B, target_dim)` vectors."""
        raise NotImplementedError

    def predict(self, vectors):
        """`(B,)` int class indices: argmax of `scores`."""
        return np.argmax(self.scores(vectors), axis=-1)

    def target(self, teacher_outputs):
        """The `(B, target_dim)` vector the student regresses."""
        return _check_vectors(
            teacher_outputs[outputs_lib.GLOBAL],
            self.target_dim,
            "teacher embeddings",
        )

    def teacher_scores(self, teacher_outputs):
        """The teacher's own `(B, num_classes)` scores."""
        return self.scores(self.target(teacher_outputs))

    def check_teacher(self, teacher):
        """Raises if `teacher` cannot produce this classifier's target."""
        if teacher.global_dim != self.target_dim:
            raise ValueError(
                f"The classifier compares {self.target_dim}-d vectors, but "
                f"the teacher's global embedding is {teacher.global_dim}-d."
            )

    def get_config(self):
        return {"class": type(self).__name__, "num_classes": self.num_classes}


class EmbeddingClassifier(Classifier):
    """Cosine similarity against given class embeddings.

    Args:
        class_embeddings: `(num_classes, D)` array, one embedding per class
            (L2-normalised here).
        class_names: optional list of `num_classes` names.

    Example:
    >>> clf = EmbeddingClassifier(np.eye(3, 4), class_names=["a", "b", "c"])
    >>> clf.predict(np.array([[0.1, 2.0, 0.0, 0.3]]))
    array([1])
    """

    def __init__(self, class_embeddings, class_names=None):
        embeddings = _to_numpy(class_embeddings)
        if embeddings.ndim != 2 or min(embeddings.shape) < 1:
            raise ValueError(
                "Expected `class_embeddings` of shape (num_classes, dim). "
                f"Received shape {embeddings.shape}."
            )
        if not np.all(np.isfinite(embeddings)):
            raise ValueError("`class_embeddings` contains NaN or Inf.")
        norms = np.linalg.norm(embeddings, axis=-1)
        if np.any(norms == 0):
            raise ValueError(
                "Every class embedding must be non-zero (they are compared "
                f"by cosine). Zero rows: {np.flatnonzero(norms == 0).tolist()}."
            )
        self.class_embeddings = _l2_normalize(embeddings)
        self.num_classes, self.target_dim = embeddings.shape
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != self.num_classes:
                raise ValueError(
                    f"Got {len(class_names)} class names for "
                    f"{self.num_classes} class embeddings."
                )
        self.class_names = class_names

    def scores(self, vectors):
        vectors = _check_vectors(vectors, self.target_dim)
        return _l2_normalize(vectors) @ self.class_embeddings.T


def clip_text_embeddings(backbone, tokenizer, texts, batch_size=256):
    """Projected CLIP text embeddings of `texts` (`(N, projection_dim)`).

    Packs the prompts with keras-hub's `CLIPPreprocessor` (start token,
    tokens, end token, padding, cut to the text encoder's
    `max_sequence_length`) and runs `backbone.get_text_embeddings` (text
    tower, pooling at the end token, text projection). Not normalised.

    Example:
    ```python
    backbone = keras_hub.models.CLIPBackbone.from_preset("clip_vit_base_patch16")
    tokenizer = keras_hub.tokenizers.CLIPTokenizer.from_preset(
        "clip_vit_base_patch16")
    clip_text_embeddings(backbone, tokenizer, ["a photo of a cat"]).shape
    # (1, 512)
    ```
    """
    import keras_hub

    if not isinstance(backbone, keras_hub.models.CLIPBackbone):
        raise ValueError(
            "Expected a `keras_hub.models.CLIPBackbone` (text tower and "
            f"projection). Received {type(backbone).__name__}."
        )
    if not isinstance(tokenizer, keras_hub.tokenizers.CLIPTokenizer):
        raise ValueError(
            "Expected a `keras_hub.tokenizers.CLIPTokenizer`. Received "
            f"{type(tokenizer).__name__}."
        )
    preprocessor = keras_hub.models.CLIPPreprocessor(
        tokenizer, sequence_length=int(backbone.text_encoder.max_sequence_length)
    )
    texts = [str(t) for t in texts]
    token_ids = np.asarray(
        ops.convert_to_numpy(
            preprocessor({"images": None, "prompts": texts})["token_ids"]
        ),
        "int32",
    )
    # keras-hub's text pooler finds the end token with an argmax over the
    # ids, which needs the end token to have the largest id (true for CLIP
    # vocabularies).
    end = tokenizer.end_token_id
    if np.any(token_ids.max(axis=1) != end):
        raise ValueError(
            "The tokenizer's end token must have the largest id in the "
            "vocabulary (keras-hub's CLIP text pooler looks for it with an "
            f"argmax). end_token_id={end}, largest id in the prompts="
            f"{int(token_ids.max())}."
        )
    out = []
    for i in range(0, len(token_ids), batch_size):
        chunk = ops.convert_to_tensor(token_ids[i : i + batch_size])
        out.append(_to_numpy(backbone.get_text_embeddings(chunk)))
    return np.concatenate(out, axis=0)


class CLIPZeroShotClassifier(EmbeddingClassifier):
    """CLIP zero-shot classes: prompt templates through CLIP's text tower.

    For each class name and template, the prompt `template.format(name)` is
    embedded with `clip_text_embeddings`; each embedding is L2-normalised,
    the templates of a class are averaged and the mean is L2-normalised
    again (CLIP's prompt ensembling). The student regresses the teacher's
    projected image embedding (`CLIPTeacher`'s `"global"`), and a vector is
    classified by its cosine similarity to the class embeddings.

    Args:
        backbone: a `keras_hub.models.CLIPBackbone`.
        tokenizer: a `keras_hub.tokenizers.CLIPTokenizer`.
        class_names: list of class names.
        templates: prompt templates with one `{}` each (default: the
            official APM prompt `"a photo of a {}"`).

    Example:
    ```python
    clf = CLIPZeroShotClassifier.from_preset(
        "clip_vit_large_patch14", ["cat", "dog"],
        templates=["a photo of a {}.", "a blurry photo of a {}."])
    clf.class_embeddings.shape  # (2, 768)
    ```
    """

    def __init__(self, backbone, tokenizer, class_names, templates=None):
        templates = DEFAULT_TEMPLATES if templates is None else tuple(templates)
        if not templates:
            raise ValueError("Expected at least one prompt template.")
        for template in templates:
            if not isinstance(template, str) or template.count("{}") != 1:
                raise ValueError(
                    "Each prompt template must be a string with exactly one "
                    f"'{{}}' for the class name. Received {template!r}."
                )
        class_names = [str(c) for c in class_names]
        if not class_names:
            raise ValueError("Expected at least one class name.")
        prompts = [t.format(c) for c in class_names for t in templates]
        embeddings = clip_text_embeddings(backbone, tokenizer, prompts)
        embeddings = _l2_normalize(embeddings).reshape(
            len(class_names), len(templates), -1
        )
        super().__init__(embeddings.mean(axis=1), class_names=class_names)
        self.templates = templates

    @classmethod
    def from_preset(cls, preset, class_names, templates=None, **kwargs):
        """Loads the `CLIPBackbone` and `CLIPTokenizer` of a keras-hub preset."""
        import keras_hub

        from keras_apm.teachers import hf_checkpoints

        if hf_checkpoints.is_hf_checkpoint(preset):
            backbone = hf_checkpoints.load_clip_backbone(preset, **kwargs)
        else:
            backbone = keras_hub.models.CLIPBackbone.from_preset(
                preset, **kwargs
            )
        return cls(backbone, _clip_tokenizer(preset), class_names, templates)

    def get_config(self):
        config = super().get_config()
        config["templates"] = list(self.templates)
        return config


class LinearHeadClassifier(Classifier):
    """The teacher's own classifier head, applied to the student's vector.

    Works with any teacher that has a head (`teacher.has_classifier`, e.g.
    one built from a `ViTImageClassifier` preset). The student regresses
    exactly what the head reads (the teacher's `"head_input"` output: for a
    ViT, the class token or the mean of all tokens); the teacher's head
    turns the student's vector into logits (`teacher.head_logits`), and the
    teacher's own scores are the `"logits"` it already computed.
    Prediction = argmax logits.

    Args:
        teacher: a `keras_apm.teachers.Teacher` with a classifier head.

    Example:
    ```python
    teacher = Teacher.from_preset("vit_tiny_digits")
    clf = LinearHeadClassifier(teacher)
    clf.predict(student_vectors)  # (B,) class indices
    ```
    """

    def __init__(self, teacher):
        if not getattr(teacher, "has_classifier", False):
            raise ValueError(
                "`LinearHeadClassifier` needs a teacher with a classifier "
                "head (e.g. from a `ViTImageClassifier` preset). This "
                f"{type(teacher).__name__} has none."
            )
        self.teacher = teacher
        self.target_dim = int(teacher.head_dim)
        self.num_classes = int(teacher.num_classes)
        self.class_names = None

    def check_teacher(self, teacher):
        if teacher is not self.teacher:
            raise ValueError(
                "A `LinearHeadClassifier` must be used with the teacher it "
                "was built from."
            )

    def target(self, teacher_outputs):
        """What the head reads: the teacher's `"head_input"`."""
        return _check_vectors(
            teacher_outputs[outputs_lib.HEAD_INPUT], self.target_dim, "head inputs"
        )

    def scores(self, vectors):
        vectors = _check_vectors(vectors, self.target_dim)
        return _to_numpy(self.teacher.head_logits(vectors))

    def teacher_scores(self, teacher_outputs):
        return _to_numpy(teacher_outputs[outputs_lib.LOGITS])

    def get_config(self):
        config = super().get_config()
        config["teacher"] = type(self.teacher).__name__
        return config


def _clip_tokenizer(preset):
    """The `CLIPTokenizer` of a keras-hub preset or Hugging Face checkpoint."""
    import keras_hub

    from keras_apm.teachers import hf_checkpoints

    if hf_checkpoints.is_hf_checkpoint(preset):
        return hf_checkpoints.load_clip_tokenizer(preset)
    return keras_hub.tokenizers.CLIPTokenizer.from_preset(preset)


def classifier_for_teacher(
    teacher,
    class_names=None,
    templates=None,
    class_embeddings=None,
    tokenizer=None,
    preset=None,
):
    """Picks a classifier for a teacher, as `keras-apm ttt` does.

    User-given `class_embeddings` win; then the teacher's own head if it has
    one (`LinearHeadClassifier`); then CLIP zero-shot for a `CLIPBackbone`
    teacher (needs `class_names`, and a `tokenizer` or the `preset` to load
    the `CLIPTokenizer` from).

    Example:
    ```python
    teacher = Teacher.from_preset("clip_vit_base_patch16")
    clf = classifier_for_teacher(teacher, ["cat", "dog"],
                                 preset="clip_vit_base_patch16")
    ```
    """
    import keras_hub

    if class_embeddings is not None:
        return EmbeddingClassifier(class_embeddings, class_names)
    if getattr(teacher, "has_classifier", False):
        return LinearHeadClassifier(teacher)
    backbone = getattr(teacher, "backbone", None)
    if isinstance(backbone, keras_hub.models.CLIPBackbone):
        if class_names is None:
            raise ValueError(
                "CLIP zero-shot classification needs the class names "
                "(the data set's label names or a folder per class)."
            )
        if tokenizer is None:
            if preset is None:
                raise ValueError(
                    "CLIP zero-shot classification needs a `CLIPTokenizer` "
                    "(or the preset to load it from)."
                )
            tokenizer = _clip_tokenizer(preset)
        return CLIPZeroShotClassifier(backbone, tokenizer, class_names, templates)
    raise ValueError(
        f"No classifier fits a {type(teacher).__name__} over a "
        f"{type(backbone).__name__}: use a classifier preset (e.g. a "
        "ViTImageClassifier), a CLIPBackbone preset (zero-shot with class "
        "names), or give class embeddings."
    )
