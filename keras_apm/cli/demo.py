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
            epochs=digits.DEMO_EPOCHS if args.epochs is None else args.epochs,
            data_dir=args.data_dir,
            resume=claim.resuming,
        )
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
