"""GPU throughput of keras_apm (issue 7): inference, distillation training,
batched and single-image test-time training, chunked-memory, and a plain
PyTorch baseline of the same MLP measured in the same run.

Prints one JSON line per measurement (and appends it to `--output`). Run it
once per Keras backend; the backend is the one in `KERAS_BACKEND` (JAX or
PyTorch; TensorFlow is not supported here):

    KERAS_BACKEND=jax python benchmarks/gpu.py --output benchmarks/results/gpu.jsonl
    KERAS_BACKEND=torch python benchmarks/gpu.py --output benchmarks/results/gpu.jsonl
    KERAS_BACKEND=jax python benchmarks/gpu.py --smoke   # tiny, CPU, seconds

Models (random weights, `keras_apm.APM`): `coco` is the official COCO
variant (448 px, patch 14, 32x32 grid, trunk 4096-4096-4096-2048-1024,
1024-d features, RGB head), `ttt` the official TTT variant (trunk
4096-2048-1024, 768-d features, RGB and global heads). `--smoke` swaps in
tiny configs (32 px, patch 4) and few iterations so every code path runs on
a CPU in seconds; its figures mean nothing.

Each record has `what`, one of:
- `inference`: `method="stateless_call_jit"` (JAX: `jax.jit` of
  `model.stateless_call`, inputs on the device, `block_until_ready`) or
  `"model_call"` (PyTorch: `model(x)` under `torch.no_grad()`, CUDA input,
  `torch.cuda.synchronize()`); plus `method="predict_on_batch"`,
  `host_copy=true`: NumPy in, NumPy out, the copies included.
- `training`: one `APMDistiller` step on cached targets (a dict batch
  `{"images", "grid", "global"?}` already on the device), through
  `method="train_function"` (the step Keras builds in
  `make_train_function()`: on JAX the jitted stateless `train_step`, called
  with the state tuple and an iterator of device arrays, no host sync per
  step; on PyTorch the eager `train_step`) and `method="train_on_batch"`
  (the same step plus Keras' per-call bookkeeping and the host read of the
  logs).
- `baseline_torch_inference`, `baseline_torch_training`: a plain PyTorch
  `nn.Linear` stack of the same MLP and the same algebra (trunk with ReLU,
  feature head, RGB head fed `[features ; T ; PE]`; the first trunk and RGB
  layers split by input part as keras_apm does), the whole grid in one
  call, no chunk loop, `inference_mode`; bf16 autocast for
  `mixed_bfloat16`, plain float32 otherwise (float32 on CPU in `--smoke`);
  for `int8` (inference, CPU only) PyTorch's dynamic int8 `nn.Linear`;
  training = MSE on both heads + `torch.optim.Adam`. `int8` rows: the
  float32 model after `model.quantize("int8")`, inference only. Measured before the
  Keras records of the same model and dtype, which then carry
  `ratio_to_torch_baseline` (their images/s over the baseline's).
- `ttt_batched`: `keras_apm.BatchedTTT` (K steps, Adam 1e-4, MSE on the
  global vector) on a batch of images, images/s counting the CLIP
  ViT-L/14-sized teacher's forward (random weights; 224 px, patch 14, 24
  layers, width 1024, 16 heads, MLP 4096, projection 768) and the student
  preprocessing; `teacher_seconds` and `adapt_seconds` split one batch.
  `BatchedTTT` computes in float32 whatever the student's policy; the
  teacher follows `dtype`.
- `ttt_single`: `keras_apm.TestTimeTrainer.adapt` on one raw NumPy image
  (teacher, K steps, classification), seconds per image.
- `memory_chunked`: peak device memory of
  `model.evaluate_locations(images, locations, chunk_size=c)` for growing
  numbers of random fractional locations. The output `(B, L, D)` grows with
  L by itself (`output_bytes`); the rest should stay flat. JAX cannot reset
  its peak counter, so on a GPU these run in a fresh subprocess per model
  and dtype, counts in increasing order.

`tflops` is achieved model FLOP/s from the analytic count of the MLP,
`flops_per_image` (2 FLOPs per multiply-add; training = 3x forward; see
`query_macs`). Left out: the column convolution (under 0.1%) and the ttt
model's attention-pool head (one learned query, folded into the key and
value projections: 2 * L * D * heads multiply-adds, well under 1%).
`tflops_executed` counts what the fast path (`PerceptionMLP.split_call`)
really multiplies. `wall_s`: the whole measurement, builds and compiles
included (to plan a run). `peak_memory_bytes`: PyTorch `max_memory_allocated`
after a reset before the timed loop (`peak_memory_scope="measurement"`);
JAX `memory_stats()["peak_bytes_in_use"]`, the process's running peak
(`"process"`); null on CPU. Every measurement is wrapped: a failure (an
OOM) becomes a record with `"error"` and the run goes on.
Float32 matmuls: `fp32_matmul_precision` records the backend's setting
(XLA may use TF32 on GPUs where PyTorch's default `"highest"` does not).
"""

import argparse
import gc
import importlib.abc
import importlib.machinery
import json
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SUPPORTED_BACKENDS = ("jax", "torch")
WHATS = (
    "baseline_torch_inference",
    "baseline_torch_training",
    "inference",
    "training",
    "memory_chunked",
    "ttt_batched",
    "ttt_single",
)
# "int8": `model.quantize("int8")` on the float32 model, inference only.
DTYPES = ("float32", "mixed_bfloat16", "int8")
MODELS = ("coco", "ttt")

# Tiny stand-ins for --smoke: same structure (5- and 3-layer trunks, RGB
# head, global head for ttt), 32 px images with patch 4 (an 8x8 grid).
SMOKE_CONFIGS = {
    "coco": {
        "image_shape": (32, 32, 3),
        "patch_size": 4,
        "trunk_widths": (128, 128, 128, 64, 32),
        "feature_dim": 32,
        "rgb_head": True,
        "global_head": False,
    },
    "ttt": {
        "image_shape": (32, 32, 3),
        "patch_size": 4,
        "trunk_widths": (128, 64, 32),
        "feature_dim": 16,
        "rgb_head": True,
        "global_head": True,
        "global_num_heads": 2,
    },
}
CLIP_L14 = {  # The official TTT teacher's vision tower (OpenAI ViT-L/14).
    "patch_size": 14,
    "hidden_dim": 1024,
    "num_layers": 24,
    "num_heads": 16,
    "intermediate_dim": 4096,
    "image_shape": (224, 224, 3),
}
CLIP_SMOKE = {
    "patch_size": 4,
    "hidden_dim": 16,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_dim": 32,
    "image_shape": (16, 16, 3),
}


class _NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import tensorflow` fail as on the GPU machines, which have no
    TensorFlow: a CPU run then imports what a GPU run imports (and starts
    seconds sooner). Keras and keras-hub only use it when it is there.
    `find_spec` answers (with no origin, so probes such as torch._dynamo's
    skip it); loading it raises ModuleNotFoundError."""

    BLOCKED = ("tensorflow", "tensorflow_text", "tensorflow_datasets", "tf_keras")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        raise ModuleNotFoundError(f"No module named {module.__name__!r}")


def requested_backend():
    """The Keras backend this process will get, without importing Keras."""
    backend = os.environ.get("KERAS_BACKEND")
    if backend:
        return backend
    config = os.path.join(
        os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "keras.json"
    )
    try:
        with open(config) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"  # Keras' own default.


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny configs and few iterations (CPU, seconds)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--what", nargs="+", choices=WHATS, default=list(WHATS))
    parser.add_argument("--batch-size", type=int, default=None,
                        help="inference/training batch (default 64; smoke 2)")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed iterations (default 20; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed iterations first (default 3; smoke 1)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="the model's chunk_size for inference/training "
                        "(default None: all locations in one call)")
    parser.add_argument("--memory-chunk-size", type=int, default=None,
                        help="chunk_size of memory_chunked (default 1024; smoke 32)")
    parser.add_argument("--memory-counts", type=int, nargs="+", default=None,
                        help="locations per memory_chunked record "
                        "(default 1024 4096 16384 65536; smoke 32 64 128)")
    parser.add_argument("--memory-batch-size", type=int, default=1)
    parser.add_argument("--memory-subprocess", choices=("auto", "yes", "no"),
                        default="auto", help="JAX: run memory_chunked in a "
                        "fresh process per model and dtype (auto: on GPUs)")
    parser.add_argument("--ttt-batch-size", type=int, default=None,
                        help="images per BatchedTTT batch (default 32; smoke 2)")
    parser.add_argument("--ttt-steps", type=int, default=None,
                        help="TTT steps K (default 20; smoke 2)")
    parser.add_argument("--ttt-iters", type=int, default=None,
                        help="timed TTT batches / single images (default 3; smoke 1)")
    parser.add_argument("--output", default=None,
                        help="append the JSON lines to this file too")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    smoke = args.smoke
    defaults = {
        "batch_size": (64, 2),
        "iters": (20, 2),
        "warmup": (3, 1),
        "memory_chunk_size": (1024, 32),
        "memory_counts": ((1024, 4096, 16384, 65536), (32, 64, 128)),
        "ttt_batch_size": (32, 2),
        "ttt_steps": (20, 2),
        "ttt_iters": (3, 1),
    }
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if smoke else full)
    for name in ("batch_size", "iters", "memory_chunk_size", "memory_batch_size",
                 "ttt_batch_size", "ttt_steps", "ttt_iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if min(args.memory_counts) < 1:
        parser.error("--memory-counts must be >= 1")
    return args


# ---------------------------------------------------------------------------
# Backend plumbing: device name, synchronisation, peak memory.


class Device:
    """What this process runs on, and how to wait for it and read memory."""

    def __init__(self, backend):
        self.backend = backend
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            self.name = device.device_kind
            self.platform = "gpu" if device.platform in ("gpu", "cuda", "rocm") else (
                device.platform
            )
            self._jax_device = device
            self.backend_version = jax.__version__
            precision = jax.config.jax_default_matmul_precision
            self.fp32_matmul = "xla_default" if precision is None else str(precision)
        elif backend == "tensorflow":  # benchmarks/cpu.py only.
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            self.cuda = False
            self.name = "gpu" if gpus else "cpu"
            self.platform = "gpu" if gpus else "cpu"
            self.backend_version = tf.__version__
            self.fp32_matmul = (
                "tf32"
                if tf.config.experimental.tensor_float_32_execution_enabled()
                else "highest"
            )
        else:
            import torch

            self.cuda = torch.cuda.is_available()
            self.name = torch.cuda.get_device_name() if self.cuda else "cpu"
            self.platform = "gpu" if self.cuda else "cpu"
            self.backend_version = torch.__version__
            self.fp32_matmul = torch.get_float32_matmul_precision()

    def sync(self, tree=None):
        if self.backend == "jax":
            import jax

            if tree is not None:
                jax.block_until_ready(tree)
        elif self.cuda:
            import torch

            torch.cuda.synchronize()

    def reset_peak(self):
        """Torch resets its peak counter; JAX has none to reset."""
        if self.backend == "torch" and self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def peak_memory(self):
        if self.backend == "jax":
            stats = self._jax_device.memory_stats()
            return None if not stats else stats.get("peak_bytes_in_use")
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated()
        return None

    def memory_in_use(self):
        if self.backend == "jax":
            stats = self._jax_device.memory_stats()
            return None if not stats else stats.get("bytes_in_use")
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated()
        return None

    @property
    def has_memory_stats(self):
        return self.peak_memory() is not None

    @property
    def peak_scope(self):
        if not self.has_memory_stats:
            return None
        return "process" if self.backend == "jax" else "measurement"

    def free(self):
        """Drops what the last measurement left on the device (a no-op on
        CPU, where a `gc.collect` per measurement only costs time)."""
        if self.platform != "gpu":
            return
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


class Emitter:
    """Prints each record as one JSON line, and appends it to `path`."""

    def __init__(self, path, common):
        self.path = path
        self.common = common
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def __call__(self, record, raw=False):
        if not raw:
            record = {**self.common, **record}
        line = json.dumps(record, default=_jsonable)
        print(line, flush=True)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def _itemsize(dtype):
    """Bytes per element of a backend dtype ("bfloat16" -> 2)."""
    import keras

    name = keras.backend.standardize_dtype(dtype)
    return int("".join(c for c in name if c.isdigit())) // 8


def timed(step, iters, warmup, device):
    """Mean seconds per call of `step()` (which returns what to wait for)."""
    out = None
    for _ in range(warmup):
        out = step()
        device.sync(out)
    device.reset_peak()
    start = time.perf_counter()
    for _ in range(iters):
        out = step()
    device.sync(out)
    return (time.perf_counter() - start) / iters


# ---------------------------------------------------------------------------
# FLOP counts (2 FLOPs per multiply-add).


def mlp_shape(model):
    """The numbers the FLOP count needs, read off an `APM`."""
    h, w = model.grid_shape
    return {
        "locations": h * w,
        "n": h * w * model.column_channels,  # trigger column length
        "d": model.position_dim,
        "widths": tuple(model.trunk_widths),
        "D": model.feature_dim,
        "levels": model.num_levels,
        "rgb": tuple(model.rgb_widths) if model.rgb_head else None,
    }


def query_macs(s, rgb=True):
    """Multiply-adds of one query `[T ; PE]` through the MLP, direct form:

    (n + d) * w1 + sum_i w_i * w_{i+1} + levels * w_k * D           (trunk, heads)
    + (D + n + d) * r1 + sum_j r_j * r_{j+1} + r_m * 3              (RGB head)

    with n the trigger length (h*w), d the position-code width, w the trunk
    widths, D the feature width and r the RGB widths. Official COCO: 54.33 M
    (108.7 MFLOP), TTT: 20.45 M (40.9 MFLOP), as in APM_SPEC.md.
    """
    widths = s["widths"]
    macs = (s["n"] + s["d"]) * widths[0]
    macs += sum(a * b for a, b in zip(widths, widths[1:]))
    macs += s["levels"] * widths[-1] * s["D"]
    if rgb and s["rgb"] is not None:
        chain = (s["D"] + s["n"] + s["d"],) + s["rgb"] + (3,)
        macs += sum(a * b for a, b in zip(chain, chain[1:]))
    return macs


def forward_flops(s, batch_size, rgb=True):
    """`(model FLOPs, executed FLOPs)` per image of one forward pass.

    Model FLOPs: locations * query_macs * 2 (what the baseline computes).
    Executed (the fast path, `split_call`): the T part of the first trunk
    layer and of the first RGB layer once per image, their PE part once per
    call of B images, the rest per location:
    L * (query_macs - (n + d) * (w1 + r1)) + n * (w1 + r1) + L * d * (w1 + r1) / B.
    """
    macs = query_macs(s, rgb)
    first = s["widths"][0] + (s["rgb"][0] if rgb and s["rgb"] else 0)
    per_location = macs - (s["n"] + s["d"]) * first
    executed = (
        s["locations"] * per_location
        + s["n"] * first
        + s["locations"] * s["d"] * first / batch_size
    )
    return 2 * s["locations"] * macs, 2 * executed


def ttt_flops(s, steps):
    """`(model, executed)` student FLOPs per image of one `BatchedTTT.adapt`:
    `steps` training steps (3x forward) plus one final forward, trunk and
    feature head only (the RGB head is not run with rgb_weight=0). Executed:
    `batched_forward` multiplies the PE part per image (its kernels differ per
    image), so only the T part is per image: L * (q - n * w1) + n * w1.
    The teacher's FLOPs are not counted.
    """
    macs = query_macs(s, rgb=False)
    first = s["n"] * s["widths"][0]
    executed = s["locations"] * (macs - first) + first
    passes = 3 * steps + 1
    return 2 * passes * s["locations"] * macs, 2 * passes * executed


def throughput(images_per_s, flops):
    """`tflops`, `tflops_executed` from images/s and `(model, executed)`."""
    model, executed = flops
    return {
        "tflops": round(images_per_s * model / 1e12, 4),
        "tflops_executed": round(images_per_s * executed / 1e12, 4),
        "flops_per_image": int(model),
    }


# ---------------------------------------------------------------------------
# Builders.


def model_config(name, smoke, chunk_size):
    if smoke:
        config = dict(SMOKE_CONFIGS[name])
    else:
        from keras_apm.convert import OFFICIAL_VARIANTS

        config = dict(OFFICIAL_VARIANTS[name]["config"])
    config["chunk_size"] = chunk_size
    return config


def build_apm(name, dtype, args):
    import keras

    import keras_apm

    keras.utils.set_random_seed(args.seed)
    config = model_config(name, args.smoke, args.chunk_size)
    if dtype == "int8":
        model = keras_apm.APM(**config, dtype="float32")
        model.quantize("int8")
        return model
    return keras_apm.APM(**config, dtype=dtype)


def random_batch(model, batch_size, rng):
    """Raw RGB images in [0, 255] and random cached targets, NumPy."""
    h, w = model.grid_shape
    d = model.feature_dim
    batch = {
        "images": rng.uniform(0, 255, (batch_size,) + model.image_shape).astype(
            "float32"
        ),
        "grid": rng.standard_normal((batch_size, h, w, d)).astype("float32"),
    }
    if model.global_head:
        batch["global"] = rng.standard_normal((batch_size, d)).astype("float32")
    return batch


def build_clip_teacher(dtype, smoke, projection_dim, seed):
    """A random CLIP teacher: ViT-L/14-sized vision tower (tiny in smoke)
    in a `CLIPBackbone` with a `projection_dim` image projection (the
    official target is the projected embedding). The text tower is tiny: the
    teacher never runs it."""
    import keras
    import keras_hub

    from keras_apm.teachers import CLIPTeacher

    keras.utils.set_random_seed(seed)
    vision = keras_hub.models.CLIPVisionEncoder(
        **(CLIP_SMOKE if smoke else CLIP_L14), dtype=dtype
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=64,
        embedding_dim=16,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        intermediate_dim=32,
        max_sequence_length=8,
        dtype=dtype,
    )
    backbone = keras_hub.models.CLIPBackbone(
        vision_encoder=vision, text_encoder=text, projection_dim=projection_dim,
        dtype=dtype,
    )
    return CLIPTeacher(backbone)


# ---------------------------------------------------------------------------
# Measurements. Each returns a dict of fields (or a list of them).


def build_baseline(s, grid_shape, dtype, batch_size, seed, smoke, training):
    """Plain PyTorch: the same algebra as the APM as `nn.Linear` stacks, the
    whole grid in one call, no chunk loop, no Keras.

    The first trunk layer and the first RGB layer split their input
    `[T ; PE]` (and `[features ; T ; PE]`) as the APM does
    (`explicit_weights.split_dense`): the trigger's share is one product per
    image, the position codes' share one per location, added before the
    ReLU. So both execute the same FLOPs (`forward_flops`'s executed count).
    Inference runs under `torch.inference_mode()`; `"mixed_bfloat16"` under
    bf16 autocast; `"int8"` (inference only) through PyTorch's dynamic int8
    `nn.Linear` (`torch.ao.quantization.quantize_dynamic`: int8 weights,
    activations quantized per call, int8 GEMM).

    `s` is `mlp_shape(model)`. Returns `(step, sync, info)`: `step()` runs
    one forward or one training step (MSE on both heads,
    `torch.optim.Adam`), `sync()` waits for the device, `info` describes it.
    """
    import numpy as np
    import torch
    from keras import ops

    from keras_apm.layers.position_encoding import grid_locations
    from keras_apm.layers.position_encoding import sincos_position_encoding_2d

    where = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = dtype == "mixed_bfloat16" and not (smoke and where == "cpu")
    int8 = dtype == "int8"
    if int8 and (training or where != "cpu"):
        raise ValueError(
            "The int8 baseline (PyTorch dynamic quantization) runs inference "
            f"on CPU only. Received: training={training}, device={where!r}."
        )
    torch.manual_seed(seed)
    nn = torch.nn
    n, d, widths = s["n"], s["d"], s["widths"]
    # First layers split by input part: [T ; PE] @ K = T @ K_T + PE @ K_PE.
    first = nn.ModuleDict({"t": nn.Linear(n, widths[0]),
                           "pe": nn.Linear(d, widths[0], bias=False)})
    layers, width = [], widths[0]
    for out in widths[1:]:  # The rest of the APM trunk: Dense + ReLU.
        layers += [nn.Linear(width, out), nn.ReLU()]
        width = out
    trunk = nn.Sequential(*layers)
    head = nn.Linear(width, s["D"])
    rgb_first = rgb = None
    if s["rgb"] is not None:
        r1 = s["rgb"][0]
        rgb_first = nn.ModuleDict({"f": nn.Linear(s["D"], r1),
                                   "t": nn.Linear(n, r1, bias=False),
                                   "pe": nn.Linear(d, r1, bias=False)})
        layers, width = [], r1
        for out in s["rgb"][1:] + (3,):  # Official head: ReLU after every layer.
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        rgb = nn.Sequential(*layers)
    modules = nn.ModuleList(
        [m for m in (first, trunk, head, rgb_first, rgb) if m is not None]
    ).to(where)
    if int8:
        modules = torch.ao.quantization.quantize_dynamic(
            modules, {nn.Linear}, dtype=torch.qint8
        )
        first, trunk, head = modules[0], modules[1], modules[2]
        if rgb is not None:
            rgb_first, rgb = modules[3], modules[4]

    b = batch_size
    codes = ops.convert_to_numpy(
        sincos_position_encoding_2d(grid_locations(grid_shape), d)
    )
    codes = torch.from_numpy(np.asarray(codes, "float32")).to(where)  # (L, d)
    trigger = torch.randn(b, 1, n, device=where)

    def forward():
        hidden = torch.relu(first["t"](trigger) + first["pe"](codes))  # (B, L, w1)
        features = head(trunk(hidden))
        if rgb is None:
            return features, None
        mixed = rgb_first["f"](features) + rgb_first["t"](trigger)
        return features, rgb(torch.relu(mixed + rgb_first["pe"](codes)))

    def autocast():
        return torch.autocast(device_type=where, dtype=torch.bfloat16, enabled=bf16)

    if training:
        optimizer = torch.optim.Adam(modules.parameters(), lr=1e-4)
        target_features = torch.randn(b, s["locations"], s["D"], device=where)
        target_rgb = torch.rand(b, s["locations"], 3, device=where)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                features, colours = forward()
            loss = torch.nn.functional.mse_loss(features.float(), target_features)
            if colours is not None:
                loss = loss + torch.nn.functional.mse_loss(colours.float(), target_rgb)
            loss.backward()
            optimizer.step()
            return loss
    else:
        def step():
            with torch.inference_mode(), autocast():
                return forward()

    def sync(_=None):
        if where == "cuda":
            torch.cuda.synchronize()

    info = {
        "method": "torch_nn_linear_split_first_layer",
        "baseline_device": torch.cuda.get_device_name() if where == "cuda" else "cpu",
        "baseline_precision": (
            "bf16_autocast" if bf16 else "dynamic_int8" if int8 else "float32"
        ),
        "baseline_fp32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    return step, sync, info


def measure_baseline(model, dtype, args, device, training):
    """Times `build_baseline` for `model` (`iters` calls after `warmup`)."""
    import torch

    if device.platform == "gpu" and not torch.cuda.is_available():
        return {"skipped": "the Keras backend runs on a GPU but torch has no CUDA"}
    if dtype == "int8" and device.platform == "gpu":
        return {"skipped": "PyTorch's dynamic int8 nn.Linear runs on CPU only"}
    s = mlp_shape(model)
    b = args.batch_size
    step, sync, info = build_baseline(
        s, model.grid_shape, dtype, b, args.seed, args.smoke, training
    )
    where = "cuda" if torch.cuda.is_available() else "cpu"
    for _ in range(args.warmup):
        step()
        sync()
    if where == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.iters
    peak = torch.cuda.max_memory_allocated() if where == "cuda" else None
    images_per_s = b / seconds
    result = {
        **info,
        "batch_size": b,
        "iters": args.iters,
        "seconds_per_iter": seconds,
        "images_per_s": images_per_s,
        **throughput(images_per_s, baseline_flops(s, b, training)),
        "peak_memory_bytes": peak,
        "peak_memory_scope": "measurement" if peak is not None else None,
    }
    del step
    gc.collect()
    if where == "cuda":
        torch.cuda.empty_cache()
    return result


def baseline_flops(s, batch_size, training):
    """The baseline's `(model, executed)` FLOPs per image: the APM's own
    (it runs the same split first layers)."""
    scale = 3 if training else 1
    return tuple(scale * f for f in forward_flops(s, batch_size))


def inference_step(model, x, backend):
    """`(step, method)`: one device-resident forward of `model` on `x`.

    JAX: `jax.jit` of `model.stateless_call`; PyTorch: `model(x)` under
    `torch.no_grad()`; TensorFlow: `tf.function` of `model(x)` (no XLA: what
    Keras' own predict step uses on a CPU-only machine). `step()` returns
    what to wait for.
    """
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def forward(trainable, non_trainable, x):
            outputs, _ = model.stateless_call(trainable, non_trainable, x)
            return outputs

        return (lambda: forward(trainable, non_trainable, x)), "stateless_call_jit"
    if backend == "tensorflow":
        import tensorflow as tf

        forward = tf.function(lambda x: model(x, training=False), jit_compile=False)
        return (lambda: forward(x)), "tf_function"
    import torch

    def step():
        with torch.no_grad():
            return model(x)

    return step, "model_call"


def measure_inference(model, args, device):
    """Device-resident forward, then the host-copy `predict_on_batch`."""
    import numpy as np
    from keras import ops

    rng = np.random.default_rng(args.seed)
    # Inputs as the APM sees them after its converter (values ~ [0, 1]).
    host = rng.random((args.batch_size,) + model.image_shape).astype("float32")
    x = ops.convert_to_tensor(host)  # On the backend's default device.
    flops = forward_flops(mlp_shape(model), args.batch_size)
    results = []
    step, method = inference_step(model, x, device.backend)
    seconds = timed(step, args.iters, args.warmup, device)
    images_per_s = args.batch_size / seconds
    results.append({
        "method": method,
        "host_copy": False,
        "seconds_per_iter": seconds,
        "images_per_s": images_per_s,
        **throughput(images_per_s, flops),
        "peak_memory_bytes": device.peak_memory(),
    })

    seconds = timed(
        lambda: model.predict_on_batch(host), args.iters, args.warmup, device
    )
    images_per_s = args.batch_size / seconds
    results.append({
        "method": "predict_on_batch",
        "host_copy": True,
        "seconds_per_iter": seconds,
        "images_per_s": images_per_s,
        **throughput(images_per_s, flops),
        "peak_memory_bytes": device.peak_memory(),
    })
    return results


def train_function_step(distiller, batch, backend):
    """`(step, finish)`: one call of the train function Keras builds for
    `distiller` (`make_train_function()`), on `batch` (device arrays).

    JAX: the jitted stateless `train_step` taking and returning the whole
    state (weights, optimizer, metrics), as `fit` calls it; `finish()` hands
    the last state back to the variables (the step donates its input).
    TensorFlow: the `tf.function` step on a `tf.data` iterator (no XLA on a
    CPU-only machine, Keras' default). PyTorch: the eager `train_step`.
    Neither reads the logs back to the host.
    """
    if not distiller.optimizer.built:  # `fit` builds it first too.
        distiller.optimizer.build(distiller.trainable_variables)
    distiller.make_train_function()
    data = (batch, None, None)
    if backend == "jax":
        import jax.numpy as jnp

        # Copies: the step donates its input state, and the variables'
        # own buffers may be in use elsewhere (a jitted inference step).
        state = [
            tuple(
                [jnp.array(v.value, copy=True) for v in variables]
                for variables in (
                    distiller.trainable_variables,
                    distiller.non_trainable_variables,
                    distiller.optimizer.variables,
                    distiller.metrics_variables,
                )
            )
        ]

        def step():
            logs, state[0] = distiller.train_function(state[0], iter((data,)))
            return logs

        def finish():
            trainable, non_trainable, optimizer_vars, metrics_vars = state[0]
            for variables, values in (
                (distiller.trainable_variables, trainable),
                (distiller.non_trainable_variables, non_trainable),
                (distiller.optimizer.variables, optimizer_vars),
                (distiller.metrics_variables, metrics_vars),
            ):
                for variable, value in zip(variables, values):
                    variable.assign(value)

        return step, finish
    if backend == "tensorflow":
        import tensorflow as tf

        iterator = iter(tf.data.Dataset.from_tensors(data).repeat())
        return (lambda: distiller.train_function(iterator)), (lambda: None)
    return (lambda: distiller.train_function([data])), (lambda: None)


def measure_training(model, args, device):
    """`APMDistiller` steps on cached targets already on the device."""
    import keras
    import numpy as np
    from keras import ops

    import keras_apm

    rng = np.random.default_rng(args.seed)
    batch = {
        k: ops.convert_to_tensor(v)
        for k, v in random_batch(model, args.batch_size, rng).items()
    }
    distiller = keras_apm.APMDistiller(model)  # No teacher: cached targets.
    distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
    s = mlp_shape(model)
    flops = tuple(3 * f for f in forward_flops(s, args.batch_size))
    results = []

    # 1. train_on_batch: builds and compiles the step on first use, and per
    # call adds Keras' bookkeeping and a host read of the logs.
    def on_batch():
        return distiller.train_on_batch(batch, return_dict=True)

    seconds = timed(on_batch, args.iters, max(args.warmup, 1), device)
    images_per_s = args.batch_size / seconds
    results.append({
        "method": "train_on_batch",
        "seconds_per_iter": seconds,
        "images_per_s": images_per_s,
        **throughput(images_per_s, flops),
        "peak_memory_bytes": device.peak_memory(),
    })

    # 2. The train function Keras built (the real distiller step).
    step, finish = train_function_step(distiller, batch, device.backend)
    seconds = timed(step, args.iters, args.warmup, device)
    finish()
    images_per_s = args.batch_size / seconds
    results.append({
        "method": "train_function",
        "seconds_per_iter": seconds,
        "images_per_s": images_per_s,
        **throughput(images_per_s, flops),
        "peak_memory_bytes": device.peak_memory(),
    })
    return results


def measure_memory(model, args, device):
    """Peak memory of chunked `evaluate_locations` at growing location counts."""
    import numpy as np
    from keras import ops

    rng = np.random.default_rng(args.seed)
    b = args.memory_batch_size
    images = ops.convert_to_tensor(
        rng.random((b,) + model.image_shape).astype("float32")
    )
    h, w = model.grid_shape
    chunk = args.memory_chunk_size
    results = []
    device.free()
    for count in sorted(args.memory_counts):
        try:
            locations = (
                rng.random((count, 2)) * np.array([h - 1, w - 1])
            ).astype("float32")
            before = device.memory_in_use()
            # Once untimed (traces, compiles), then once timed, peak reset.
            device.sync(model.evaluate_locations(images, locations, chunk_size=chunk))
            device.reset_peak()
            start = time.perf_counter()
            out = model.evaluate_locations(images, locations, chunk_size=chunk)
            device.sync(out)
            seconds = time.perf_counter() - start
            peak = device.peak_memory()
            output_bytes = sum(
                int(np.prod(v.shape)) * _itemsize(v.dtype) for v in out.values()
            )
            del out
            results.append({
                "method": "evaluate_locations",
                "batch_size": b,
                "iters": 1,
                "locations": count,
                "chunk_size": chunk,
                "seconds_per_iter": seconds,
                "images_per_s": b / seconds,
                "locations_per_s": b * count / seconds,
                "peak_memory_bytes": peak,
                "bytes_in_use_before": before,
                "peak_above_before_bytes": (
                    None if peak is None or before is None else peak - before
                ),
                "output_bytes": output_bytes,
            })
        except Exception as error:  # One count failing keeps the others.
            traceback.print_exc()
            results.append({"locations": count, "chunk_size": chunk,
                            "error": f"{type(error).__name__}: {error}"[:2000]})
    return results


def measure_ttt(model, dtype, args, device, single, teachers):
    """Batched TTT (teacher forward included) or one image through
    `TestTimeTrainer`. `teachers` caches the teacher per dtype."""
    import keras
    import numpy as np
    from keras import ops

    import keras_apm
    from keras_apm.ttt import EmbeddingClassifier

    if dtype not in teachers:
        teachers.clear()  # One teacher in memory at a time.
        teachers[dtype] = build_clip_teacher(
            dtype, args.smoke, model.feature_dim, args.seed
        )
    teacher = teachers[dtype]
    rng = np.random.default_rng(args.seed)
    s = mlp_shape(model)
    flops = ttt_flops(s, args.ttt_steps)
    common = {
        "ttt_steps": args.ttt_steps,
        "teacher": "CLIPBackbone random, vision " + (
            "tiny (smoke)" if args.smoke else "ViT-L/14 224px, projection 768"
        ),
        "student_compute_dtype": "float32",  # BatchedTTT's stacked weights.
        "teacher_dtype": dtype,
    }
    if single:
        classes = rng.standard_normal((10, model.feature_dim)).astype("float32")
        trainer = keras_apm.TestTimeTrainer(
            student=model,
            teacher=teacher,
            classifier=EmbeddingClassifier(classes),
            steps=args.ttt_steps,
            optimizer=keras.optimizers.Adam(1e-4),
            loss="mse",
            batch_size=1,
        )
        image = rng.uniform(0, 255, (1,) + model.image_shape).astype("float32")
        for _ in range(max(args.warmup, 1)):  # Compiles the steps.
            trainer.adapt(image)
        device.reset_peak()
        times = [trainer.adapt(image)["seconds"] for _ in range(args.ttt_iters)]
        seconds = float(np.mean(times))
        return {
            **common,
            "method": "TestTimeTrainer.adapt (one NumPy image)",
            "batch_size": 1,
            "iters": args.ttt_iters,
            "seconds_per_image": seconds,
            "seconds_min": float(np.min(times)),
            "images_per_s": 1.0 / seconds,
            **throughput(1.0 / seconds, flops),
            "peak_memory_bytes": device.peak_memory(),
        }

    b = args.ttt_batch_size
    engine = keras_apm.BatchedTTT(
        model, steps=args.ttt_steps, optimizer=keras.optimizers.Adam(1e-4), loss="mse"
    )
    preprocess = keras_apm.APMImageConverter(
        image_size=model.image_shape[:2], scaling="imagenet"
    )
    raw = ops.convert_to_tensor(
        rng.uniform(0, 255, (b,) + model.image_shape).astype("float32")
    )

    def run_batch():
        start = time.perf_counter()
        target = teacher(raw)["global"]
        inputs = ops.cast(preprocess(raw), "float32")
        device.sync((target, inputs))
        middle = time.perf_counter()
        out = engine.adapt(inputs, target)
        device.sync(out)
        return middle - start, time.perf_counter() - middle

    for _ in range(max(args.warmup, 1)):
        run_batch()
    device.reset_peak()
    splits = [run_batch() for _ in range(args.ttt_iters)]
    teacher_s = float(np.mean([t for t, _ in splits]))
    adapt_s = float(np.mean([a for _, a in splits]))
    images_per_s = b / (teacher_s + adapt_s)
    return {
        **common,
        "method": "teacher + APMImageConverter + BatchedTTT.adapt, device-resident",
        "batch_size": b,
        "iters": args.ttt_iters,
        "teacher_seconds": teacher_s,
        "adapt_seconds": adapt_s,
        "seconds_per_iter": teacher_s + adapt_s,
        "images_per_s": images_per_s,
        **throughput(images_per_s, flops),
        "peak_memory_bytes": device.peak_memory(),
    }


# ---------------------------------------------------------------------------
# Driver.


def memory_in_subprocess(args, name, dtype, emit):
    """JAX on a GPU: memory_chunked in a fresh process (the peak counter of
    a JAX process cannot be reset, so earlier measurements would hide it)."""
    command = [
        sys.executable, os.path.abspath(__file__), "--what", "memory_chunked",
        "--models", name, "--dtypes", dtype, "--memory-subprocess", "no",
        "--memory-batch-size", str(args.memory_batch_size),
        "--memory-chunk-size", str(args.memory_chunk_size),
        "--seed", str(args.seed), "--memory-counts",
        *[str(c) for c in args.memory_counts],
    ]
    if args.smoke:
        command.append("--smoke")
    if args.chunk_size is not None:
        command += ["--chunk-size", str(args.chunk_size)]
    proc = subprocess.run(command, capture_output=True, text=True)
    records = []
    for line in proc.stdout.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            print(line, file=sys.stderr)
    for record in records:
        record["peak_memory_scope"] = "subprocess (counts in increasing order)"
        emit(record, raw=True)
    if proc.returncode != 0 or not records:
        sys.stderr.write(proc.stderr[-4000:])
        emit({"model": name, "dtype": dtype, "what": "memory_chunked",
              "error": f"subprocess exited {proc.returncode}: "
              + proc.stderr.strip()[-1000:]})


def main(argv=None):
    args = parse_args(argv)
    backend = requested_backend()
    if backend not in SUPPORTED_BACKENDS:
        sys.exit(
            f"benchmarks/gpu.py supports the jax and torch Keras backends only; "
            f"the Keras backend here is {backend!r}. Run it as "
            "`KERAS_BACKEND=jax python benchmarks/gpu.py` (then torch)."
        )
    # JAX grabs 75% of the GPU at start-up by default, which would starve
    # the PyTorch baseline in the same process and hide the real peak.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.smoke and "XLA_FLAGS" not in os.environ:
        # Smoke figures mean nothing: compile fast instead (a fifth off a
        # JAX smoke run on CPU, where compiling is most of the time).
        os.environ["XLA_FLAGS"] = (
            "--xla_backend_optimization_level=0 "
            "--xla_llvm_disable_expensive_passes=true"
        )
    if not any(isinstance(f, _NoTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoTensorFlow())
    sys.path.insert(0, ROOT)  # keras_apm from this checkout, installed or not.

    import keras

    device = Device(keras.backend.backend())
    try:
        import torch  # noqa: F401

        has_torch = True
    except ImportError:
        has_torch = False
    emit = Emitter(args.output, {
        "benchmark": "gpu",
        "backend": device.backend,
        "device": device.name,
        "platform": device.platform,
        "smoke": args.smoke,
        "keras_version": keras.__version__,
        "backend_version": device.backend_version,
        "fp32_matmul_precision": device.fp32_matmul,
    })
    memory_subprocess = args.memory_subprocess == "yes" or (
        args.memory_subprocess == "auto"
        and device.backend == "jax"
        and device.has_memory_stats
    )

    teachers = {}
    for name in args.models:
        for dtype in args.dtypes:
            base = {"model": name, "dtype": dtype, "batch_size": args.batch_size,
                    "iters": args.iters}
            if "memory_chunked" in args.what and memory_subprocess:
                memory_in_subprocess(args, name, dtype, emit)
            try:
                model = build_apm(name, dtype, args)
            except Exception as error:
                traceback.print_exc()
                for what in args.what:
                    emit({**base, "what": what,
                          "error": "building the model: "
                          f"{type(error).__name__}: {error}"[:2000]})
                continue
            baselines = {}
            for what in WHATS:  # A fixed order: the baselines first.
                if what not in args.what:
                    continue
                if what.startswith("ttt") and name != "ttt":
                    continue  # TTT runs on the TTT-sized student only.
                if what == "memory_chunked" and memory_subprocess:
                    continue
                if dtype == "int8" and what not in (
                    "inference", "baseline_torch_inference"
                ):
                    continue  # Keras' int8 layers are for inference.
                record = {**base, "what": what}
                started = time.perf_counter()
                try:
                    if what.startswith("baseline"):
                        if not has_torch:
                            emit({**record, "skipped": "torch is not importable"})
                            continue
                        result = measure_baseline(
                            model, dtype, args, device, what.endswith("training")
                        )
                        baselines[what] = result.get("images_per_s")
                        results = [result]
                    elif what == "inference":
                        results = measure_inference(model, args, device)
                    elif what == "training":
                        results = measure_training(model, args, device)
                    elif what == "memory_chunked":
                        results = measure_memory(model, args, device)
                    else:
                        results = [measure_ttt(
                            model, dtype, args, device, what == "ttt_single", teachers
                        )]
                except Exception as error:  # e.g. an OOM: keep going.
                    traceback.print_exc()
                    results = [{"error": f"{type(error).__name__}: {error}"[:2000]}]
                reference = baselines.get(f"baseline_torch_{what}")
                wall = round(time.perf_counter() - started, 3)
                for result in results:
                    # Wall time of the whole measurement (builds, compiles).
                    result = {**record, **result, "wall_s": wall}
                    if "peak_memory_scope" not in result:
                        result["peak_memory_scope"] = device.peak_scope
                    if what in ("inference", "training") and "error" not in result:
                        result["ratio_to_torch_baseline"] = (
                            result["images_per_s"] / reference if reference else None
                        )
                    emit(result)
                device.free()
            del model
            teachers.clear()
            keras.backend.clear_session()
            device.free()


if __name__ == "__main__":
    main()
