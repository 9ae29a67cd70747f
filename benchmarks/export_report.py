"""Export report: size, CPU latency and accuracy of every TFLite variant.

For a tiny digits APM (`apm_tiny_digits`, or a random APM of the same
config while that preset does not exist) and a COCO-sized APM with random
weights (the official COCO config: 448x448, patch 14, trunk
4096-4096-4096-2048-1024, 1024-d features, RGB head), exports the float32,
float16, dynamic_int8 and int8 TFLite files and measures:

- the file size;
- the CPU latency per image (batch 1, median) of the full grid with the
  LiteRT interpreter at 1 and 2 threads;
- the error of each variant against the float32 Keras model on held-out
  real images (largest error relative to the largest reference magnitude,
  smallest per-location cosine of the features);
- Keras `model.predict` latency per image (batch 1, median) on each backend,
  each in its own subprocess;
- with `apm_tiny_digits` and `vit_tiny_digits`: on the 360 `sklearn_digits`
  test images, the class each variant's global vector gets from the
  teacher's own linear head (`LinearHeadClassifier`), its agreement with the
  float32 Keras model's class and its accuracy.

Writes JSON lines (`--output`) and puts the Markdown tables between the
report markers of `--docs`. Big files go to `--work-dir` (default /tmp).

    KERAS_BACKEND=tensorflow python benchmarks/export_report.py \\
        [--models tiny coco] [--preset apm_tiny_digits] [--repeats 20]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = ("float32", "float16", "dynamic_int8", "int8")
BACKENDS = ("tensorflow", "jax", "torch")
BUILTIN_TINY = os.path.join(ROOT, "keras_apm", "presets", "apm_tiny_digits")
TEACHER = "vit_tiny_digits"
# What `default_student_config(Teacher.from_preset("vit_tiny_digits"))`
# gives: the stand-in for apm_tiny_digits until that preset exists.
TINY_CONFIG = {
    "image_shape": (32, 32, 3),
    "patch_size": 4,
    "trunk_widths": (256, 128, 64),
    "feature_dim": 64,
    "global_head": True,
    "global_num_heads": 8,
}
# Keras `predict` and a plain call of one image, medians over repeats, in
# a fresh process per backend.
PREDICT_WORKER = r"""
import json, statistics, sys, time
import numpy as np, keras, keras_apm
preset, inputs, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = keras_apm.APM.from_preset(preset)
x = np.load(inputs)[:1]

def median_ms(fn):
    fn()  # compiles (JAX), builds the predict function.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)

print(json.dumps({
    "predict_ms": median_ms(lambda: model.predict(x, verbose=0)),
    "call_ms": median_ms(
        lambda: keras.ops.convert_to_numpy(model(x)["features"])),
}))
"""
MARKERS = ("<!-- export_report:start -->", "<!-- export_report:end -->")


def log(message):
    print(message, file=sys.stderr, flush=True)


# --- models and images ------------------------------------------------------
def random_preset(directory, config, converter, seed=0):
    import keras

    import keras_apm

    keras.utils.set_random_seed(seed)
    model = keras_apm.APM(**config)
    # Glorot-uniform draws of our own, one per kernel: layers of one shape
    # must not share values (the converter would store them once).
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if len(shape) >= 2:
            fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            variable.assign(rng.uniform(-limit, limit, shape).astype("float32"))
    model.save_to_preset(directory)
    keras_apm.APMImageConverter(
        config["image_shape"][:2], **converter
    ).save_to_preset(directory)
    return directory


def digits(split):
    """Raw `(N, 32, 32, 3)` uint8 sklearn digits of a split, and labels."""
    from sklearn.datasets import load_digits

    from keras_apm.data import digits_split_indices
    from keras_apm.data import upscale_digits

    data = load_digits()
    index = digits_split_indices()[0 if split == "train" else 1]
    return upscale_digits(data.images[index]), data.target[index]


def photos():
    """The scikit-image sample photos: 8 for calibration, 4 to evaluate."""
    import skimage.data

    def rgb(image):
        image = image[0] if isinstance(image, tuple) else image
        return image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)

    names = (
        "camera", "brick", "grass", "gravel", "moon", "colorwheel",
        "immunohistochemistry", "hubble_deep_field",
        "astronaut", "coffee", "chelsea", "rocket",
    )  # fmt: skip
    images = [rgb(getattr(skimage.data, name)())[..., :3] for name in names]
    return images[:8], images[8:]


# --- measurements -----------------------------------------------------------
def litert_ms(path, image, threads, repeats):
    from keras_apm.export import load

    runner = load(path, num_threads=threads)
    runner.predict(image)  # allocates tensors.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.predict(image)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def errors(reference, outputs):
    """Largest relative error per output, smallest feature cosine."""
    report = {
        f"max_rel_error_{key}": float(
            np.abs(outputs[key] - value).max() / np.abs(value).max()
        )
        for key, value in reference.items()
    }
    a = outputs["features"].reshape(-1, outputs["features"].shape[-1])
    b = reference["features"].reshape(a.shape)
    cosine = (a * b).sum(-1) / (
        np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30
    )
    report["feature_cosine_min"] = float(cosine.min())
    return report


def keras_outputs(model, inputs, batch_size=16):
    import keras

    parts = [
        model(inputs[i : i + batch_size])
        for i in range(0, len(inputs), batch_size)
    ]
    return {
        key: np.concatenate([keras.ops.convert_to_numpy(p[key]) for p in parts])
        for key in parts[0]
    }


def keras_predict_ms(preset, inputs_file, repeats):
    results = {}
    for backend in BACKENDS:
        log(f"  keras predict on {backend}")
        run = subprocess.run(
            [sys.executable, "-c", PREDICT_WORKER, preset, inputs_file,
             str(repeats)],
            env=dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES=""),
            capture_output=True, text=True,
        )  # fmt: skip
        if run.returncode:
            raise RuntimeError(f"{backend} predict failed:\n{run.stderr[-3000:]}")
        results[backend] = json.loads(run.stdout.strip().splitlines()[-1])
    return results


def digits_agreement(apm_preset, paths, teacher_preset=TEACHER):
    """Classes of the digits test split from each variant's global vector.

    The teacher's own linear head (`LinearHeadClassifier`) classifies the
    APM's global vector; each TFLite variant is compared with the float32
    Keras model (agreement) and with the labels (accuracy).

    Returns:
        list of dicts, one per variant plus one for the Keras model and one
        for the teacher itself.
    """
    import keras

    from keras_apm.cli.export import preset_inputs
    from keras_apm.export import load
    from keras_apm.models.apm import APM
    from keras_apm.teachers import Teacher
    from keras_apm.ttt.classifiers import LinearHeadClassifier

    raw, labels = digits("test")
    teacher = Teacher.from_preset(teacher_preset)
    classifier = LinearHeadClassifier(teacher)
    teacher_logits = np.concatenate(
        [
            keras.ops.convert_to_numpy(
                teacher(raw[i : i + 64].astype("float32"))["logits"]
            )
            for i in range(0, len(raw), 64)
        ]
    )
    inputs = preset_inputs(apm_preset, raw)
    reference = classifier.predict(
        keras_outputs(APM.from_preset(apm_preset), inputs)["global"]
    )
    rows = [
        {"predictor": "teacher", "accuracy": float(
            np.mean(teacher_logits.argmax(-1) == labels))},
        {"predictor": "keras_float32", "accuracy": float(
            np.mean(reference == labels)), "agreement": 1.0},
    ]  # fmt: skip
    for variant, path in paths.items():
        predicted = classifier.predict(load(path).predict(inputs)["global"])
        rows.append(
            {
                "predictor": f"tflite_{variant}",
                "accuracy": float(np.mean(predicted == labels)),
                "agreement": float(np.mean(predicted == reference)),
            }
        )
    for row in rows:
        row.update(check="digits_agreement", num_images=len(raw))
    return rows


def report_model(kind, name, preset, calibration, evaluation, work, args):
    """All JSON records of one model (`kind`: "tiny" or "coco")."""
    from keras_apm.cli.export import preset_inputs
    from keras_apm.export import export_variants
    from keras_apm.export import load
    from keras_apm.models.apm import APM

    calibration = preset_inputs(preset, calibration)
    evaluation = preset_inputs(preset, evaluation)
    out = os.path.join(work, name)
    os.makedirs(out, exist_ok=True)
    log(f"{name}: exporting {VARIANTS}")
    start = time.perf_counter()
    paths = export_variants(
        preset, out, VARIANTS, representative_data=calibration, overwrite=True
    )
    log(f"{name}: exported in {time.perf_counter() - start:.0f} s")
    model = APM.from_preset(preset)
    reference = keras_outputs(model, evaluation)
    records = []
    repeats = args.repeats if kind == "tiny" else args.coco_repeats
    for variant in VARIANTS:
        log(f"{name}: {variant}")
        record = {
            "check": "tflite_variant",
            "model": name,
            "preset": preset,
            "variant": variant,
            "size_mb": os.path.getsize(paths[variant]) / 1e6,
            "litert_ms_1_thread": litert_ms(
                paths[variant], evaluation[:1], 1, repeats
            ),
            "litert_ms_2_threads": litert_ms(
                paths[variant], evaluation[:1], 2, repeats
            ),
        }
        record.update(errors(reference, load(paths[variant]).predict(evaluation)))
        records.append(record)
    inputs_file = os.path.join(work, f"{name}_inputs.npy")
    np.save(inputs_file, evaluation[:1])
    for backend, ms in keras_predict_ms(preset, inputs_file, repeats).items():
        records.append(
            {
                "check": "keras_predict",
                "model": name,
                "backend": backend,
                "params": model.count_params(),
                "keras_predict_ms": ms["predict_ms"],
                "keras_call_ms": ms["call_ms"],
            }
        )
    if kind == "tiny" and name != "tiny_random":
        log(f"{name}: digits agreement with {TEACHER}")
        rows = digits_agreement(preset, paths)
        for row in rows:
            row["model"] = name
        records.extend(rows)
    for record in records:
        record["kind"] = kind
    return records


# The config of tests/test_export.py, whose quantized bounds this measures.
TEST_CONFIG = {
    "image_shape": (32, 32, 3),
    "patch_size": 4,
    "trunk_widths": (64, 32),
    "feature_dim": 16,
    "num_levels": 2,
    "rgb_activation": "sigmoid",
    "global_head": True,
    "global_num_heads": 4,
}


def bounds_records(work, seeds=6):
    """Errors of every variant of random models of the test config.

    Built and fed as tests/test_export.py does (seeded model, 8 random
    calibration images, 3 random test images, 8 locations), for `seeds`
    seeds: the figures behind the tests' quantized bounds.
    """
    import keras

    import keras_apm
    from keras_apm.export import export_variants
    from keras_apm.export import load

    records = []
    for seed in range(seeds):
        log(f"bounds: seed {seed}")
        keras.utils.set_random_seed(seed)
        model = keras_apm.APM(**TEST_CONFIG)
        rng = np.random.default_rng(seed)
        calibration = rng.integers(0, 256, (8, 32, 32, 3)) / 255.0
        images = rng.random((3, 32, 32, 3)).astype("float32")
        locations = np.concatenate(
            [rng.random((5, 2)) * 7, [[0, 0], [7, 7], [3, 0.5]]]
        ).astype("float32")
        out = os.path.join(work, "bounds", str(seed))
        os.makedirs(out, exist_ok=True)
        paths = export_variants(
            model, out, ("saved_model",) + VARIANTS,
            representative_data=calibration.astype("float32"), overwrite=True,
        )  # fmt: skip
        grid = keras_outputs(model, images)
        answers = {
            k: keras.ops.convert_to_numpy(v)
            for k, v in model.evaluate_locations(images, locations).items()
        }
        for variant, path in paths.items():
            runner = load(path)
            record = errors(grid, runner.predict(images))
            located = errors(
                answers,
                runner.evaluate_locations(runner.trigger_column(images), locations),
            )
            record.update(
                check="quantization_bounds", model="test_config", seed=seed,
                variant=variant, max_rel_error=max(
                    v for part in (record, located) for k, v in part.items()
                    if k.startswith("max_rel_error_")
                ),
                feature_cosine_min=min(
                    record["feature_cosine_min"], located["feature_cosine_min"]
                ),
            )  # fmt: skip
            records.append(record)
    for record in records:
        record["kind"] = "bounds"
    return records


# --- tables -----------------------------------------------------------------
def markdown(records):
    lines = []
    bounds = [r for r in records if r["check"] == "quantization_bounds"]
    if bounds:
        seeds = len({r["seed"] for r in bounds})
        lines += [
            f"Test config, {seeds} random models (seeds 0-{seeds - 1}), "
            "worst over seeds, outputs, full grid and fractional locations:",
            "",
            "| variant | max rel. error | min feature cosine |",
            "|---|---:|---:|",
        ]
        for variant in ("saved_model",) + VARIANTS:
            rows = [r for r in bounds if r["variant"] == variant]
            lines.append(
                f"| {variant} | {max(r['max_rel_error'] for r in rows):.2e} | "
                f"{min(r['feature_cosine_min'] for r in rows):.6f} |"
            )
        lines.append("")
    lines += [
        "| model | variant | size (MB) | LiteRT 1 thread (ms) | LiteRT 2 "
        "threads (ms) | max rel. error features / rgb / global | min "
        "feature cosine |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for r in records:
        if r["check"] != "tflite_variant":
            continue
        errs = " / ".join(
            f"{r[k]:.1e}" if k in r else "-"
            for k in (
                "max_rel_error_features",
                "max_rel_error_rgb",
                "max_rel_error_global",
            )
        )
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['size_mb']:.2f} | "
            f"{r['litert_ms_1_thread']:.2f} | {r['litert_ms_2_threads']:.2f} "
            f"| {errs} | {r['feature_cosine_min']:.5f} |"
        )
    lines += [
        "",
        "| model | parameters | Keras `predict` (ms): TensorFlow / JAX / "
        "PyTorch | `model(x)` (ms): TensorFlow / JAX / PyTorch |",
        "|---|---:|---:|---:|",
    ]
    predict = {}
    for r in records:
        if r["check"] == "keras_predict":
            predict.setdefault(r["model"], {"params": r["params"]})
            predict[r["model"]][r["backend"]] = r
    for model, row in predict.items():
        calls = [
            " / ".join(f"{row[b][key]:.2f}" for b in BACKENDS)
            for key in ("keras_predict_ms", "keras_call_ms")
        ]
        lines.append(f"| {model} | {row['params']:,} | {calls[0]} | {calls[1]} |")
    agreement = [r for r in records if r["check"] == "digits_agreement"]
    if agreement:
        lines += [
            "",
            f"sklearn_digits test split ({agreement[0]['num_images']} "
            "images), classes from the teacher's linear head:",
            "",
            "| predictor | accuracy | agreement with Keras float32 |",
            "|---|---:|---:|",
        ]
        for r in agreement:
            agree = f"{r['agreement']:.4f}" if "agreement" in r else "-"
            lines.append(
                f"| {r['predictor']} | {r['accuracy']:.4f} | {agree} |"
            )
    return "\n".join(lines)


def write_text(path, text):
    from keras_apm.utils.files import atomic_write

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def update_docs(path, table):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start, end = (text.find(m) for m in MARKERS)
    if start < 0 or end < start:
        raise ValueError(f"{path!r} lacks the markers {MARKERS}.")
    text = text[: start + len(MARKERS[0])] + "\n" + table + "\n" + text[end:]
    write_text(path, text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["bounds", "tiny", "coco"],
        choices=("bounds", "tiny", "coco"),
        help="bounds: 6 random models of the test config (the tests' "
        "quantized bounds); tiny: apm_tiny_digits; coco: COCO-sized",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="tiny model preset (default: apm_tiny_digits if it exists, "
        "else a random APM of its config)",
    )
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--coco-repeats", type=int, default=5)
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument(
        "--work-dir", default=os.path.join(tempfile.gettempdir(), "apm_export")
    )
    parser.add_argument(
        "--output",
        default=os.path.join(HERE, "results", "export_report.jsonl"),
    )
    parser.add_argument(
        "--docs", default=os.path.join(ROOT, "docs", "export.md")
    )
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    records = []
    if "tiny" in args.models:
        preset = args.preset
        if preset is None and os.path.isfile(
            os.path.join(BUILTIN_TINY, "config.json")
        ):
            preset = "apm_tiny_digits"
        if preset is None:
            name = "tiny_random"
            preset = random_preset(
                os.path.join(args.work_dir, "tiny_random_preset"),
                TINY_CONFIG,
                {"scaling": "unit"},
            )
        else:
            name = f"tiny_{os.path.basename(os.path.normpath(preset))}"
        train, _ = digits("train")
        test, _ = digits("test")
        calibration = train[: args.calibration_images]
        records += report_model("tiny", name, preset, calibration, test[:64],
                                args.work_dir, args)  # fmt: skip
    if "bounds" in args.models:
        records += bounds_records(args.work_dir)
    if "coco" in args.models:
        from keras_apm.convert.official import OFFICIAL_VARIANTS

        spec = OFFICIAL_VARIANTS["coco"]
        preset = random_preset(
            os.path.join(args.work_dir, "coco_random_preset"),
            spec["config"],
            spec["converter"],
        )
        calibration, evaluation = photos()
        records += report_model(
            "coco", "coco_random", preset, calibration, evaluation, args.work_dir, args
        )
    # Keep the records of the models not measured this time.
    if os.path.isfile(args.output):
        with open(args.output, encoding="utf-8") as f:
            kept = [json.loads(line) for line in f if line.strip()]
        measured = {r["kind"] for r in records}
        records = [r for r in kept if r.get("kind") not in measured] + records
        order = ("bounds", "tiny", "coco")
        records.sort(key=lambda r: order.index(r["kind"]))
    lines = "".join(json.dumps(r) + "\n" for r in records)
    write_text(args.output, lines)
    table = markdown(records)
    print(table)
    if args.docs:
        update_docs(args.docs, table)


if __name__ == "__main__":
    main()
