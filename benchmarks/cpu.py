"""CPU throughput of keras_apm on all three Keras backends against a plain
PyTorch baseline of the same math, measured in the same run (issue 18).

One command, about 10 minutes on 2 cores (the figures in
benchmarks/results/cpu.jsonl and the README come from it):

    python benchmarks/cpu.py --output benchmarks/results/cpu.jsonl

It starts one worker process per Keras backend (`tensorflow`, `jax`,
`torch`) and one for the baseline (plain PyTorch, no Keras model), builds
the same model in each, then asks them in turn for one timed call at a
time: repeat after repeat, each measurement (`inference`, `training`) goes
round the workers in a rotating order, with a short pause between calls so
the last worker's thread pool is idle. Only one worker computes at any
moment, so load from other jobs hits every worker alike; the medians and
their ratios come from the same run. `--smoke` runs tiny configs in seconds
(the test suite does; its figures mean nothing).

Models (random weights, float32, batch 1 by default, the official sizes
of `keras_apm.convert.OFFICIAL_VARIANTS`): `coco` (448 px, patch 14, a
32x32 grid, trunk 4096-4096-4096-2048-1024, 1024-d features, RGB head) and
`ttt` (448 px, trunk 4096-2048-1024, 768-d features, RGB and attention-pool
global heads). What is timed (see benchmarks/gpu.py for the builders):

- `inference`: JAX `jax.jit(model.stateless_call)`; PyTorch `model(x)`
  under `torch.no_grad()`; TensorFlow `tf.function(model)` (no XLA, Keras'
  default on a CPU-only machine). Inputs already converted (values in
  [0, 1]), outputs left where they are.
- `training`: one `APMDistiller` step on cached targets (MSE on the grid,
  the RGB head's patch target, cosine on the global vector for `ttt`),
  through the train function Keras builds (`make_train_function()`), Adam.
- the baseline: `torch.nn.Linear` stacks of the trunk, feature head and RGB
  head on the queries `[T ; PE]` of the whole grid in one call; training =
  MSE on both heads + `torch.optim.Adam`.

One JSON line per backend, model and measurement, with `seconds` (every
repeat), `median_seconds`, `images_per_s` (from the median),
`cpu_seconds_median` (the worker's process CPU time per call: less
sensitive to other jobs than wall time) and `ratio_to_torch_baseline`
(baseline median / this median), plus one line per baseline measurement.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gpu  # noqa: E402  (the shared builders)

BACKENDS = ("tensorflow", "jax", "torch")
BASELINE = "baseline"
WHATS = ("inference", "training")
MODELS = ("coco", "ttt")
DTYPES = ("float32", "mixed_bfloat16", "int8")
# The GEMM each dtype's rows run on, whose peak they are a fraction of. The
# int8 rows: the baseline (PyTorch dynamic quantization) and the Keras
# backends with an int8 GEMM (`fused_ops.has_int8_matmul`: PyTorch's
# `torch._int_mm`, JAX's integer dot) multiply int8 activations by int8
# kernels, so they count against the int8 peak; TensorFlow's int8 GEMM is
# slower than its float32 one, so its Keras-int8 layers hand the APM
# dequantized kernels (float32 products) and count against float32.
PEAK_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "int8": "float32"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny configs, 2 repeats (seconds; figures meaningless)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS,
                        default=list(BACKENDS))
    parser.add_argument("--what", nargs="+", choices=WHATS, default=list(WHATS))
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES),
                        help="float32; mixed_bfloat16 (Keras policy, bf16 autocast "
                        "for the baseline); int8 (model.quantize('int8'), "
                        "inference only)")
    parser.add_argument("--peak-size", type=int, default=None,
                        help="N of the N x N GEMMs that measure the machine's "
                        "peak (default 2048; smoke 128)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per worker and measurement "
                        "(default 5; smoke 2)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls first (compiles, first-touch memory)")
    parser.add_argument("--pause", type=float, default=None,
                        help="seconds between two timed calls (default 0.3; smoke 0)")
    parser.add_argument("--output", default=None,
                        help="append the JSON lines to this file too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default=None,
                        help="a remark stored in every JSON line (e.g. that the "
                        "machine was loaded)")
    parser.add_argument("--table", metavar="JSONL", default=None,
                        help="print the Markdown table of a results file and exit")
    parser.add_argument("--worker", choices=BACKENDS + (BASELINE,),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.smoke else 5
    if args.pause is None:
        args.pause = 0.0 if args.smoke else 0.3
    if args.peak_size is None:
        args.peak_size = 128 if args.smoke else 2048
    for name in ("batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.pause < 0:
        parser.error("--warmup and --pause must be >= 0")
    return args


# ---------------------------------------------------------------------------
# Worker: one process per backend, answering one JSON command per line.


class Worker:
    """What a worker holds for the current model: its timed steps."""

    def __init__(self, kind, args):
        self.kind = kind
        self.args = args
        self.steps = {}
        self.model = None

    def peak(self):
        """Best-of-3 GFLOP/s of a plain `a @ b` (N x N) per GEMM dtype."""
        import torch

        n = self.args.peak_size
        found = {}
        with torch.inference_mode():
            for name, dtype in (("float32", torch.float32),
                                ("bfloat16", torch.bfloat16), ("int8", torch.int8)):
                if dtype == torch.int8:
                    a = torch.randint(-127, 128, (n, n), dtype=dtype)
                    b = torch.randint(-127, 128, (n, n), dtype=dtype)
                    matmul = torch._int_mm  # int8 x int8 -> int32 (oneDNN)
                else:
                    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
                    matmul = torch.matmul
                matmul(a, b)
                best = float("inf")
                for _ in range(3):
                    start = time.perf_counter()
                    matmul(a, b)
                    best = min(best, time.perf_counter() - start)
                found[name] = round(2 * n**3 / best / 1e9, 2)
        return {"gemm_gflops": found, "gemm_size": n}

    def setup(self, name, dtype="float32"):
        import numpy as np
        from keras import ops

        args = self.args
        gpu_args = argparse.Namespace(
            smoke=args.smoke, chunk_size=None, seed=args.seed
        )
        started = time.perf_counter()
        whats = [w for w in args.what if dtype != "int8" or w == "inference"]
        model = gpu.build_apm(
            name, "float32" if dtype == "int8" else dtype, gpu_args
        )
        s = gpu.mlp_shape(model)
        info = {}
        if self.kind == BASELINE:
            grid_shape = model.grid_shape
            del model  # Only its shape was needed.
            for what in whats:
                step, sync, meta = gpu.build_baseline(
                    s, grid_shape, dtype, args.batch_size, args.seed,
                    args.smoke, training=what == "training",
                )
                self.steps[what] = (step, sync)
                info[what] = {**meta, **flop_fields(gpu.baseline_flops(
                    s, args.batch_size, what == "training"
                ))}
        else:
            device = gpu.Device(self.kind)
            int8_gemm = None
            if dtype == "int8":
                from keras_apm.backend import fused_ops

                model.quantize("int8")
                int8_gemm = fused_ops.has_int8_matmul()
            self.model = model
            rng = np.random.default_rng(args.seed)
            for what in whats:
                flops = gpu.forward_flops(s, args.batch_size)
                if what == "inference":
                    host = rng.random(
                        (args.batch_size,) + model.image_shape
                    ).astype("float32")
                    step, method = gpu.inference_step(
                        model, ops.convert_to_tensor(host), self.kind
                    )
                else:
                    import keras

                    import keras_apm

                    batch = {
                        k: ops.convert_to_tensor(v)
                        for k, v in gpu.random_batch(
                            model, args.batch_size, rng
                        ).items()
                    }
                    distiller = keras_apm.APMDistiller(model)
                    distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
                    step, _ = gpu.train_function_step(distiller, batch, self.kind)
                    method = "train_function"
                    flops = tuple(3 * f for f in flops)
                self.steps[what] = (step, device.sync)
                info[what] = {"method": method, **flop_fields(flops)}
                if int8_gemm is not None:
                    # What the Keras-int8 Dense layers multiply with.
                    info[what]["int8_matmul"] = (
                        "int8 GEMM" if int8_gemm else "dequantized float32"
                    )
        warm = {}
        for what, (step, sync) in self.steps.items():
            start = time.perf_counter()
            for _ in range(max(args.warmup, 1)):  # Traces and compiles.
                sync(step())
            warm[what] = round(time.perf_counter() - start, 3)
        for what in info:
            info[what]["warmup_s"] = warm[what]
        return {"info": info, "setup_s": round(time.perf_counter() - started, 3)}

    def time(self, what):
        step, sync = self.steps[what]
        cpu = time.process_time()
        start = time.perf_counter()
        sync(step())
        return {
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu,
        }

    def release(self):
        import gc

        import keras

        self.steps.clear()
        self.model = None
        keras.backend.clear_session()
        gc.collect()
        return {}


def flop_fields(flops):
    """Model FLOPs per image (the direct form: what the baseline computes)
    and those really executed (the split first layer skips some)."""
    model, executed = flops
    return {"flops_per_image": int(model), "executed_flops_per_image": int(executed)}


def worker_main(args):
    # Answers go to the real stdout; anything libraries print goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    if args.worker != "tensorflow":
        # JAX, PyTorch and the baseline run without TensorFlow (as on the GPU
        # machines): less memory and a faster start.
        sys.meta_path.insert(0, gpu._NoTensorFlow())
    if args.smoke and args.worker == "jax" and "XLA_FLAGS" not in os.environ:
        # Smoke figures mean nothing: compile fast instead (as gpu.py does).
        os.environ["XLA_FLAGS"] = (
            "--xla_backend_optimization_level=0 "
            "--xla_llvm_disable_expensive_passes=true"
        )
    sys.path.insert(0, ROOT)  # keras_apm from this checkout.
    import keras  # noqa: F401  (the backend comes from KERAS_BACKEND)

    worker = Worker(args.worker, args)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["cmd"] == "exit":
                break
            if command["cmd"] == "setup":
                answer = worker.setup(command["model"], command["dtype"])
            elif command["cmd"] == "peak":
                answer = worker.peak()
            elif command["cmd"] == "time":
                answer = worker.time(command["what"])
            else:
                answer = worker.release()
        except Exception as error:
            traceback.print_exc()
            answer = {"error": f"{type(error).__name__}: {error}"[:2000]}
        answers.write(json.dumps(answer, default=gpu._jsonable) + "\n")
        answers.flush()


# ---------------------------------------------------------------------------
# Coordinator.


class Remote:
    """A worker process and its command pipe."""

    def __init__(self, kind, args):
        self.kind = kind
        env = dict(os.environ)
        env["KERAS_BACKEND"] = "torch" if kind == BASELINE else kind
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        command = [
            sys.executable, os.path.abspath(__file__), "--worker", kind,
            "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
            "--seed", str(args.seed), "--what", *args.what,
            "--peak-size", str(args.peak_size),
        ]
        if args.smoke:
            command.append("--smoke")
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            text=True, bufsize=1,
        )

    def ask(self, **command):
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"the {self.kind} worker exited "
                    f"(code {self.proc.poll()}); its stderr says why"}
        return json.loads(line)

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


def markdown_table(path):
    """Images/s, fraction of the GEMM peak and ratio to the baseline of the
    last run in `path`."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    last = max(r["started"] for r in records)
    records = [r for r in records if r["started"] == last and "error" not in r]
    peak = [r for r in records if r["what"] == "gemm_peak"]
    rows = [
        "| model | dtype | measurement | plain PyTorch | TensorFlow | JAX | PyTorch backend |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        for dtype in DTYPES:
            for what in WHATS:
                mine = {r["backend"]: r for r in records if r.get("model") == name
                        and r.get("dtype", "float32") == dtype and r["what"] == what}
                base = [r for r in mine.values() if r["baseline"]]
                if not base:
                    continue
                cells = [cell(base[0])]
                for backend in BACKENDS:
                    r = mine.get(backend)
                    cells.append("-" if r is None else cell(r) + (
                        f", {r['ratio_to_torch_baseline']:.2f}x"
                    ))
                rows.append(f"| {name} | {dtype} | {what} | " + " | ".join(cells) + " |")
    note = ""
    if peak:
        gemm = peak[-1]["gemm_gflops"]
        note = "GEMM peak (torch `a @ b`, best of the run): " + ", ".join(
            f"{k} {v:.4g} GFLOP/s" for k, v in gemm.items()
        ) + ". "
    if records and records[0].get("note"):
        note += f"Note: {records[0]['note']}. "
    return "\n".join(rows) + (
        f"\n\nimages/s (fraction of the GEMM peak of the row's dtype, ratio to "
        f"plain PyTorch). {note}(run of {last}, `{os.path.basename(path)}`)"
    )


def cell(record):
    text = f"{record['images_per_s']:.3g}/s"
    if "fraction_of_peak" in record:
        text += f" ({record['fraction_of_peak']:.0%} of {record['peak_dtype']})"
    return text


def progress(message):
    stamp = time.strftime("%H:%M:%S")
    print(f"[cpu.py {stamp}] {message}", file=sys.stderr, flush=True)


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    if args.table:
        print(markdown_table(args.table))
        return
    emit = gpu.Emitter(args.output, {
        "benchmark": "cpu",
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "smoke": args.smoke,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1min": round(os.getloadavg()[0], 2),
        **({"note": args.note} if args.note else {}),
    })
    kinds = [BASELINE] + list(args.backends)
    remotes = {kind: Remote(kind, args) for kind in kinds}
    try:
        # The machine's GEMM peak, before and after (the best of both counts:
        # other jobs only ever lower it).
        progress("measuring the machine's GEMM peak")
        before = remotes[BASELINE].ask(cmd="peak")
        peaks = {"before": before}
        for name in args.models:
            for dtype in args.dtypes:
                run_model(name, dtype, args, remotes, emit, peaks)
        peaks["after"] = remotes[BASELINE].ask(cmd="peak")
        emit({"what": "gemm_peak", "backend": "torch (plain, no Keras)",
              "before": before, "after": peaks["after"],
              "gemm_gflops": best_peak(*peaks.values())})
    finally:
        for remote in remotes.values():
            remote.close()


def best_peak(*answers):
    """Per GEMM dtype, the best GFLOP/s of several `peak` answers."""
    found = {}
    for answer in answers:
        for dtype, gflops in answer.get("gemm_gflops", {}).items():
            found[dtype] = max(found.get(dtype, 0.0), gflops)
    return found


def run_model(name, dtype, args, remotes, emit, peaks):
    kinds = list(remotes)
    whats = [w for w in args.what if dtype != "int8" or w == "inference"]
    infos, failed = {}, {}
    for kind in kinds:  # Builds one at a time: the machine is small.
        progress(f"{name} {dtype}: building and warming up on {kind}")
        answer = remotes[kind].ask(cmd="setup", model=name, dtype=dtype)
        if "error" in answer:
            failed[kind] = answer["error"]
        else:
            infos[kind] = answer
    times = {(k, w): [] for k in kinds for w in whats}
    started = time.perf_counter()
    for repeat in range(args.repeats):
        progress(f"{name} {dtype}: repeat {repeat + 1} of {args.repeats}")
        for what in whats:
            live = [k for k in kinds if k not in failed]
            shift = repeat % max(len(live), 1)
            for kind in live[shift:] + live[:shift]:
                time.sleep(args.pause)
                answer = remotes[kind].ask(cmd="time", what=what)
                if "error" in answer:
                    failed[kind] = answer["error"]
                else:
                    times[kind, what].append(answer)
    loop_s = round(time.perf_counter() - started, 3)
    for kind in kinds:
        remotes[kind].ask(cmd="release")
    # Measured again after each model and dtype: the best so far counts.
    peaks[name, dtype] = remotes[BASELINE].ask(cmd="peak")
    gemm = best_peak(*peaks.values())
    for what in whats:
        base = times[BASELINE, what]
        base_median = median([t["seconds"] for t in base]) if base else None
        base_cpu = median([t["cpu_seconds"] for t in base]) if base else None
        for kind in kinds:
            record = {
                "model": name,
                "dtype": dtype,
                "what": what,
                "backend": "torch (plain, no Keras)" if kind == BASELINE else kind,
                "baseline": kind == BASELINE,
            }
            if kind in failed and not times[kind, what]:
                emit({**record, "error": failed[kind]})
                continue
            seconds = [t["seconds"] for t in times[kind, what]]
            cpu = [t["cpu_seconds"] for t in times[kind, what]]
            info = infos[kind]["info"][what]
            mid = median(seconds)
            record.update({
                **info,
                "setup_s": infos[kind]["setup_s"],
                "seconds": [round(t, 6) for t in seconds],
                "median_seconds": round(mid, 6),
                "images_per_s": round(args.batch_size / mid, 4),
                "cpu_seconds_median": round(median(cpu), 6),
                "model_gflops_per_s": round(
                    args.batch_size * info["flops_per_image"] / mid / 1e9, 2
                ),
                "loop_s": loop_s,
            })
            # int8 rows that run int8 GEMMs (the baseline; Keras backends
            # with `int8_matmul == "int8 GEMM"`) count against the int8
            # peak, the others against float32 (PEAK_DTYPE).
            int8_gemm = dtype == "int8" and (
                kind == BASELINE or info.get("int8_matmul") == "int8 GEMM"
            )
            peak_dtype = "int8" if int8_gemm else PEAK_DTYPE[dtype]
            executed = args.batch_size * info["executed_flops_per_image"] / mid
            if gemm.get(peak_dtype):
                record.update({
                    "executed_gflops_per_s": round(executed / 1e9, 2),
                    "peak_dtype": peak_dtype,
                    "peak_gflops": gemm[peak_dtype],
                    "fraction_of_peak": round(executed / 1e9 / gemm[peak_dtype], 4),
                })
            if kind != BASELINE and base_median:
                record["ratio_to_torch_baseline"] = round(base_median / mid, 4)
                record["cpu_ratio_to_torch_baseline"] = round(
                    base_cpu / median(cpu), 4
                )
            emit(record)


if __name__ == "__main__":
    main()
