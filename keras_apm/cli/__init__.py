"""The `keras-apm` command line.

Each module in this package that defines `add_parser(subparsers)` (which
registers one subcommand and sets `func` through `set_defaults`) is a
subcommand; `main` finds them, so adding a command is adding a file.
"""

import argparse
import importlib
import importlib.util
import logging
import os
import pkgutil
import re
import sys
import tempfile
import warnings


class _Formatter(argparse.HelpFormatter):
    """`--help` says which flags are required and every other flag's default.

    Like `argparse.ArgumentDefaultsHelpFormatter`, but without the
    "(default: None)" of flags that have no default or are required, and
    without repeating a default that the help text already states.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required:
            return text + " (required)"
        default = action.default
        if (
            # `is`, not `in`: `0 in (False,)` is True, and a 0 is a default.
            any(default is v for v in (None, False, argparse.SUPPRESS))
            or not action.option_strings
            or "default" in text.lower()
        ):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every (sub)command parser shows defaults: `add_subparsers` builds
    nested parsers of this same class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


# Libraries whose import-time logs and warnings are not the user's business
# unless `--verbose` asks for them.
_NOISY_MODULES = r"(tensorflow|tensorflow_datasets|tensorflow_text|keras|keras_hub|absl|jax|jaxlib|google\.protobuf|tf_keras)(\.|$)"


def quiet_libraries():
    """Silences TensorFlow's C++ log, absl and upstream library warnings.

    Called before the command imports anything heavy: TensorFlow reads
    `TF_CPP_MIN_LOG_LEVEL` once, when its C++ runtime loads.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in ("absl", "tensorflow", "jax", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=_NOISY_MODULES)


# Lines that TensorFlow's C++ runtime writes straight to file descriptor 2
# while it loads. With JAX loaded first they ignore TF_CPP_MIN_LOG_LEVEL
# (both libraries link absl's logging), so they are caught at the descriptor.
_NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog|"
    r"[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\])"
)


def import_quietly(modules=("tensorflow", "keras", "keras_hub")):
    """Imports `modules` with native stderr noise dropped, the rest kept.

    TensorFlow is among them when installed: every command reaches it (data
    pipelines, keras-hub's preprocessing) and its runtime logs while it
    loads, whichever Keras backend runs.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            for name in modules:
                if importlib.util.find_spec(name) is not None:
                    importlib.import_module(name)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            kept = [line for line in lines if not _NATIVE_NOISE.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def build_parser():
    parser = _Parser(
        prog="keras-apm",
        description="Asynchronous Perception Machine tools for Keras 3.",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow, absl and library warnings and logs",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "add_parser"):
            module.add_parser(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--verbose` is accepted anywhere on the line, not only before COMMAND.
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        # argparse exits on bad usage (code 2) and after --help (0): return
        # the code, so `main` can be called from Python and tests.
        return e.code
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not verbose:
        quiet_libraries()
        import_quietly()
    try:
        return args.func(args) or 0
    except ValueError as e:
        # Bad input is the user's to fix: say what, without a traceback.
        print(f"keras-apm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
