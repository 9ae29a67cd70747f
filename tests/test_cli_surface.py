"""The command line's surface: fast help, defaults shown, quiet output."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Walks every (sub)command's `--help` inside one `keras-apm` process and
# reports which heavy modules that imported and each flag's help line.
_HELP_PROBE = r"""
import argparse, contextlib, io, json, sys
sys.argv = ["keras-apm"]  # what the console script's process looks like
from keras_apm import cli

def walk(parser, path):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, path + [name])

report = {"commands": {}, "flags": []}
for path, parser in walk(cli.build_parser(), []):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(path + ["--help"])
    report["commands"][" ".join(path)] = [code, out.getvalue()]
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help",):
            shown = parser._get_formatter()._get_help_string(action) or ""
            has_default = action.nargs != 0 and not any(
                action.default is v for v in (None, False, argparse.SUPPRESS))
            report["flags"].append(
                [" ".join(path), action.option_strings[-1], action.help,
                 action.required, has_default, "default" in shown.lower()]
            )
heavy = ("keras", "keras_hub", "tensorflow", "jax", "torch")
report["heavy"] = sorted(m for m in heavy if m in sys.modules)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def help_report():
    result = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_imports_no_heavy_module(help_report):
    # `keras-apm --help` must not pay for Keras, TensorFlow, JAX or torch.
    assert help_report["heavy"] == []
    assert {"", "demo", "distill", "ttt", "export", "convert"} <= set(
        help_report["commands"]
    )
    for command, (code, text) in help_report["commands"].items():
        assert code == 0, command
        assert "usage: keras-apm" in text


def test_every_flag_has_help_and_required_flags_say_so(help_report):
    for command, flag, text, required, _, _ in help_report["flags"]:
        assert text, f"`keras-apm {command} {flag}` has no help text"
        rendered = help_report["commands"][command][1]
        if required:
            # argparse wraps lines; compare with whitespace folded.
            assert "(required)" in " ".join(rendered.split()), (command, flag)


def test_help_shows_defaults(help_report):
    text = " ".join(help_report["commands"]["distill"][1].split())
    assert "digits: 60" in text  # --epochs, from the recipe registry
    assert "(default: None)" not in text
    text = " ".join(help_report["commands"]["visualize upsample"][1].split())
    assert "(default: 4)" in text  # --factor


def test_every_flag_with_a_default_shows_it(help_report):
    missing = [
        f"keras-apm {command} {flag}"
        for command, flag, _, required, has_default, shown in help_report["flags"]
        if has_default and not required and not shown
    ]
    assert missing == []
    # Flags whose default comes from a recipe or means "none" say so too.
    shown = {(c, f): s for c, f, _, _, _, s in help_report["flags"]}
    for command, flag in [("ttt", "--steps"), ("ttt", "--optimizer"),
                          ("ttt", "--seed"), ("export", "--quantization"),
                          ("visualize islands", "--seed")]:
        assert shown[command, flag], f"keras-apm {command} {flag}"
    text = " ".join(help_report["commands"]["ttt"][1].split())
    assert "default 10, official 20" in text  # --steps, from RECIPES


def test_python_dash_m_is_the_command():
    result = subprocess.run(
        [sys.executable, "-m", "keras_apm", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0
    assert "usage: keras-apm" in result.stdout


# What TensorFlow's C++ runtime, absl and upstream deprecations print.
_NOISE = re.compile(
    r"^(I|W|E)0000 |absl::InitializeLog|oneDNN custom operations|"
    r"cuda drivers|DeprecationWarning|UserWarning|FutureWarning|"
    r"cpu_feature_guard",
    re.M,
)


def _digit_png(path):
    from PIL import Image
    from sklearn.datasets import load_digits

    image = load_digits().images[0]
    image = np.kron(image / 16.0 * 255.0, np.ones((4, 4))).astype("uint8")
    Image.fromarray(np.stack([image] * 3, axis=-1)).save(path)


def test_a_real_command_is_quiet_and_verbose_is_not(tmp_path):
    image = tmp_path / "digit.png"
    _digit_png(str(image))
    command = [
        sys.executable, "-m", "keras_apm", "visualize", "upsample",
        "--preset", "apm_tiny_digits", "--image", str(image),
        "--factor", "2", "--output", str(tmp_path / "up.png"),
    ]  # fmt: skip
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest sets it for pytest
    quiet = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert quiet.returncode == 0, quiet.stderr
    assert (tmp_path / "up.png").exists()
    assert not _NOISE.search(quiet.stderr), quiet.stderr
    assert not _NOISE.search(quiet.stdout), quiet.stdout


def test_documented_commands_do_not_write_into_the_repository():
    pages = [os.path.join(ROOT, "README.md")] + glob.glob(
        os.path.join(ROOT, "docs", "*.md")
    )
    for page in pages:
        with open(page, encoding="utf-8") as f:
            text = f.read()
        for block in re.findall(r"```(?:shell|bash)\n(.*?)```", text, re.S):
            # One command per logical line; `tools/` scripts that rebuild a
            # shipped artefact write into the repository on purpose.
            commands = block.replace("\\\n", " ").splitlines()
            commands = [c for c in commands if "keras-apm " in c]
            for flag, path in re.findall(
                r"(--output|--save-preset|--gif)[ =](\S+)", "\n".join(commands)
            ):
                assert not path.startswith(("docs/", "keras_apm/", "./docs")), (
                    f"{os.path.basename(page)}: `{flag} {path}` writes into "
                    "the repository"
                )


def test_figure_script_runs_the_documented_commands():
    result = subprocess.run(
        [sys.executable, "tools/make_figures.py", "--output", "x", "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert result.stdout.count("keras-apm visualize") == 6
    assert "docs/images" not in result.stdout


def test_fit_prints_a_bar_on_a_terminal_and_epoch_lines_in_logs():
    import io

    from keras_apm.utils.progress import fit_verbosity

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert fit_verbosity("auto", Terminal()) == 1
    assert fit_verbosity("auto", io.StringIO()) == 2
    assert fit_verbosity(0, Terminal()) == 0
    assert fit_verbosity(1, io.StringIO()) == 1
