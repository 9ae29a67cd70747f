"""Digits accuracy under `mixed_bfloat16` against float32, on one backend
(issue 27: bf16 results within 0.5 points of float32).

For each dtype policy (set globally, so the teacher, the student and the
test-time-trained students all compute in it):

- `"table": "distill"`: the `keras-apm demo` distillation
  (`keras_apm.apps.digits_demo.distill_digits`, recipe `digits_demo`, or
  `--epochs`) of `vit_tiny_digits` into a fresh APM on sklearn_digits'
  train split, once per `--seeds`; then on the test split (360 images:
  one image is 0.28 points) the student's global
  vector classified by the teacher's own head (`LinearHeadClassifier`):
  accuracy, agreement with the teacher, and the run's grid / global cosine.
- `"table": "ttt"`: digits test-time training (`TestTimeTrainer`, the
  default recipe, as benchmarks/ttt_digits.py) on the test split, clean and
  under `--corruptions` at severity 5: teacher and APM accuracy.

One JSON line per row, printed and written to `--output` (rows of other
backends already there are kept):

```shell
KERAS_BACKEND=tensorflow python benchmarks/bf16_digits.py \\
    --note "machine shared with other jobs"
```
"""

import argparse
import json
import os
import sys
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
POLICIES = ("float32", "mixed_bfloat16")
CORRUPTIONS = ("gaussian_noise", "defocus_blur", "contrast", "jpeg_compression")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(RESULTS, "bf16_digits.jsonl"))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES),
                        choices=POLICIES)
    parser.add_argument("--epochs", type=int, default=None,
                        help="distillation epochs (default: the digits_demo recipe's)")
    parser.add_argument("--corruptions", nargs="*", default=list(CORRUPTIONS))
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None,
                        help="TTT test images (default: all 360)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("distill", "ttt"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="one distillation per seed (TTT: the first)")
    parser.add_argument("--note", default=None)
    return parser.parse_args(argv)


def student_accuracy(output, teacher):
    """Test-split accuracy of the distilled student's global vector through
    the teacher's head, and its agreement with the teacher's own answer."""
    import keras
    import numpy as np

    from keras_apm.apps.digits_demo import RECIPE
    from keras_apm.data import image_dataset
    from keras_apm.models.apm import load_apm
    from keras_apm.ttt.classifiers import LinearHeadClassifier

    student, converter = load_apm(os.path.join(output, "student"))
    classifier = LinearHeadClassifier(teacher)
    correct = agree = total = 0
    ds = image_dataset(RECIPE.dataset, split="test", batch_size=120, with_labels=True)
    for images, labels in ds.as_numpy_iterator():
        vectors = keras.ops.cast(student(converter(images))["global"], "float32")
        predicted = np.argmax(classifier.scores(vectors), axis=-1)
        taught = np.argmax(
            keras.ops.convert_to_numpy(teacher.classifier_logits(images)), axis=-1
        )
        correct += int(np.sum(predicted == labels))
        agree += int(np.sum(predicted == taught))
        total += len(labels)
    return {
        "accuracy_student": correct / total,
        "agreement": agree / total,
        "num_images": total,
        "student_dtype": student.dtype_policy.name,
    }


def main(argv=None):
    args = parse_args(argv)
    import keras

    import keras_apm  # noqa: F401  (registers the presets)
    from keras_apm.apps.digits_demo import distill_digits
    from keras_apm.teachers import Teacher
    from keras_apm.ttt import TestTimeTrainer
    from keras_apm.ttt.evaluation import evaluate
    from keras_apm.ttt.evaluation import ttt_dataset

    from keras_apm.utils.files import check_writable_dir

    # Before the minutes of work, not after.
    check_writable_dir(os.path.dirname(os.path.abspath(args.output)), "--output's folder")
    base = {
        "benchmark": "bf16_digits",
        "backend": keras.backend.backend(),
        "cpu_count": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1min": round(os.getloadavg()[0], 2),
        **({"note": args.note} if args.note else {}),
    }
    rows = []

    def emit(row):
        row = {**base, **row}
        rows.append(row)
        print(json.dumps(row), flush=True)

    started = time.time()
    for policy in args.policies:
        keras.mixed_precision.set_global_policy(policy)
        try:
            teacher = Teacher.from_preset("vit_tiny_digits")
            for seed in args.seeds if "distill" not in args.skip else ():
                with tempfile.TemporaryDirectory() as tmp:
                    summary = distill_digits(
                        tmp, epochs=args.epochs, seed=seed,
                        recipe="digits_demo", verbose=0,
                    )
                    emit({
                        "table": "distill", "policy": policy, "seed": seed,
                        "recipe": "digits_demo", "epochs": summary["epochs"],
                        **student_accuracy(tmp, teacher),
                        "teacher_accuracy": summary["teacher_accuracy"],
                        "grid_cosine": round(summary["grid_cosine"], 5),
                        "global_cosine": round(summary["global_cosine"], 5),
                        "seconds": round(summary["seconds"], 1),
                    })
            if "ttt" not in args.skip:
                seed = args.seeds[0]
                trainer = TestTimeTrainer(None, teacher, batch_size=120, seed=seed)
                for corruption in [None, *args.corruptions]:
                    ds = ttt_dataset(
                        "sklearn_digits", "test", batch_size=120,
                        corruption=corruption, severity=args.severity,
                        seed=seed, limit=args.limit,
                    )
                    record = evaluate(trainer, ds, verbose=0)
                    emit({
                        "table": "ttt", "policy": policy,
                        "condition": corruption or "clean", "seed": seed,
                        "severity": args.severity if corruption else None,
                        "accuracy_teacher": record["accuracy_teacher"],
                        "accuracy_apm": record["accuracy_apm"],
                        "agreement": record["agreement"],
                        "steps": record["settings"]["steps"],
                        "num_images": record["num_images"],
                        "seconds_per_image": round(record["seconds_per_image"], 5),
                    })
        finally:
            keras.mixed_precision.set_global_policy("float32")
    print(f"{len(rows)} rows in {time.time() - started:.0f} s", file=sys.stderr)

    from keras_apm.utils.files import atomic_write

    # Rows of other backends already in the file are kept; this backend's
    # are replaced.
    kept = []
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as f:
            kept = [json.loads(line) for line in f if line.strip()]
        kept = [r for r in kept if r.get("backend") != base["backend"]]

    def write(staged):
        with open(staged, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in kept + rows)

    atomic_write(args.output, write)


if __name__ == "__main__":
    main()
