"""APM test-time training on the sklearn_digits test split (360 images).

The teacher is the shipped `vit_tiny_digits` classifier; every test image
gets a fresh APM student sized from it (`default_student_config`: 32x32
input, patch 4, trunk 256-128-64, 64-d global head) that regresses the
teacher's class token for a few steps, and is then classified by the
teacher's own linear head. Two tables, one JSON line per row:

- `"table": "corruptions"`: clean images and each of the 15 corruptions of
  `keras_apm.data.corruptions` at one severity (default 5), with the
  default recipe: teacher accuracy, APM-TTT accuracy, agreement, steps,
  seconds per image.
- `"table": "sweep"` (`--sweep`): clean images under several optimizers,
  learning rates and step counts, plus the official recipe; the measurement
  behind the defaults of `keras_apm.ttt.RECIPES["default"]`.

Usage (JAX is the fastest backend on CPU for this, see docs/ttt.md):

```shell
KERAS_BACKEND=jax python benchmarks/ttt_digits.py
KERAS_BACKEND=jax python benchmarks/ttt_digits.py --sweep
```

Rows of the other table already in `--output` are kept; rows of the table
being run are replaced. The file is written through a temporary file.
"""

import argparse
import json
import os
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# (optimizer, learning rate, steps, init) for --sweep; "official" is the
# official recipe (Adam 1e-4 with its schedule, N(0, 0.01) init).
SWEEP = (
    [
        ("adam", lr, s, "keras")
        for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
        for s in (2, 5, 10, 20)
    ]
    + [("adam", lr, s, "normal") for lr in (1e-3, 3e-3) for s in (2, 5, 10)]
    + [("sgd", lr, 20, "keras") for lr in (0.1, 1.0)]
    + [("official", None, s, "normal") for s in (5, 10, 20)]
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(RESULTS, "ttt_digits.jsonl"))
    parser.add_argument("--teacher", default="vit_tiny_digits")
    parser.add_argument("--severity", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, default=120)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--corruptions", nargs="*", default=None, help="default: all")
    parser.add_argument("--sweep", action="store_true", help="run the defaults sweep")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def learning_rate(value):
    if isinstance(value, dict):  # a schedule: its class and starting value
        return f"{value['class_name']}({value['config']['initial_learning_rate']:g})"
    return float(f"{value:.3g}")  # float32 -> 3 significant digits


def summary(record, **extra):
    settings = record["settings"]
    return {
        **extra,
        "accuracy_teacher": record["accuracy_teacher"],
        "accuracy_apm": record["accuracy_apm"],
        "agreement": record["agreement"],
        "steps": settings["steps"],
        "seconds_per_image": round(record["seconds_per_image"], 5),
        "num_images": record["num_images"],
        "optimizer": settings["optimizer"]["class_name"],
        "learning_rate": learning_rate(
            settings["optimizer"]["config"]["learning_rate"]
        ),
        "init": settings["init"],
        "mean_final_loss": round(
            sum(p["loss_last"] for p in record["predictions"]) / record["num_images"], 5
        ),
        "backend": settings["backend"],
        "batch_size": settings["batch_size"],
    }


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np

    import keras_apm  # noqa: F401  (registers the presets)
    from keras_apm.data.corruptions import CORRUPTIONS
    from keras_apm.teachers import Teacher
    from keras_apm.ttt import TestTimeTrainer
    from keras_apm.ttt.evaluation import evaluate
    from keras_apm.ttt.evaluation import ttt_dataset

    teacher = Teacher.from_preset(args.teacher)

    def dataset(corruption=None):
        return ttt_dataset(
            "sklearn_digits",
            "test",
            batch_size=args.batch_size,
            corruption=corruption,
            severity=args.severity,
            seed=args.seed,
            limit=args.limit,
        )

    def warm_up(trainer):
        # Compile before timing: seconds_per_image is the steady state.
        images, _ = next(iter(dataset()))
        trainer.adapt(np.asarray(images))

    rows = []
    started = time.time()
    if args.sweep:
        table = "sweep"
        for optimizer, lr, steps, init in SWEEP:
            if optimizer == "official":
                trainer = TestTimeTrainer(
                    None,
                    teacher,
                    recipe="official",
                    steps=steps,
                    batch_size=args.batch_size,
                    seed=args.seed,
                )
            else:
                trainer = TestTimeTrainer(
                    None,
                    teacher,
                    steps=steps,
                    optimizer=optimizer,
                    learning_rate=lr,
                    init=init,
                    batch_size=args.batch_size,
                    seed=args.seed,
                )
            warm_up(trainer)
            record = evaluate(trainer, dataset(), verbose=0)
            row = summary(record, table=table, condition="clean", recipe=optimizer)
            rows.append(row)
            print(json.dumps(row), flush=True)
    else:
        table = "corruptions"
        trainer = TestTimeTrainer(
            None, teacher, steps=args.steps, batch_size=args.batch_size, seed=args.seed
        )
        warm_up(trainer)
        names = CORRUPTIONS if args.corruptions is None else args.corruptions
        for corruption in [None, *names]:
            record = evaluate(trainer, dataset(corruption), verbose=0)
            row = summary(
                record,
                table=table,
                condition=corruption or "clean",
                severity=args.severity if corruption else None,
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"{len(rows)} rows in {time.time() - started:.0f} s", file=sys.stderr)

    kept = []
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as f:
            kept = [json.loads(line) for line in f if line.strip()]
        kept = [r for r in kept if r.get("table") != table]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in kept + rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, args.output)
    print(f"wrote {args.output} ({keras.backend.backend()})", file=sys.stderr)


if __name__ == "__main__":
    main()
