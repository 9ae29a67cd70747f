"""Input-pipeline benchmark: how fast `load_feature_cache` feeds a consumer.

A feature cache of COCO-sized targets (1,024 locations x 1,024 dims per
image in float16 = 2 MiB, plus a 448x448 uint8 image, a 1,024-d global
target and a label) is written once, with random data, into a temporary
directory (removed on exit), through the cache's own shard writer
(`feature_cache._write_shard`: staging, rename, SHA-256; no teacher runs).
Then, repeats interleaved, for 1 and 2 reader threads:

- `"reader": "memmap"`: the raw-read baseline, the same bytes as the same
  batches, copied out of `np.memmap` views of each shard's sections
  (opened once, so mapped from the second epoch on) by NumPy in 1 or 2
  Python threads (NumPy copies without the GIL).
- `"reader": "load_feature_cache"`: one epoch of
  `load_feature_cache(dir, batch_size, num_parallel_reads=threads,
  dtype=...)` iterated by a consumer that counts the batches, once with
  `dtype=None` (as stored: what goes to an accelerator) and once with the
  default `dtype="float32"` (the cast on the host doubles the bytes).

Each row reports the median images/s and GB/s (of the stored bytes
delivered, 1 GB = 1e9 bytes) over the repeats, and the reader rows their
ratio to the baseline with as many threads. A `"what": "write"` row gives
the write speed and the bytes per image. The files were just written, so
every reader reads from the page cache: this measures the pipeline, not
the disk.

Usage (one command, a few minutes, ~2 GiB of temporary disk):

```shell
python benchmarks/pipeline.py                      # -> benchmarks/results/pipeline.jsonl
python benchmarks/pipeline.py --smoke --output /tmp/pipeline.jsonl
```
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(RESULTS, "pipeline.jsonl"))
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--locations", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="parent of the temporary cache")
    parser.add_argument(
        "--smoke", action="store_true",
        help="tiny sizes, 2 repeats: checks every path, figures mean nothing",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.shard_size, args.batch_size = 40, 16, 8
        args.locations, args.dim, args.image_size = 16, 32, 16
        args.repeats = 2
    for name in ("images", "shard_size", "batch_size", "locations", "dim",
                 "image_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.threads) < 1:
        parser.error("--threads must be >= 1")
    return args


def write_cache(directory, args, feature_cache, np):
    """Writes a complete random cache; returns (manifest, write seconds)."""
    side = int(round(args.locations ** 0.5))
    grid = [side, side] if side * side == args.locations else [args.locations]
    manifest = {
        "format_version": feature_cache.FORMAT_VERSION,
        "teacher": {"class": "random data (benchmarks/pipeline.py)"},
        "shard_size": args.shard_size,
        "image_dtype": "uint8",
        "target_dtype": "float16",
        "image_shape": [args.image_size, args.image_size, 3],
        "has_labels": True,
        "keys": ["images", "grid", "global", "labels"],
        "shapes": {
            "images": [args.image_size, args.image_size, 3],
            "grid": grid + [args.dim],
            "global": [args.dim],
            "labels": [],
        },
        "dtypes": {
            "images": "uint8", "grid": "float16", "global": "float16",
            "labels": "int64",
        },
    }
    rng = np.random.default_rng(0)
    shards, seconds = [], 0.0
    for index, start in enumerate(range(0, args.images, args.shard_size)):
        n = min(args.shard_size, args.images - start)
        arrays = {
            "images": rng.integers(0, 256, (n, *manifest["shapes"]["images"]), "uint8"),
            "grid": rng.standard_normal((n, *manifest["shapes"]["grid"]), "float32")
            .astype("float16"),
            "global": rng.standard_normal((n, args.dim), "float32").astype("float16"),
            "labels": rng.integers(0, 80, n).astype("int64"),
        }
        started = time.perf_counter()  # Generating the data is not writing.
        shards.append(feature_cache._write_shard(directory, index, manifest, arrays))
        seconds += time.perf_counter() - started
    manifest.update(
        complete=True, shards=shards, num_shards=len(shards),
        num_examples=args.images,
    )
    feature_cache.write_json(os.path.join(directory, feature_cache.MANIFEST_FILE), manifest)
    return manifest, seconds


def memmap_jobs(directory, manifest, batch_size, feature_cache, np):
    """`(views, start, end)` per batch over `np.memmap` views of the shards.

    Opened once and kept, so that from the second epoch on the pages are
    mapped already: the strongest form of the baseline.
    """
    jobs = []
    for entry in manifest["shards"]:
        path = os.path.join(directory, entry["file"])
        n = entry["num_examples"]
        sections, _ = feature_cache._sections(manifest, n)
        views = {
            key: np.memmap(
                path, dtype=manifest["dtypes"][key], mode="r", offset=offset,
                shape=(n, *manifest["shapes"][key]),
            )
            for key, (offset, _) in sections.items()
        }
        # Batches stay within a shard (the cache's reader batches across
        # shards): the easier order for NumPy, so the baseline is not
        # handicapped.
        jobs += [(views, i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    return jobs


def memmap_epoch(jobs, threads, np):
    """The same bytes as the same batches, copied out of `np.memmap` views."""

    def copy(job):
        views, a, b = job
        return {key: np.array(view[a:b]) for key, view in views.items()}

    count = 0
    if threads == 1:
        for job in jobs:
            count += len(copy(job)["labels"])
    else:
        with ThreadPoolExecutor(threads) as pool:
            for batch in pool.map(copy, jobs):
                count += len(batch["labels"])
    return count


def reader_epoch(ds):
    count = 0
    for batch in ds:  # The consumer: takes each batch as it comes.
        count += int(batch["labels"].shape[0])
    return count


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)  # keras_apm from this checkout, installed or not.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from keras_apm.data import feature_cache
    from keras_apm.data import load_feature_cache
    from keras_apm.utils.files import atomic_write

    lines = []
    base = {
        "benchmark": "pipeline",
        "smoke": args.smoke,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "batch_size": args.batch_size,
        "target_shape": [args.locations, args.dim],
        "image_size": args.image_size,
        "images": args.images,
    }

    def emit(record):
        line = json.dumps({**base, **record}, sort_keys=True)
        print(line, flush=True)
        lines.append(line)

    with tempfile.TemporaryDirectory(prefix="keras_apm_pipeline_", dir=args.dir) as tmp:
        manifest, seconds = write_cache(tmp, args, feature_cache, np)
        total_bytes = sum(e["bytes"] for e in manifest["shards"])
        emit({
            "what": "write",
            "bytes_per_image": total_bytes / args.images,
            "total_bytes": total_bytes,
            "seconds": seconds,
            "images_per_s": args.images / seconds,
            "GB_per_s": total_bytes / seconds / 1e9,
            "note": "staged write, rename and SHA-256 of every shard; no teacher",
        })
        variants = [("memmap", "stored")]
        variants += [("load_feature_cache", "stored"), ("load_feature_cache", "float32")]
        # Built once, iterated once per epoch, as `fit` does: the rows
        # measure epochs (iterator start included), not building.
        datasets = {
            (threads, dtype): load_feature_cache(
                tmp, batch_size=args.batch_size, num_parallel_reads=threads,
                dtype=None if dtype == "stored" else dtype,
            )
            for threads in args.threads
            for reader, dtype in variants
            if reader != "memmap"
        }
        jobs = memmap_jobs(tmp, manifest, args.batch_size, feature_cache, np)
        # Both readers deliver the same bytes (checked on the first batch).
        first = next(iter(datasets[(args.threads[0], "stored")]))
        views, a, b = jobs[0]
        for key, view in views.items():
            if not np.array_equal(
                first[key].numpy().view(np.uint8), np.asarray(view[a:b]).view(np.uint8)
            ):
                raise RuntimeError(f"load_feature_cache and np.memmap differ on {key!r}.")
        times = {}
        for repeat in range(args.repeats):  # Repeats interleaved: noise is shared.
            for threads in args.threads:
                for reader, dtype in variants:
                    started = time.perf_counter()
                    if reader == "memmap":
                        count = memmap_epoch(jobs, threads, np)
                    else:
                        count = reader_epoch(datasets[(threads, dtype)])
                    if count != args.images:
                        raise RuntimeError(
                            f"{reader} delivered {count} images, not {args.images}."
                        )
                    times.setdefault((threads, reader, dtype), []).append(
                        time.perf_counter() - started
                    )
        for threads in args.threads:
            baseline = statistics.median(times[(threads, "memmap", "stored")])
            for reader, dtype in variants:
                seconds = times[(threads, reader, dtype)]
                median = statistics.median(seconds)
                record = {
                    "what": "read",
                    "reader": reader,
                    "dtype": dtype,
                    "threads": threads,
                    "repeats": args.repeats,
                    "seconds_median": median,
                    "seconds": seconds,
                    "images_per_s": args.images / median,
                    "GB_per_s": total_bytes / median / 1e9,
                }
                if reader != "memmap":
                    record["ratio_to_memmap"] = baseline / median
                emit(record)
    if args.output:
        def write(staged):
            with open(staged, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")

        atomic_write(args.output, write)


if __name__ == "__main__":
    main()
