"""`benchmarks/pipeline.py --smoke` runs every measurement path at tiny sizes.

The figures come from the full run (see docs/distillation.md); here the
script writes a tiny random cache, reads it with every reader and thread
count, and must print one JSON line per row, write the same lines to
`--output` and leave no temporary directory behind.
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
    "pipeline.py",
)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the cache reader is tf.data whatever the backend: run it once",
)
def test_smoke_run_prints_every_row(tmp_path):
    output = tmp_path / "pipeline.jsonl"
    parent = tmp_path / "scratch"
    parent.mkdir()
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--smoke", "--output", str(output),
         "--dir", str(parent)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    records = [json.loads(line) for line in lines]  # Every line is JSON.
    assert output.read_text().splitlines() == lines
    write = [r for r in records if r["what"] == "write"]
    assert len(write) == 1 and write[0]["bytes_per_image"] > 0
    reads = {
        (r["reader"], r["dtype"], r["threads"])
        for r in records
        if r["what"] == "read"
    }
    assert reads == {
        (reader, dtype, threads)
        for threads in (1, 2)
        for reader, dtype in [
            ("memmap", "stored"),
            ("load_feature_cache", "stored"),
            ("load_feature_cache", "float32"),
        ]
    }
    for r in records:
        assert r["images_per_s"] > 0 and r["GB_per_s"] > 0
        if r.get("reader") == "load_feature_cache":
            assert r["ratio_to_memmap"] > 0
    assert os.listdir(parent) == []  # The cache was removed.
