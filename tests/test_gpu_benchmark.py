"""`benchmarks/gpu.py --smoke` runs every measurement path on a CPU, and
`benchmarks/cpu.py --smoke` runs its worker protocol for the current backend.

The GPU figures come from a lent GPU machine (see CONTRIBUTING.md); here
the script runs tiny configs in a subprocess under the current backend,
so a broken code path shows up before anyone spends GPU time on it. Only
the TTT-sized model is run (it is the one with every kind of measurement),
in mixed_bfloat16 (the float32 path differs only by the policy name).
"""

import json
import os
import subprocess
import sys

import keras
import pytest

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "benchmarks",
    "gpu.py",
)
WHATS = {
    "baseline_torch_inference",
    "baseline_torch_training",
    "inference",
    "training",
    "memory_chunked",
    "ttt_batched",
    "ttt_single",
}


def run(*args):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="benchmarks/gpu.py supports the jax and torch backends only",
)
def test_smoke_run_prints_every_measurement(tmp_path):
    output = tmp_path / "gpu.jsonl"
    proc = run(
        "--smoke", "--models", "ttt", "--dtypes", "mixed_bfloat16", "int8",
        "--output", str(output),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    records = [json.loads(line) for line in lines]  # Every line is JSON.
    assert records
    assert output.read_text().splitlines() == lines
    assert {r["what"] for r in records} == WHATS
    # int8 (Keras' `model.quantize`): inference and its baseline only.
    int8 = {r["what"] for r in records if r["dtype"] == "int8"}
    assert int8 == {"inference", "baseline_torch_inference"}
    for record in records:
        assert "error" not in record, record
        assert "skipped" not in record, record
        assert record["backend"] == keras.backend.backend()
        assert record["model"] == "ttt" and record["smoke"] is True
        assert record["images_per_s"] > 0, record
    methods = {(r["what"], r["method"]) for r in records}
    assert ("inference", "predict_on_batch") in methods
    assert ("training", "train_function") in methods
    assert ("training", "train_on_batch") in methods
    memory = [r for r in records if r["what"] == "memory_chunked"]
    assert [r["locations"] for r in memory] == [32, 64, 128]
    for record in records:
        if record["what"] in ("inference", "training"):
            assert record["tflops"] > 0
            assert record["ratio_to_torch_baseline"] > 0


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="checks the refusal under the tensorflow backend",
)
def test_refuses_tensorflow_backend():
    proc = run("--smoke")
    assert proc.returncode != 0
    assert "jax and torch" in proc.stderr
    assert proc.stdout == ""


CPU_SCRIPT = os.path.join(os.path.dirname(SCRIPT), "cpu.py")


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="one run starts a worker per backend itself; runs once, in the "
    "TensorFlow suite",
)
def test_cpu_smoke_run_compares_with_the_baseline(tmp_path):
    """`benchmarks/cpu.py --smoke` as documented: a baseline worker and one
    worker per backend, interleaved repeats, one JSON line per measurement."""
    backends = ("tensorflow", "jax", "torch")
    output = tmp_path / "cpu.jsonl"
    proc = subprocess.run(
        [
            sys.executable, CPU_SCRIPT, "--smoke", "--models", "ttt",
            "--dtypes", "float32", "int8", "--repeats", "3",
            "--output", str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert output.read_text().splitlines() == lines
    # The machine's GEMM peak, measured in the same run, comes last.
    peak = records.pop()
    assert peak["what"] == "gemm_peak"
    assert set(peak["gemm_gflops"]) == {"float32", "bfloat16", "int8"}
    assert all(v > 0 for v in peak["gemm_gflops"].values())
    # (baseline and each backend) x (inference, training) in float32, and
    # inference only in int8.
    assert len(records) == 3 * (1 + len(backends))
    for record in records:
        # int8 rows count against the int8 peak where they run int8 GEMMs:
        # the baseline, and Keras' int8 layers on PyTorch and JAX
        # (TensorFlow's multiply dequantized float32 kernels).
        int8_gemm = record["dtype"] == "int8" and (
            record["baseline"] or record["backend"] in ("jax", "torch")
        )
        peak_dtype = "int8" if int8_gemm else "float32"
        assert record["peak_dtype"] == peak_dtype
        if record["dtype"] == "int8" and not record["baseline"]:
            assert record["int8_matmul"] == (
                "int8 GEMM" if int8_gemm else "dequantized float32"
            )
        # The best peak measured so far (the run's best comes last).
        assert 0 < record["peak_gflops"] <= peak["gemm_gflops"][peak_dtype]
        assert record["fraction_of_peak"] == pytest.approx(
            record["executed_flops_per_image"] / record["median_seconds"]
            / 1e9 / record["peak_gflops"], rel=2e-2, abs=1e-4
        )
        assert "error" not in record, record
        assert record["benchmark"] == "cpu" and record["smoke"] is True
        assert record["model"] == "ttt" and record["batch_size"] == 1
        assert len(record["seconds"]) == 3
        assert record["median_seconds"] == pytest.approx(
            sorted(record["seconds"])[1], abs=1e-6
        )
        assert record["images_per_s"] > 0 and record["flops_per_image"] > 0
    mine = {(r["backend"], r["dtype"], r["what"])
            for r in records if not r["baseline"]}
    assert mine == {(b, "float32", w) for b in backends
                    for w in ("inference", "training")} | {
        (b, "int8", "inference") for b in backends}
    baselines = {(r["dtype"], r["what"]): r for r in records if r["baseline"]}
    assert baselines["int8", "inference"]["baseline_precision"] == "dynamic_int8"
    for record in records:
        if record["baseline"]:
            continue
        what = record["dtype"], record["what"]
        if what[1] == "training":
            assert record["method"] == "train_function"
        # The split first layer executes fewer FLOPs than the direct form.
        assert record["executed_flops_per_image"] < record["flops_per_image"]
        assert record["flops_per_image"] == baselines[what]["flops_per_image"]
        # The baseline runs the same algebra (the same split first layers).
        assert (record["executed_flops_per_image"]
                == baselines[what]["executed_flops_per_image"])
        expected = baselines[what]["median_seconds"] / record["median_seconds"]
        assert record["ratio_to_torch_baseline"] == pytest.approx(
            expected, rel=5e-3
        )
