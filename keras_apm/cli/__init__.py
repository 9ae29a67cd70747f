"""The `keras-apm` command line.

Each module in this package that defines `add_parser(subparsers)` (which
registers one subcommand and sets `func` through `set_defaults`) is a
subcommand; `main` finds them, so adding a command is adding a file.
"""

import argparse
import importlib
import pkgutil
import sys


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-apm",
        description="Asynchronous Perception Machine tools for Keras 3.",
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
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        # argparse exits on bad usage (code 2) and after --help (0): return
        # the code, so `main` can be called from Python and tests.
        return e.code
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except ValueError as e:
        # Bad input is the user's to fix: say what, without a traceback.
        print(f"keras-apm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
