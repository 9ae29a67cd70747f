"""Flags that several `keras-apm` commands share, defined once.

A module whose name starts with `_` is not a subcommand (see
`keras_apm.cli`).
"""


def add_teacher_and_data(parser, required=True, split_help="TFDS split"):
    """`--teacher`, `--dataset`, `--split`, `--student` and `--data-dir`.

    All default to None: the command (or its recipe) fills them in.
    """
    default = "" if required else " (default: the recipe's)"
    parser.add_argument(
        "--teacher", required=required,
        help="teacher preset: name, handle or directory" + default,
    )
    parser.add_argument(
        "--dataset", required=required,
        help="TFDS name or folder of images" + default,
    )
    parser.add_argument("--split", help=split_help)
    parser.add_argument(
        "--student", help="APM preset or JSON config (default: sized from the teacher)"
    )
    parser.add_argument("--data-dir", help="TFDS data directory")


def add_seed(parser, default=0, help="random seed"):
    parser.add_argument("--seed", type=int, default=default, help=help)
