"""Test-time training of APM students (`TestTimeTrainer`) and classifiers."""

from keras_apm.utils.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    """
    batched: BatchedTTT
    classifiers: CLIPZeroShotClassifier Classifier EmbeddingClassifier LinearHeadClassifier classifier_for_teacher clip_text_embeddings
    evaluation: evaluate ttt_dataset
    recipes: RECIPES
    student: initialize_student
    trainer: TestTimeTrainer
""",
)
