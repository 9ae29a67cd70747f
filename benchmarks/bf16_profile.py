"""Where `mixed_bfloat16` stands against the machine's bf16 GEMM peak, on one
backend (issue 27): the evidence behind docs/speed.md's bfloat16 section.

    KERAS_BACKEND=jax python benchmarks/bf16_profile.py
    KERAS_BACKEND=tensorflow python benchmarks/bf16_profile.py --model ttt

One JSON line per measurement, all of one process (so load from other jobs
hits every row alike; read ratios within one run):

- `"what": "gemm"`: float32 and bfloat16 GFLOP/s of `a @ b` at the APM's
  own GEMM shapes (`L` grid locations x one trunk layer), in the backend's
  fastest form of each dtype (JAX: `preferred_element_type=float32` for
  bf16, and the plain bf16-result dot as `bfloat16_plain`; TensorFlow:
  eager oneDNN, and `jit_compile` XLA as `*_xla`; PyTorch: `torch.matmul`).
- `"what": "model"`: the whole APM (`inference`: the jitted / `tf.function`
  / `no_grad` forward of benchmarks/gpu.py; `training`: one `APMDistiller`
  train-function step), best of `--repeats` calls taken in turn, with
  the executed GFLOP/s and its fraction of the bf16 (or f32) GEMM figure at
  the model's shapes. On JAX a third variant, `mixed_bfloat16_generic`,
  runs the same bf16 model with `keras_apm.backend.fused_ops` off (Keras'
  plain bf16-result dots): the before/after of `jax_fused_ops`.
- `"what": "hlo"` (JAX): per variant, the dots in XLA's optimized HLO by
  operand -> result dtype, `convert` ops, and the convolutions.
"""

import argparse
import collections
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="coco", choices=("coco", "ttt"))
    parser.add_argument("--what", nargs="+", default=["inference", "training"],
                        choices=("inference", "training"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny configs (seconds; figures meaningless)")
    parser.add_argument("--note", default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def best_of(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_forms(backend):
    """`{name: (dtype, make(a, b) -> call)}`: the backend's GEMM forms."""
    import numpy as np

    if backend == "jax":
        import jax
        import jax.numpy as jnp

        plain = jax.jit(lambda a, b: a @ b)
        f32acc = jax.jit(
            lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32)
        )

        def make(fn, dtype):
            def build(a, b):
                a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
                return lambda: fn(a, b).block_until_ready()
            return build

        return {
            "float32": make(plain, jnp.float32),
            "bfloat16": make(f32acc, jnp.bfloat16),
            "bfloat16_plain": make(plain, jnp.bfloat16),
        }
    if backend == "tensorflow":
        import tensorflow as tf

        xla = tf.function(lambda a, b: a @ b, jit_compile=True)

        def make(fn, dtype):
            def build(a, b):
                a = tf.cast(tf.constant(a), dtype)
                b = tf.cast(tf.constant(b), dtype)
                return lambda: fn(a, b).numpy()
            return build

        return {
            "float32": make(tf.matmul, tf.float32),
            "bfloat16": make(tf.matmul, tf.bfloat16),
            "float32_xla": make(xla, tf.float32),
            "bfloat16_xla": make(xla, tf.bfloat16),
        }
    import torch

    def make(dtype):
        def build(a, b):
            a = torch.from_numpy(np.asarray(a)).to(dtype)
            b = torch.from_numpy(np.asarray(b)).to(dtype)

            def call():
                with torch.inference_mode():
                    return a @ b
            return call
        return build

    return {"float32": make(torch.float32), "bfloat16": make(torch.bfloat16)}


def gemm_rows(backend, shapes, repeats):
    """GFLOP/s per form, per `(M, K, N)` shape, and their FLOP-weighted mean."""
    import numpy as np

    rng = np.random.default_rng(0)
    forms = gemm_forms(backend)
    rows, seconds = [], collections.Counter()
    for m, k, n in shapes:
        a = rng.standard_normal((m, k)).astype("float32")
        b = rng.standard_normal((k, n)).astype("float32")
        found = {}
        for name, build in forms.items():
            t = best_of(build(a, b), repeats)
            seconds[name] += t
            found[name] = round(2 * m * k * n / t / 1e9, 2)
        rows.append({"shape": [m, k, n], "gflops": found})
    flops = sum(2 * m * k * n for m, k, n in shapes)
    # The rate of running all the model's shapes once each, per form.
    overall = {name: round(flops / t / 1e9, 2) for name, t in seconds.items()}
    return rows, overall


def model_shapes(s, batch_size=1):
    """The per-location GEMMs of the fast path: `(B * L, in, out)` for each
    trunk layer after the first, the feature head(s) and the RGB head."""
    rows = s["locations"] * batch_size
    widths = list(s["widths"])
    shapes = [(rows, a, b) for a, b in zip(widths[:-1], widths[1:])]
    shapes.append((rows, widths[-1], s["D"] * s["levels"]))
    if s["rgb"]:
        rgb = list(s["rgb"])
        shapes.append((rows, widths[0], rgb[0]))
        shapes += [(rows, a, b) for a, b in zip(rgb[:-1], rgb[1:])]
    return shapes


def hlo_counts(text):
    """Dots by `operand,operand->result` dtype, converts, convolutions, and
    the dot fusions XLA hands to a library (YNNPACK / oneDNN)."""
    types = dict(re.findall(r"(%[\w.\-]+) = (\w+)\[", text))
    dots = collections.Counter()
    for result, lhs, rhs in re.findall(
        r"= (\w+)\[[^\]]*\]\S* dot\((%[\w.\-]+), (%[\w.\-]+)\)", text
    ):
        dots[f"{types.get(lhs)},{types.get(rhs)}->{result}"] += 1
    converts = collections.Counter(
        f"{types.get(src)}->{dst}" for dst, src in re.findall(
            r"= (\w+)\[[^\]]*\]\S* convert\((%[\w.\-]+)\)", text
        )
    )
    return {
        "dots": dict(dots),
        "converts": dict(converts),
        "convolutions": len(re.findall(r" convolution\(", text)),
        "library_dot_fusions": len(re.findall(r'"kind":"__(?:ynn|onednn)\w*"', text)),
    }


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np
    from keras import ops

    import gpu
    from keras_apm.backend import fused_ops

    backend = keras.backend.backend()
    base = {
        "benchmark": "bf16_profile",
        "backend": backend,
        "model": args.model,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        **({"note": args.note} if args.note else {}),
    }

    def emit(row):
        print(json.dumps({**base, **row}), flush=True)

    gpu_args = argparse.Namespace(smoke=args.smoke, chunk_size=None, seed=args.seed)
    variants = ["float32", "mixed_bfloat16"]
    if backend == "jax":
        variants.append("mixed_bfloat16_generic")
    rng = np.random.default_rng(args.seed)
    steps, flops, hlo = {}, {}, {}
    shape = None
    for variant in variants:
        generic = variant.endswith("_generic")
        dtype = variant.replace("_generic", "")
        if generic:  # Traced (at warm-up) without the backend's fast path.
            fused_ops._LOADED[backend] = None
        model = gpu.build_apm(args.model, dtype, gpu_args)
        shape = gpu.mlp_shape(model)
        fwd = gpu.forward_flops(shape, 1)[1]
        device = gpu.Device(backend)
        x = ops.convert_to_tensor(
            rng.random((1,) + model.image_shape).astype("float32")
        )
        distiller = batch = None
        for what in args.what:
            if what == "inference":
                step, _ = gpu.inference_step(model, x, backend)
                flops[what] = fwd
            else:
                import keras_apm

                batch = {
                    k: ops.convert_to_tensor(v)
                    for k, v in gpu.random_batch(model, 1, rng).items()
                }
                distiller = keras_apm.APMDistiller(model)
                distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
                step, _ = gpu.train_function_step(distiller, batch, backend)
                flops[what] = 3 * fwd
            sync = device.sync
            sync(step())  # Traces and compiles, fast path on or off.
            steps[variant, what] = (lambda s=step, y=sync: y(s()))
            if backend == "jax":
                training = what == "training"
                hlo[variant, what] = jax_hlo(
                    model, x, distiller if training else None, batch
                )
        fused_ops._LOADED.pop(backend, None)

    best = {key: float("inf") for key in steps}
    for _ in range(args.repeats):  # In turn: load hits every variant alike.
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            best[key] = min(best[key], time.perf_counter() - start)

    shapes = model_shapes(shape)
    rows, overall = gemm_rows(backend, shapes, max(args.repeats, 3))
    for row in rows:
        emit({"what": "gemm", **row})
    emit({"what": "gemm_model_shapes", "gflops": overall,
          "bf16_over_f32": round(overall["bfloat16"] / overall["float32"], 3)})
    for (variant, what), seconds in best.items():
        gflops = flops[what] / seconds / 1e9
        peak = overall["float32" if variant == "float32" else "bfloat16"]
        row = {
            "what": "model", "measurement": what, "variant": variant,
            "best_seconds": round(seconds, 4),
            "executed_gflops_per_s": round(gflops, 2),
            "fraction_of_gemm": round(gflops / peak, 3),
            "ratio_to_float32": round(best["float32", what] / seconds, 3),
        }
        if (variant, what) in hlo:
            row["hlo"] = hlo[variant, what]
        emit(row)


def jax_hlo(model, x, distiller, batch):
    """`hlo_counts` of the compiled inference forward or training step."""
    import jax

    if distiller is None:
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        fn = jax.jit(lambda t, n, x: model.stateless_call(t, n, x)[0])
        text = fn.lower(trainable, non_trainable, x).compile().as_text()
    else:
        state = (
            [v.value for v in distiller.trainable_variables],
            [v.value for v in distiller.non_trainable_variables],
            [v.value for v in distiller.optimizer.variables],
            [v.value for v in distiller.metrics_variables],
        )
        fn = jax.jit(lambda state, data: distiller.train_step(state, data))
        text = fn.lower(state, (batch, None, None)).compile().as_text()
    return hlo_counts(text)


if __name__ == "__main__":
    main()
