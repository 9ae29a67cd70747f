"""`keras-apm ttt`: test-time training of APM students on a data set."""

from keras_apm.cli import _arguments
from keras_apm.data.corruptions import CORRUPTIONS
from keras_apm.ttt.recipes import LOSSES
from keras_apm.ttt.recipes import RECIPES


def _recipe_defaults(key):
    """"default 10, official 20": each recipe's setting, for --help."""
    return ", ".join(f"{name} {RECIPES[name][key]}" for name in sorted(RECIPES))


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
    parser.add_argument(
        "--steps", type=int, default=None,
        help="steps per image (default: the recipe's; "
        + _recipe_defaults("steps") + ")",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images adapted together"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument(
        "--recipe", default=None, choices=sorted(RECIPES),
        help="named settings (keras_apm.ttt.recipes; default: default)",
    )
    parser.add_argument(
        "--optimizer", default=None,
        help="a Keras optimizer name, e.g. adam, sgd (default: the recipe's; "
        + _recipe_defaults("optimizer") + ")",
    )
    parser.add_argument(
        "--learning-rate", type=float, default=None,
        help="optimizer learning rate (default: the recipe's)",
    )
    parser.add_argument(
        "--loss", default=None, choices=LOSSES,
        help="global-vector loss (default: the recipe's; "
        + _recipe_defaults("loss") + ")",
    )
    _arguments.add_seed(parser, help="init and corruption seed")
    parser.add_argument(
        "--class-embeddings", help=".npy file of (num_classes, dim) class embeddings"
    )
    parser.add_argument(
        "--templates", nargs="+",
        help="CLIP prompt templates, each with one {} (default 'a photo of a {}')",
    )
    parser.add_argument("--output", required=True, help="result JSON file")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args):
    from keras_apm.utils.hyperparameters import check_flags
    from keras_apm.utils.run_directory import OutputFile

    check_flags(
        args,
        severity=dict(low=1, high=5, integer=True),
        steps=dict(low=1, integer=True),
        batch_size=dict(low=1, integer=True),
        limit=dict(low=1, integer=True),
        learning_rate=dict(low=0, low_open=True),
        seed=dict(low=0, integer=True),
    )
    # Claimed (writable, locked, not another run's result) before any work.
    with OutputFile(args.output, overwrite=args.overwrite):
        return _run(args)


def _run(args):
    import numpy as np

    from keras_apm.models.apm.apm_student import load_teacher
    from keras_apm.ttt import TestTimeTrainer
    from keras_apm.ttt import classifier_for_teacher
    from keras_apm.ttt.evaluation import dataset_class_names
    from keras_apm.ttt.evaluation import evaluate
    from keras_apm.ttt.evaluation import ttt_dataset
    from keras_apm.utils.files import write_json

    if args.corruption is None and args.severity is not None:
        raise ValueError("--severity needs --corruption.")
    severity = 5 if args.severity is None else args.severity
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
    trainer = TestTimeTrainer(
        args.student,
        teacher,
        classifier,
        steps=args.steps,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        loss=args.loss,
        seed=args.seed,
        recipe=args.recipe,
        batch_size=args.batch_size,
    )
    dataset = ttt_dataset(
        args.dataset,
        args.split,
        image_size=teacher.image_size,
        batch_size=args.batch_size,
        corruption=args.corruption,
        severity=severity,
        seed=args.seed,
        limit=args.limit,
        data_dir=args.data_dir,
    )
    record = evaluate(
        trainer,
        dataset,
        verbose=0 if args.quiet else 1,
        settings={
            "teacher": args.teacher,
            "dataset": args.dataset,
            "split": args.split,
            "corruption": args.corruption,
            "severity": severity if args.corruption else None,
            "limit": args.limit,
        },
    )
    write_json(args.output, record, indent=1)

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
