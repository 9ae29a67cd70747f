"""`keras-apm demo`: the offline main job."""

import json


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="Offline demo: distill vit_tiny_digits into an APM on sklearn digits.",
        description=(
            "Builds the sklearn_digits TFDS data set, distills the shipped "
            "vit_tiny_digits teacher into a fresh APM with fit, and writes "
            "OUTPUT/summary.json (grid_cosine, global_cosine on the test "
            "split, teacher_accuracy, seconds) and OUTPUT/student (a preset). "
            "No downloads."
        ),
    )
    parser.add_argument("--output", default="apm_demo", help="output directory")
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.set_defaults(func=run)


def run(args):
    from keras_apm.distill import digits

    summary = digits.distill_digits(
        args.output,
        epochs=args.epochs or digits.DEMO_EPOCHS,
        data_dir=args.data_dir,
    )
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
