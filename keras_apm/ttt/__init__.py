"""Test-time training of APM students (`TestTimeTrainer`) and classifiers."""

from keras_apm.ttt.batched import BatchedTTT
from keras_apm.ttt.classifiers import CLIPZeroShotClassifier
from keras_apm.ttt.classifiers import Classifier
from keras_apm.ttt.classifiers import EmbeddingClassifier
from keras_apm.ttt.classifiers import LinearHeadClassifier
from keras_apm.ttt.classifiers import classifier_for_teacher
from keras_apm.ttt.classifiers import clip_text_embeddings
from keras_apm.ttt.evaluation import evaluate
from keras_apm.ttt.evaluation import ttt_dataset
from keras_apm.ttt.recipes import RECIPES
from keras_apm.ttt.student import initialize_student
from keras_apm.ttt.trainer import TestTimeTrainer

__all__ = [
    "BatchedTTT",
    "CLIPZeroShotClassifier",
    "Classifier",
    "EmbeddingClassifier",
    "LinearHeadClassifier",
    "RECIPES",
    "TestTimeTrainer",
    "classifier_for_teacher",
    "clip_text_embeddings",
    "evaluate",
    "initialize_student",
    "ttt_dataset",
]
