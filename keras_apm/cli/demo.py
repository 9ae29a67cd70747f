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
    parser.set_defaults(func=run)


def run(args):
    from keras_apm.distill import digits

    summary = digits.distill_digits(
        args.output,
        epochs=args.epochs,
        data_dir=args.data_dir,
    )
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
