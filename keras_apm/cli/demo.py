"""`keras-apm demo`: the offline main job."""

import json

from keras_apm.distill.recipes import RECIPES

DIGITS = RECIPES["digits"]


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help=f"Offline demo: distill {DIGITS.teacher} into an APM on "
        f"{DIGITS.dataset}.",
        description=(
            f"Builds the {DIGITS.dataset} TFDS data set, distills the shipped "
            f"{DIGITS.teacher} teacher into a fresh APM with fit (the 'digits' "
            "recipe of keras_apm.distill.recipes), and writes "
            "OUTPUT/summary.json (grid_cosine, global_cosine on the test "
            "split, teacher_accuracy, seconds) and OUTPUT/student (a preset). "
            "No downloads."
        ),
    )
    parser.add_argument("--output", default="apm_demo", help="output directory")
    parser.add_argument(
        "--epochs", type=int, default=DIGITS.epochs, help="training epochs"
    )
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the demo run in --output from its newest checkpoint",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="delete another run's outputs in --output and start over",
    )
    parser.set_defaults(func=run)


def run(args):
    from keras_apm.distill import digits
    from keras_apm.distill.recipe import RUN_OUTPUTS
    from keras_apm.utils.hyperparameters import check_flags
    from keras_apm.utils.run_directory import RunDirectory

    check_flags(args, epochs=dict(low=1, integer=True))
    # The demo owns --output, summary.json included; `distill` inside
    # joins this claim.
    with RunDirectory(
        args.output, "demo", {"recipe": "digits", "seed": 0},
        outputs=RUN_OUTPUTS + ("summary.json",), resume=args.resume,
        overwrite=args.overwrite,
    ) as claim:
        summary = digits.distill_digits(
            args.output,
            epochs=args.epochs,
            data_dir=args.data_dir,
            resume=claim.resuming,
        )
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
