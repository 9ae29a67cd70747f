"""Shared pytest fixtures. Tests run under whatever KERAS_BACKEND is set."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import keras_hub
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def vit_teacher_preset(tmp_path_factory):
    """A random 2-layer ViT (32x32 input, patch 8: a 4x4 grid of 16-d)."""
    keras.utils.set_random_seed(7)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3),
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        dtype="float32",
    )
    path = str(tmp_path_factory.mktemp("vit_teacher"))
    backbone.save_to_preset(path)
    return path
