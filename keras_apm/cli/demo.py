"""`keras-apm demo`: the offline main job."""

from keras_apm.distill.recipes import RECIPES

DEMO = RECIPES["digits_demo"]


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help=f"Offline demo: distill {DEMO.teacher} into an APM on "
        f"{DEMO.dataset}.",
        description=(
            f"Builds the {DEMO.dataset} TFDS data set, distills the shipped "
            f"{DEMO.teacher} teacher into a fresh APM with fit (the "
            "'digits_demo' recipe of keras_apm.distill.recipes), and writes "
            "OUTPUT/summary.json (grid_cosine, global_cosine on the test "
            "split, teacher_accuracy, seconds, the curves), "
            "OUTPUT/summary.png and OUTPUT/student (a preset). No downloads."
        ),
    )
    parser.add_argument("--output", default="apm_demo", help="output directory")
    parser.add_argument(
        "--epochs", type=int, default=DEMO.epochs, help="training epochs"
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


def summary_table(summary):
    """The demo's closing table, one row of figures under a header."""
    header = ("teacher top-1", "grid cosine", "global cosine", "seconds")
    values = (
        f"{summary['teacher_accuracy']:.4f}",
        f"{summary['grid_cosine']:.4f}",
        f"{summary['global_cosine']:.4f}",
        f"{summary['seconds']:.1f}",
    )
    widths = [max(len(h), len(v)) for h, v in zip(header, values)]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths))
        for row in (header, values)
    )


def run(args):
    import os

    from keras_apm.apps import digits_demo as digits
    from keras_apm.distill.recipe_runner import RUN_OUTPUTS
    from keras_apm.utils.validation import check_flags
    from keras_apm.utils.run_directory import RunDirectory

    check_flags(args, epochs=dict(low=1, integer=True))
    # The demo owns --output, summary.json and summary.png included;
    # `distill` inside joins this claim.
    with RunDirectory(
        args.output, "demo", {"recipe": "digits_demo", "seed": 0},
        outputs=RUN_OUTPUTS + ("summary.json", "summary.png"),
        resume=args.resume, overwrite=args.overwrite,
    ) as claim:
        summary = digits.distill_digits(
            args.output,
            epochs=args.epochs,
            data_dir=args.data_dir,
            resume=claim.resuming,
            recipe="digits_demo",
            log=lambda line: print(line, flush=True),
            figure=True,
        )
    print(
        f"\nWrote {os.path.join(args.output, 'summary.json')}, summary.png "
        f"and student/ ({summary['backend']}, seed {summary['seed']}, "
        f"{summary['epochs']} epochs):\n"
    )
    print(summary_table(summary))
    return 0
