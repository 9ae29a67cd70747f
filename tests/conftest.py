"""Shared pytest fixtures. Tests run under whatever KERAS_BACKEND is set."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The JAX suite spends most of its time compiling: every eager op and every
# jitted step of the suite's tiny models goes through XLA's full CPU
# optimisation. Without it the JAX suite runs about 28% faster (measured on
# test_layers/test_apm/test_teachers: 114 s -> 82 s; test_ttt/
# test_distiller/test_tfds_inputs: 183 s -> 131 s) with the same results.
# Test setting only (the package never sets it); subprocesses that set
# their own XLA_FLAGS add these with `xla_flags`.
FAST_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in (os.environ.get("XLA_FLAGS"), FAST_XLA_FLAGS) if f
    )


def xla_flags(*flags):
    """`XLA_FLAGS` for a JAX subprocess: `flags` plus the suite's."""
    return " ".join(flags + (FAST_XLA_FLAGS,))


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
