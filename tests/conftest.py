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

# Tests that never touch a Keras backend (file utilities, the import graph,
# NumPy corruptions, the tools' flag parsing) mark their module
# `pytest.mark.backend_independent`: they run in one job of the three (the
# README's test command runs the suite once per backend, and CI's 30 minutes
# are spent on what differs between backends).
BACKEND_INDEPENDENT_JOB = "torch"


def pytest_collection_modifyitems(config, items):
    import pytest

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == BACKEND_INDEPENDENT_JOB:
        return
    skip = pytest.mark.skip(
        reason="backend-independent: runs under "
        f"KERAS_BACKEND={BACKEND_INDEPENDENT_JOB}"
    )
    for item in items:
        if item.get_closest_marker("backend_independent"):
            item.add_marker(skip)


def xla_flags(*flags):
    """`XLA_FLAGS` for a JAX subprocess: `flags` plus the suite's."""
    return " ".join(flags + (FAST_XLA_FLAGS,))


import numpy as np
import pytest
from presets_factory import save_preset
from presets_factory import tiny_vit


@pytest.fixture
def no_gc_per_layer(monkeypatch):
    """Keras' `Layer.__delattr__` runs `gc.collect()` for every layer that
    `Model.quantize` rewrites: about 0.5 s each in a test process full of
    objects, most of a quantization test's time (nothing to do with ours)."""
    import gc

    monkeypatch.setattr(gc, "collect", lambda *args: 0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def vit_teacher_preset(tmp_path_factory):
    """A random 2-layer ViT (32x32 input, patch 8: a 4x4 grid of 16-d)."""
    backbone = tiny_vit(seed=7, dtype="float32")
    return save_preset(tmp_path_factory.mktemp("vit_teacher"), backbone)
