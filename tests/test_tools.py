"""The scripts in `tools/` take the CLI's hyphenated flags and show defaults."""

import importlib.util
import os

import pytest

# Touches no Keras backend: one job of the three runs it (tests/conftest.py).
pytestmark = pytest.mark.backend_independent

TOOLS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools")


def _load(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(TOOLS, name + ".py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_digits_teacher_takes_hyphenated_flags(capsys):
    tool = _load("train_digits_teacher")
    args = tool.parse_args(
        ["--data-dir", "d", "--batch-size", "8", "--min-test-accuracy", "0.5"]
    )
    assert (args.data_dir, args.batch_size, args.min_test_accuracy) == ("d", 8, 0.5)
    # The old underscore spellings still parse, without being listed.
    old = tool.parse_args(["--data_dir=d", "--learning_rate", "0.1"])
    assert (old.data_dir, old.learning_rate) == ("d", 0.1)
    with pytest.raises(SystemExit):
        tool.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--data-dir" in text and "--data_dir" not in text
    assert "_" not in " ".join(w for w in text.split() if w.startswith("--"))
    assert "(default: 64)" in text  # --batch-size
    with pytest.raises(SystemExit):
        tool.parse_args(["--batch-size", "0"])
    assert "--batch-size must be >= 1" in capsys.readouterr().err


def test_distill_digits_apm_help_shows_defaults(capsys):
    tool = _load("distill_digits_apm")
    with pytest.raises(SystemExit):
        tool.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--data-dir" in text and "(default: 0)" in text  # --seed
