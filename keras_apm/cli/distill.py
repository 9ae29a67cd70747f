"""`keras-apm distill`: teacher preset + dataset -> distilled APM preset."""

import argparse


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
    parser.add_argument("--teacher", required=True, help="teacher preset")
    parser.add_argument(
        "--dataset", required=True, help="TFDS name or folder of images"
    )
    parser.add_argument("--split", default="train")
    parser.add_argument(
        "--validation-split",
        default="auto",
        help="validation split ('auto': test if present; 'none': no validation)",
    )
    parser.add_argument(
        "--student", help="APM preset or JSON config (default: sized from teacher)"
    )
    parser.add_argument(
        "--levels", type=_levels, default=1,
        help="GLOM levels: a count or comma-separated teacher layer indices",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--schedule", choices=("constant", "cosine"), default="constant",
        help="learning rate: constant, or cosine decay to 0 over all epochs",
    )
    parser.add_argument(
        "--trunk-widths", type=_widths,
        help="trunk widths of the default student, e.g. 512,256,128",
    )
    parser.add_argument(
        "--cache", help="directory to cache teacher targets in (teacher runs once)"
    )
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint"
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
    distributed.add_argument("--num-processes", type=int)
    distributed.add_argument("--process-id", type=int)
    parser.set_defaults(func=run)


def run(args):
    import keras_apm.data  # noqa: F401  (registers sklearn_digits)
    from keras_apm.distill.recipe import distill

    validation = args.validation_split
    metrics = distill(
        args.teacher,
        args.dataset,
        args.output,
        split=args.split,
        validation_split=None if validation.lower() == "none" else validation,
        student=args.student,
        levels=args.levels,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        schedule=args.schedule,
        trunk_widths=args.trunk_widths,
        cache=args.cache,
        resume=args.resume,
        seed=args.seed,
        data_dir=args.data_dir,
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    figures = metrics["validation"] or metrics["train"]
    which = "validation" if metrics["validation"] else "train"
    print(
        f"Distilled {args.teacher} into {args.output}/student: {which} "
        + ", ".join(f"{k} {v:.4f}" for k, v in sorted(figures.items()))
    )
    return 0
