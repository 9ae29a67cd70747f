"""`keras-apm distill`: teacher preset + dataset -> distilled APM preset."""

import argparse

from keras_apm.cli import _arguments
from keras_apm.distill.recipes import RECIPES
from keras_apm.distill.recipes import SCHEDULES


def _levels(text):
    """`--levels 3` (evenly spaced layers) or `--levels 3,7,11` (indices)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--levels takes a count (3) or teacher layer indices (3,7,-1). "
            f"Received {text!r}."
        ) from None
    return values[0] if len(values) == 1 and "," not in text else values


def _widths(text):
    """`--trunk-widths 512,256,128`."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            "--trunk-widths takes comma-separated positive ints "
            f"(512,256,128). Received {text!r}."
        )
    return values


def _recipe_help(name, text=None):
    """Help that shows each recipe's value of a setting (its default)."""
    values = ", ".join(
        f"{recipe}: {getattr(settings, name)}"
        for recipe, settings in sorted(RECIPES.items())
    )
    return f"{text + ' ' if text else ''}(default from --recipe; {values})"


# Flags that override a recipe setting of the same name.
_SETTINGS = (
    "teacher", "dataset", "split", "levels", "epochs", "batch_size",
    "learning_rate", "schedule", "trunk_widths", "seed",
)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "distill",
        help="Distill a keras-hub ViT teacher into an APM with model.fit.",
        description=(
            "Writes OUTPUT/checkpoints (one per epoch), OUTPUT/student (the "
            "APM preset) and OUTPUT/metrics.json (final train and validation "
            "losses and cosines)."
        ),
    )
    parser.add_argument(
        "--recipe", choices=sorted(RECIPES), default="default",
        help="named settings (keras_apm.distill.recipes); the flags below "
        "override them",
    )
    _arguments.add_teacher_and_data(
        parser, required=False,
        split_help=_recipe_help("split", "training split"),
    )
    parser.add_argument(
        "--validation-split",
        help=_recipe_help(
            "validation_split",
            "validation split ('auto': test if present; 'none': no validation)",
        ),
    )
    parser.add_argument(
        "--levels", type=_levels,
        help=_recipe_help(
            "levels",
            "GLOM levels: a count or comma-separated teacher layer indices",
        ),
    )
    parser.add_argument("--epochs", type=int, help=_recipe_help("epochs"))
    parser.add_argument("--batch-size", type=int, help=_recipe_help("batch_size"))
    parser.add_argument(
        "--learning-rate", type=float, help=_recipe_help("learning_rate")
    )
    parser.add_argument(
        "--schedule", choices=SCHEDULES,
        help=_recipe_help(
            "schedule",
            "learning rate: constant, or cosine decay to 0 over all epochs",
        ),
    )
    parser.add_argument(
        "--trunk-widths", type=_widths,
        help=_recipe_help(
            "trunk_widths", "trunk widths of the default student, e.g. 512,256,128"
        ),
    )
    parser.add_argument(
        "--cache", help="directory to cache teacher targets in (teacher runs once)"
    )
    _arguments.add_seed(parser, default=None, help=_recipe_help("seed"))
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint"
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="delete another run's outputs in --output and start over",
    )
    parser.add_argument("--output", required=True, help="output directory")
    distributed = parser.add_argument_group(
        "several processes (default: KERAS_DISTRIBUTION_* or TF_CONFIG)"
    )
    distributed.add_argument(
        "--coordinator",
        help="HOST:PORT of process 0, or every process's, comma-separated "
        "(TensorFlow needs all); --batch-size is the global batch",
    )
    distributed.add_argument(
        "--num-processes", type=int, help="how many processes the run has"
    )
    distributed.add_argument(
        "--process-id", type=int, help="this process's index (0 writes files)"
    )
    parser.set_defaults(func=run)


def run(args):
    from keras_apm.utils.validation import check_flags

    # Checked here first, so that errors name the flags.
    ranges = dict(
        epochs=dict(low=1, integer=True),
        batch_size=dict(low=1, integer=True),
        learning_rate=dict(low=0, low_open=True),
        seed=dict(low=0, integer=True),
    )
    if isinstance(args.levels, int):  # a count (indices may be negative)
        ranges["levels"] = dict(low=1, integer=True)
    check_flags(args, **ranges)
    import keras_apm.data.sklearn_digits  # noqa: F401  (registers the builder)
    from keras_apm.distill.recipe_runner import distill

    recipe = RECIPES[args.recipe]
    overrides = {
        name: getattr(args, name)
        for name in _SETTINGS
        if getattr(args, name) is not None
    }
    validation = args.validation_split
    if validation is not None:
        overrides["validation_split"] = (
            None if validation.lower() == "none" else validation
        )
    for flag in ("teacher", "dataset"):
        if overrides.get(flag, getattr(recipe, flag)) is None:
            raise ValueError(
                f"--{flag} is required: --recipe {args.recipe} names no {flag}."
            )
    metrics = distill(
        output=args.output, recipe=args.recipe, student=args.student,
        cache=args.cache, resume=args.resume, data_dir=args.data_dir,
        overwrite=args.overwrite, coordinator=args.coordinator,
        num_processes=args.num_processes, process_id=args.process_id,
        **overrides,
    )
    figures = metrics["validation"] or metrics["train"]
    which = "validation" if metrics["validation"] else "train"
    print(
        f"Distilled {metrics['settings']['teacher']} into {args.output}/student: "
        f"{which} " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(figures.items()))
    )
    return 0
