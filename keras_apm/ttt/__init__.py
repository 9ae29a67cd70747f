"""Test-time training of APM students (`TestTimeTrainer`) and classifiers."""

from keras_apm.utils.lazy import lazy_exports

_EXPORTS = {
    "BatchedTTT": "batched",
    "CLIPZeroShotClassifier": "classifiers",
    "Classifier": "classifiers",
    "EmbeddingClassifier": "classifiers",
    "LinearHeadClassifier": "classifiers",
    "classifier_for_teacher": "classifiers",
    "clip_text_embeddings": "classifiers",
    "evaluate": "evaluation",
    "ttt_dataset": "evaluation",
    "RECIPES": "recipes",
    "initialize_student": "student",
    "TestTimeTrainer": "trainer",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
