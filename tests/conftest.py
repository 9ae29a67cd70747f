"""Shared pytest fixtures. Tests run under whatever KERAS_BACKEND is set."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)
