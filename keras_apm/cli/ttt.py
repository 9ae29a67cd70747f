"""`keras-apm ttt`: test-time training of APM students on a data set."""

from keras_apm.cli import _arguments
from keras_apm.data.corruptions import CORRUPTIONS
from keras_apm.ttt.recipes import LOSSES


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "ttt",
        help="Test-time-train one APM per image and classify (vs. the teacher).",
        description=(
            "For every image of a data set: adapt a fresh APM student to the "
            "teacher's embedding of that image, classify it, and compare "
            "with the teacher. Writes accuracies, agreement, timing, the "
            "settings and per-image predictions to a JSON file."
        ),
    )
    _arguments.add_teacher_and_data(
        parser, split_help="TFDS split (default: test); none for folders"
    )
    parser.add_argument(
        "--corruption", default=None, choices=CORRUPTIONS,
        help="corrupt the images first (default: clean images)",
    )
    parser.add_argument("--severity", type=int, default=None, help="1..5 (default 5)")
    _arguments.add_ttt_settings(parser, seed_help="init and corruption seed")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images adapted together"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument(
        "--optimizer", default=None,
        help="a Keras optimizer name, e.g. adam, sgd (default: the recipe's; "
        + _arguments.recipe_defaults("optimizer") + ")",
    )
    parser.add_argument(
        "--loss", default=None, choices=LOSSES,
        help="global-vector loss (default: the recipe's; "
        + _arguments.recipe_defaults("loss") + ")",
    )
    parser.add_argument(
        "--templates", nargs="+",
        help="CLIP prompt templates, each with one {} (default 'a photo of a {}')",
    )
    parser.add_argument(
        "--label-map",
        help="JSON file {data set label: classifier class index}, for a data "
        "set whose labels are not the classifier's classes (default: none; "
        "mismatched label spaces are refused)",
    )
    parser.add_argument(
        "--no-accuracy", action="store_true",
        help="report no accuracy, only the agreement of the APM with the "
        "teacher (for labels that are not the classifier's classes)",
    )
    parser.add_argument("--output", required=True, help="result JSON file")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--tflite", default=None,
        help="run TTT through this on-device file (keras-apm export --ttt) "
        "with the LiteRT interpreter; --teacher names its teacher",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None, help="LiteRT threads (with --tflite)"
    )
    parser.set_defaults(func=run)


def run(args):
    from keras_apm.utils.validation import check_flags
    from keras_apm.utils.run_directory import OutputFile

    check_flags(
        args,
        severity=dict(low=1, high=5, integer=True),
        batch_size=dict(low=1, integer=True),
        limit=dict(low=1, integer=True),
        threads=dict(low=1, integer=True),
        **_arguments.TTT_SETTING_CHECKS,
    )
    # Claimed (writable, locked, not another run's result) before any work.
    with OutputFile(args.output, overwrite=args.overwrite):
        return _run(args)


def _run(args):
    import os

    import numpy as np

    from keras_apm.models.apm.apm_student import load_teacher
    from keras_apm.ttt import TestTimeTrainer
    from keras_apm.ttt import classifier_for_teacher
    from keras_apm.ttt.evaluation import dataset_class_names
    from keras_apm.ttt.evaluation import label_mapping
    from keras_apm.utils.files import read_json

    if args.corruption is None and args.severity is not None:
        raise ValueError("--severity needs --corruption.")
    if args.label_map is not None and args.no_accuracy:
        raise ValueError("Pass --label-map or --no-accuracy, not both.")
    label_map = None
    if args.label_map is not None:
        label_map = read_json(
            args.label_map, "--label-map", 'Expected e.g. {"cat": 3, "dog": 5}.'
        )
    severity = 5 if args.severity is None else args.severity
    if args.tflite is not None:
        return _run_litert(args, severity)
    if args.threads is not None:
        raise ValueError("--threads sets LiteRT's threads: it needs --tflite.")
    teacher = load_teacher(args.teacher)
    class_names = dataset_class_names(args.dataset, args.data_dir)
    embeddings = None
    if args.class_embeddings is not None:
        embeddings = np.load(args.class_embeddings)
    classifier = classifier_for_teacher(
        teacher,
        class_names=class_names,
        templates=args.templates,
        class_embeddings=embeddings,
        preset=args.teacher,
    )
    # Before any work: accuracy against another label space means nothing.
    folder_labels = os.path.isdir(args.dataset)
    if not args.no_accuracy:
        label_mapping(classifier, class_names, label_map, folder=folder_labels)
    trainer = TestTimeTrainer(
        args.student,
        teacher,
        classifier,
        optimizer=args.optimizer,
        loss=args.loss,
        batch_size=args.batch_size,
        **_arguments.ttt_settings(args),
    )
    record = _evaluate(
        args,
        trainer,
        teacher.image_size,
        severity,
        settings={"label_map": args.label_map},
        label_names=class_names,
        label_map=label_map,
        accuracy=not args.no_accuracy,
        folder_labels=folder_labels,
    )

    def percent(value):
        return "n/a" if value is None else f"{100 * value:.2f}%"

    print(
        f"{record['num_images']} images: teacher "
        f"{percent(record['accuracy_teacher'])}, "
        f"APM-TTT {percent(record['accuracy_apm'])}, agreement "
        f"{percent(record['agreement'])}, {record['seconds_per_image']:.4f} s/image "
        f"-> {args.output}"
    )
    return 0


def _run_litert(args, severity):
    """`keras-apm ttt --tflite FILE`: the same run through a LiteRT file."""
    from keras_apm.export.ttt_runtime import LiteRTTestTimeTrainer

    fixed = [
        flag
        for flag, value in (
            ("--student", args.student), ("--recipe", args.recipe),
            ("--optimizer", args.optimizer), ("--learning-rate", args.learning_rate),
            ("--loss", args.loss), ("--class-embeddings", args.class_embeddings),
            ("--templates", args.templates),
            ("--locations-per-step", args.locations_per_step),
        )
        if value is not None
    ]  # fmt: skip
    if fixed:
        raise ValueError(
            f"{', '.join(fixed)}: fixed in the --tflite file {args.tflite!r} "
            "(set them with `keras-apm export --ttt`); drop them here."
        )
    trainer = LiteRTTestTimeTrainer(
        args.tflite, num_threads=args.threads, steps=args.steps
    )
    record = _evaluate(args, trainer, trainer.image_shape[:2], severity)
    print(
        f"{record['num_images']} images through {args.tflite} (LiteRT): "
        f"agreement {100 * record['agreement']:.2f}%, "
        f"{record['seconds_per_image']:.4f} s/image -> {args.output}"
    )
    return 0


def _evaluate(args, trainer, image_size, severity, settings=None, **kwargs):
    """Runs `trainer` over the data set of `args`, writes --output, returns it.

    `settings`: entries recorded besides the data set's; `kwargs` go to
    `keras_apm.ttt.evaluation.evaluate`.
    """
    from keras_apm.ttt.evaluation import evaluate
    from keras_apm.ttt.evaluation import ttt_dataset
    from keras_apm.utils.files import write_json

    dataset = ttt_dataset(
        args.dataset,
        args.split,
        image_size=image_size,
        batch_size=args.batch_size,
        corruption=args.corruption,
        severity=severity,
        seed=args.seed,
        limit=args.limit,
        data_dir=args.data_dir,
    )
    settings = {
        "teacher": args.teacher,
        "dataset": args.dataset,
        "split": args.split,
        "corruption": args.corruption,
        "severity": severity if args.corruption else None,
        "limit": args.limit,
        **(settings or {}),
    }
    verbose = 0 if args.quiet else 1
    record = evaluate(trainer, dataset, verbose=verbose, settings=settings, **kwargs)
    write_json(args.output, record, indent=1)
    return record
