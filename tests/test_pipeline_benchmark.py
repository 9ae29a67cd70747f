"""`benchmarks/pipeline.py --smoke` runs every measurement path at tiny sizes.

The figures come from the full run (see docs/data.md); here the script
writes a tiny random cache, reads it with every reader (the `readinto`
baseline, `load_feature_cache` with and without checksums) and thread
count, times the checksum check alone, and must print one JSON line per
row, write the same lines to `--output` and leave no temporary directory
behind.
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
        (r["reader"], r["dtype"], r["verify"], r["threads"])
        for r in records
        if r["what"] == "read"
    }
    assert reads == {
        (reader, dtype, verify, threads)
        for threads in (1, 2)
        for reader, dtype, verify in [
            ("readinto", "stored", None),
            ("load_feature_cache", "stored", "size"),
            ("load_feature_cache", "stored", "checksum"),
            ("load_feature_cache", "float32", "checksum"),
        ]
    }
    assert [r["what"] for r in records].count("verify") == 1
    for r in records:
        assert r["images_per_s"] > 0 and r["GB_per_s"] > 0
        if r.get("reader") == "load_feature_cache":
            assert r["ratio_to_readinto"] > 0
        if r.get("verify") == "checksum":
            assert r["ratio_to_unverified"] > 0
    assert os.listdir(parent) == []  # The cache was removed.
