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


# The checks of `add_ttt_settings`' numbers (`keras_apm.utils.validation.check_flags`).
TTT_SETTING_CHECKS = dict(
    steps=dict(low=1, integer=True),
    learning_rate=dict(low=0, low_open=True),
    locations_per_step=dict(low=1, integer=True),
    seed=dict(low=0, integer=True),
)


def recipe_defaults(key):
    """"default 10, official 20": each TTT recipe's setting, for --help."""
    from keras_apm.ttt.recipes import RECIPES

    return ", ".join(f"{name} {RECIPES[name][key]}" for name in sorted(RECIPES))


def add_ttt_settings(parser, seed_help="student init seed"):
    """The settings of test-time training, as `TestTimeTrainer` takes them.

    `--recipe`, `--steps`, `--learning-rate`, `--locations-per-step`,
    `--seed` and `--class-embeddings`: what `keras-apm ttt` adapts with and
    what `keras-apm export --ttt` fixes in its file. All but `--seed`
    default to None (the recipe's). Check the numbers with
    `TTT_SETTING_CHECKS`; `ttt_settings(args)` are the trainer's arguments.
    """
    from keras_apm.ttt.recipes import RECIPES

    parser.add_argument(
        "--recipe", default=None, choices=sorted(RECIPES),
        help="named settings (keras_apm.ttt.recipes; default: default)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=None,
        help="steps per image (default: the recipe's; "
        + recipe_defaults("steps") + ")",
    )  # fmt: skip
    parser.add_argument(
        "--learning-rate", type=float, default=None,
        help="optimizer learning rate (default: the recipe's)",
    )  # fmt: skip
    parser.add_argument(
        "--locations-per-step", type=int, default=None,
        help="grid locations each step trains on (default: all)",
    )  # fmt: skip
    add_seed(parser, help=seed_help)
    parser.add_argument(
        "--class-embeddings", help=".npy file of (num_classes, dim) class embeddings"
    )


def ttt_settings(args):
    """The `TestTimeTrainer` (and `export_ttt`) arguments of `add_ttt_settings`."""
    return dict(
        recipe=args.recipe,
        steps=args.steps,
        learning_rate=args.learning_rate,
        locations_per_step=args.locations_per_step,
        seed=args.seed,
    )
