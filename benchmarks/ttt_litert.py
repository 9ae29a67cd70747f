"""On-device test-time training: locations per step, and LiteRT speed.

Two tables, one JSON line per row (`benchmarks/results/ttt_litert.jsonl`):

- `"table": "locations"`: Keras TTT (`TestTimeTrainer`, default recipe) on
  the sklearn_digits test split with the shipped `vit_tiny_digits` teacher,
  each step training on all, 1/2, 1/4 or 1/8 of the student's 64 grid
  locations (`locations_per_step`), on clean images and under corruptions
  at severity 5: accuracy, agreement with the teacher, seconds per image.
- `"table": "litert"` (`--litert`): seconds per image of test-time
  training through an on-device TTT file (`keras_apm.export.export_ttt`,
  run with `ai_edge_litert` on 1 and 2 threads, one image at a time, as on
  a phone) next to Keras TTT on the CPU (batch 1, the same steps), for the
  digits model (vit_tiny_digits + the default student) and the official
  TTT-sized student (448 px, patch 14, 32x32 grid, trunk 4096-2048-1024,
  768-d; a tiny random 448 px ViT teacher stands in for CLIP ViT-L/14,
  whose cost is one forward pass per image whatever the student does).
  Also the file sizes, float32 and float16 weights.
- `"table": "parity"` (`--parity`): the on-device file against Keras TTT
  on the same test images, clean and under every corruption at severity 5
  (`--corruptions all`): how often their predictions agree, both
  accuracies, and the per-step losses: end to end (each computes its own
  teacher targets) and from the same targets (Keras' TTT engine fed the
  file's targets), as relative differences (median and max over images and
  steps); next to them, Keras against itself with every target moved by one
  float32 ulp: how far float rounding alone moves TTT's losses. The file
  is exported under the running backend from the same
  seeded student, with the default recipe (or `--steps`,
  `--locations-per-step`). On PyTorch, keras_apm updates Keras' `Adam`
  with the fused `torch._fused_adam_` kernel (the same algebra, its float
  operations in another order); `--keras-adam` keeps Keras' own update.

Usage (the committed rows ran under JAX):

```shell
KERAS_BACKEND=jax python benchmarks/ttt_litert.py --limit 120
KERAS_BACKEND=jax python benchmarks/ttt_litert.py --litert
KERAS_BACKEND=jax python benchmarks/ttt_litert.py --parity --corruptions all
KERAS_BACKEND=torch python benchmarks/ttt_litert.py --parity --corruptions all --keras-adam
```

Rows of the other table already in `--output` are kept; rows of the table
being run are replaced.
"""

import argparse
import json
import os
import sys
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FRACTIONS = (1, 2, 4, 8)  # all, 1/2, 1/4, 1/8 of the grid per step


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(RESULTS, "ttt_litert.jsonl"))
    parser.add_argument("--teacher", default="vit_tiny_digits")
    parser.add_argument("--limit", type=int, default=None, help="test images")
    parser.add_argument(
        "--corruptions", nargs="*", default=["gaussian_noise", "fog", "pixelate"]
    )
    parser.add_argument("--batch-size", type=int, default=120)
    parser.add_argument("--litert", action="store_true", help="the speed table")
    parser.add_argument(
        "--parity", action="store_true", help="the file vs Keras TTT table"
    )
    parser.add_argument("--steps", type=int, default=None, help="--parity")
    parser.add_argument(
        "--keras-adam", action="store_true",
        help="--parity on PyTorch: Keras' own Adam update in Keras TTT, not "
        "the fused torch._fused_adam_ kernel keras_apm switches it to",
    )  # fmt: skip
    parser.add_argument(
        "--locations-per-step", type=int, default=None, help="--parity"
    )
    parser.add_argument(
        "--images", type=int, default=5, help="digits images timed (--litert)"
    )
    parser.add_argument(
        "--official-steps", type=int, default=2,
        help="steps timed on the official-sized student (--litert)",
    )  # fmt: skip
    return parser.parse_args(argv)


def locations_table(args):
    import keras

    from keras_apm.ttt import TestTimeTrainer
    from keras_apm.ttt.evaluation import evaluate
    from keras_apm.ttt.evaluation import ttt_dataset

    rows = []
    for condition in [None] + list(args.corruptions):
        for fraction in FRACTIONS:
            trainer = TestTimeTrainer(
                teacher=args.teacher,
                batch_size=args.batch_size,
                locations_per_step=None if fraction == 1 else 64 // fraction,
            )
            dataset = ttt_dataset(
                "sklearn_digits", "test", image_size=trainer.teacher.image_size,
                batch_size=args.batch_size, corruption=condition, severity=5,
                limit=args.limit,
            )  # fmt: skip
            # A first batch compiles the step: timed apart, not counted.
            warm = next(iter(dataset))[0].numpy()
            trainer.adapt(warm)
            record = evaluate(trainer, dataset, verbose=0)
            rows.append(
                {
                    "table": "locations",
                    "condition": condition or "clean",
                    "severity": 5 if condition else None,
                    "locations_per_step": f"1/{fraction}" if fraction > 1 else "all",
                    "locations": 64 // fraction,
                    "accuracy_teacher": record["accuracy_teacher"],
                    "accuracy_apm": record["accuracy_apm"],
                    "agreement": record["agreement"],
                    "steps": trainer.steps,
                    "seconds_per_image": round(record["seconds_per_image"], 5),
                    "num_images": record["num_images"],
                    "backend": keras.backend.backend(),
                    "batch_size": args.batch_size,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def official_teacher(directory):
    """A tiny random 448 px ViT classifier with 768-d tokens (a stand-in)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(448, 448, 3), patch_size=56, num_layers=1, num_heads=2,
        hidden_dim=768, mlp_dim=64,
    )  # fmt: skip
    converter = keras_hub.layers.ViTImageConverter(
        image_size=(448, 448), scale=1 / 127.5, offset=-1.0
    )
    task = keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=10,
        preprocessor=keras_hub.models.ViTImageClassifierPreprocessor(converter),
    )  # fmt: skip
    task.save_to_preset(directory)
    return directory


def litert_table(args):
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    from keras_apm.convert import OFFICIAL_VARIANTS
    from keras_apm.data import digits_split_indices
    from keras_apm.data import upscale_digits
    from keras_apm.export import LiteRTTestTimeTrainer
    from keras_apm.export import export_ttt
    from keras_apm.ttt import TestTimeTrainer

    data = load_digits()
    test = digits_split_indices()[1][: args.images]
    digits = upscale_digits(data.images[test]).astype("float32")
    official = dict(OFFICIAL_VARIANTS["ttt"]["config"], rgb_head=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [
            ("digits", args.teacher, None, digits, None),
            (
                "official_ttt",
                official_teacher(os.path.join(tmp, "teacher")),
                official,
                np.random.default_rng(0).uniform(0, 255, (1, 448, 448, 3)),
                args.official_steps,
            ),
        ]
        for name, teacher, student, images, steps in models:
            images = images.astype("float32")
            sizes = {}
            for quantization in (None, "float16"):
                path = os.path.join(tmp, f"{name}_{quantization}.tflite")
                start = time.perf_counter()
                export_ttt(teacher, path, student=student, steps=steps,
                           quantization=quantization)  # fmt: skip
                sizes[quantization or "float32"] = {
                    "mb": round(os.path.getsize(path) / 1e6, 2),
                    "export_seconds": round(time.perf_counter() - start, 1),
                }
            trainer = TestTimeTrainer(student, teacher, steps=steps, batch_size=1)
            trainer.adapt(images[:1])  # compiles
            keras_result = trainer.adapt(images)
            row = {
                "table": "litert",
                "model": name,
                "steps": trainer.steps,
                "grid": list(trainer.student.grid_shape),
                "num_images": len(images),
                "keras_cpu_seconds_per_image": round(
                    keras_result["seconds"] / len(images), 4
                ),
                "keras_backend": keras.backend.backend(),
                "file": sizes,
            }
            for quantization in ("float32", "float16"):
                stored = None if quantization == "float32" else quantization
                path = os.path.join(tmp, f"{name}_{stored}.tflite")
                for threads in (1, 2):
                    lite = LiteRTTestTimeTrainer(path, num_threads=threads)
                    lite.adapt(images[:1])  # warm-up
                    result = lite.adapt(images)
                    key = f"litert_{quantization}_{threads}_thread_seconds_per_image"
                    row[key] = round(result["seconds"] / len(images), 4)
                    row[f"litert_{quantization}_agreement_with_keras"] = float(
                        np.mean(result["predictions"] == keras_result["predictions"])
                    )
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _relative(a, b):
    import numpy as np

    return np.abs(a - b) / np.maximum(np.abs(b), 1e-12)


def parity_table(args):
    import keras
    import numpy as np
    from keras import ops

    from keras_apm.data.corruptions import CORRUPTIONS
    from keras_apm.export import LiteRTTestTimeTrainer
    from keras_apm.export import export_ttt
    from keras_apm.ttt import TestTimeTrainer
    from keras_apm.ttt.evaluation import ttt_dataset

    corruptions = (
        list(CORRUPTIONS) if args.corruptions == ["all"] else args.corruptions
    )
    settings = dict(steps=args.steps, locations_per_step=args.locations_per_step)
    trainer = TestTimeTrainer(
        teacher=args.teacher, batch_size=args.batch_size, **settings
    )
    if args.keras_adam:
        # A subclass keeps Keras' update (only a plain `Adam` is fused).
        class KerasAdam(keras.optimizers.Adam):
            pass

        optimizer = KerasAdam.from_config(trainer.optimizer.get_config())
        trainer = TestTimeTrainer(
            teacher=args.teacher, batch_size=args.batch_size, optimizer=optimizer,
            **settings,
        )  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ttt.tflite")
        export_ttt(args.teacher, path, **settings)
        lite = LiteRTTestTimeTrainer(path, num_threads=1)
        for condition in [None] + corruptions:
            dataset = ttt_dataset(
                "sklearn_digits", "test", image_size=trainer.teacher.image_size,
                batch_size=args.batch_size, corruption=condition, severity=5,
                limit=args.limit,
            )  # fmt: skip
            parts = {"ours": [], "keras": [], "same": [], "ulp": [], "labels": []}
            for images, labels in dataset:
                images = images.numpy()
                ours, theirs = lite.adapt(images), trainer.adapt(images)
                inputs = ops.cast(trainer.preprocessor(images), "float32")
                same = trainer.engine.adapt(inputs, ours["target"])["loss"]
                parts["ours"].append(ours)
                parts["keras"].append(theirs)
                parts["same"].append(ops.convert_to_numpy(same))
                # The same engine, its own targets one ulp up.
                bumped = np.nextafter(theirs["target"], np.inf).astype("float32")
                ulp = _relative(
                    ops.convert_to_numpy(trainer.engine.adapt(inputs, bumped)["loss"]),
                    theirs["loss"],
                )
                parts["ulp"].append(ulp)
                parts["labels"].append(labels.numpy())
            joined = {
                k: {
                    key: np.concatenate([p[key] for p in parts[k]])
                    for key in ("predictions", "loss", "target")
                }
                for k in ("ours", "keras")
            }
            ours, theirs = joined["ours"], joined["keras"]
            labels = np.concatenate(parts["labels"])
            end_to_end = _relative(ours["loss"], theirs["loss"])
            same = _relative(ours["loss"], np.concatenate(parts["same"]))
            ulp = np.concatenate(parts["ulp"])
            rows.append(
                {
                    "table": "parity",
                    "condition": condition or "clean",
                    "severity": 5 if condition else None,
                    "num_images": len(labels),
                    "agreement": float(
                        np.mean(ours["predictions"] == theirs["predictions"])
                    ),
                    "accuracy_litert": float(np.mean(ours["predictions"] == labels)),
                    "accuracy_keras": float(np.mean(theirs["predictions"] == labels)),
                    "steps": trainer.steps,
                    "locations_per_step": trainer.locations_per_step,
                    "target_max_abs_difference": float(
                        np.abs(ours["target"] - theirs["target"]).max()
                    ),
                    "loss_relative_same_targets_max": float(same.max()),
                    "loss_relative_end_to_end_median": float(np.median(end_to_end)),
                    "loss_relative_end_to_end_max": float(end_to_end.max()),
                    "images_end_to_end_within_1e-5": float(
                        np.mean(end_to_end.max(axis=1) <= 1e-5)
                    ),
                    "keras_one_ulp_loss_relative_max": float(ulp.max()),
                    "keras_one_ulp_images_within_1e-5": float(
                        np.mean(ulp.max(axis=1) <= 1e-5)
                    ),
                    "backend": keras.backend.backend(),
                    "adam": "keras" if args.keras_adam else "default",
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def write_rows(path, rows, table):
    # Rows of the other tables are kept, and parity rows of other runs
    # (backend, Adam update).
    run = (rows[0].get("backend"), rows[0].get("adam")) if rows else None

    def replaced(row):
        return row["table"] == table and (
            table != "parity" or (row.get("backend"), row.get("adam")) == run
        )

    kept = []
    if os.path.exists(path):
        with open(path) as f:
            kept = [line for line in f if not replaced(json.loads(line))]
    from keras_apm.utils.files import atomic_write

    def write(staged):
        with open(staged, "w") as f:
            f.writelines(kept + [json.dumps(r) + "\n" for r in rows])

    atomic_write(path, write, overwrite=True)


def main(argv=None):
    args = parse_args(argv)
    if args.parity:
        write_rows(args.output, parity_table(args), "parity")
    elif args.litert:
        write_rows(args.output, litert_table(args), "litert")
    else:
        write_rows(args.output, locations_table(args), "locations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
