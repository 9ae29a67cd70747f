"""Input-pipeline benchmark: how fast `load_feature_cache` feeds a consumer.

A feature cache of COCO-sized targets (1,024 locations x 1,024 dims per
image in float16 = 2 MiB, plus a 448x448 uint8 image, a 1,024-d global
target and a label) is written once, with random data, into a temporary
directory (removed on exit), through the cache's own shard writer
(`feature_cache.writer.write_shard`: staging, rename, xxh3-128; no teacher
runs). Then, repeats interleaved, for 1 and 2 reader threads:

- `"reader": "readinto"`: the raw-read baseline. The same bytes as the
  same batches (per batch, each key's run of records), read with plain
  positioned `readinto` calls (`os.preadv`) into buffers allocated and
  touched once, by 1 or 2 Python threads (the copy runs without the GIL;
  thread `i` takes every `threads`-th batch): what the page cache can
  deliver to Python, with nothing else done.
- `"reader": "load_feature_cache"`: one epoch of a freshly built
  `load_feature_cache(dir, batch_size, num_parallel_reads=threads, ...)`
  iterated by a consumer that counts the batches:
  `verify="size"` with `dtype=None` (as stored, no checksums: the bare
  reader); the default `verify="checksum"` with `dtype=None`, where the
  process has forgotten its earlier checks, so every shard is hashed
  before its first batch as in a process's first epoch (later epochs cost
  what `verify="size"` costs); and the default `verify="checksum"` with
  the default `dtype="float32"` (the cast on the host doubles the bytes).

Each read row reports the median images/s and GB/s (of the stored bytes
delivered, 1 GB = 1e9 bytes) over the repeats, its ratio to the
`readinto` baseline with as many threads (`ratio_to_readinto`), and the
verifying rows their ratio to the bare reader (`ratio_to_unverified`). A
`"what": "verify"` row gives the speed of checking every shard's checksum
alone (one thread), a `"what": "write"` row the write speed and the bytes
per image. The files were just written, so everything reads from the page
cache: this measures the pipeline, not the disk.

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
    from keras_apm.data.feature_cache import writer
    from keras_apm.utils.files import write_json

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
        shards.append(writer.write_shard(directory, index, manifest, arrays))
        seconds += time.perf_counter() - started
    manifest.update(
        complete=True, shards=shards, num_shards=len(shards),
        num_examples=args.images,
    )
    write_json(os.path.join(directory, feature_cache.MANIFEST_FILE), manifest)
    return manifest, seconds


def readinto_jobs(directory, manifest, batch_size):
    """`[(path, [(key, offset, nbytes)], count)]`: each batch's byte runs.

    Batches stay within a shard (the cache's reader batches across
    shards): the easier order, so the baseline is not handicapped.
    """
    from keras_apm.data.feature_cache.manifest import sections

    jobs = []
    for entry in manifest["shards"]:
        path = os.path.join(directory, entry["file"])
        n = entry["num_examples"]
        layout, _ = sections(manifest, n)
        for a in range(0, n, batch_size):
            b = min(a + batch_size, n)
            runs = [
                (key, offset + a * record, (b - a) * record)
                for key, (offset, record) in layout.items()
            ]
            jobs.append((path, runs, b - a))
    return jobs


def readinto_buffers(manifest, batch_size, count, np):
    """One set of batch buffers per thread, allocated and touched once."""
    from keras_apm.data.feature_cache.manifest import record_bytes

    return [
        {
            key: memoryview(np.ones(batch_size * record_bytes(manifest, key), np.uint8))
            for key in manifest["keys"]
        }
        for _ in range(count)
    ]


def readinto_epoch(jobs, threads, buffers):
    """The same bytes as the same batches, read with positioned `readinto`
    (`os.preadv`) into preallocated buffers; thread `i` takes every
    `threads`-th batch (as a parallel map hands them out)."""

    def read(part):
        count = 0
        for path, runs, n in jobs[part::threads]:
            fd = os.open(path, os.O_RDONLY)
            try:
                for key, offset, size in runs:
                    view = buffers[part][key][:size]
                    done = 0
                    while done < size:
                        done += os.preadv(fd, [view[done:]], offset + done)
            finally:
                os.close(fd)
            count += n
        return count

    if threads == 1:
        return read(0)
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(read, range(threads)))


def first_batch_bytes(jobs, np):
    """The first batch as the baseline reads it, for the equality check."""
    path, runs, _ = jobs[0]
    with open(path, "rb") as f:
        out = {}
        for key, offset, size in runs:
            f.seek(offset)
            out[key] = np.frombuffer(f.read(size), np.uint8)
    return out


def reader_epoch(load, checksums, tmp, args, threads, dtype, verify):
    """One epoch of a freshly built `load_feature_cache`, consumed."""
    if verify == "checksum":
        checksums.forget_verified()  # As in a process's first epoch.
    ds = load(
        tmp, batch_size=args.batch_size, num_parallel_reads=threads,
        dtype=None if dtype == "stored" else dtype, verify=verify,
    )
    count = 0
    for batch in ds:  # The consumer: takes each batch as it comes.
        count += int(batch["labels"].shape[0])
    return count


# (reader, dtype, verify) rows, per thread count.
VARIANTS = [
    ("readinto", "stored", None),
    ("load_feature_cache", "stored", "size"),
    ("load_feature_cache", "stored", "checksum"),
    ("load_feature_cache", "float32", "checksum"),
]


def time_epochs(tmp, manifest, args, np):
    """`{(threads, reader, dtype, verify): [seconds per repeat]}`, and
    `"load"`: the 1-minute load average at the start of each repeat."""
    from keras_apm.data import load_feature_cache
    from keras_apm.data.feature_cache import checksums

    jobs = readinto_jobs(tmp, manifest, args.batch_size)
    buffers = readinto_buffers(manifest, args.batch_size, max(args.threads), np)
    # Both readers deliver the same bytes (checked on the first batch).
    first = next(iter(load_feature_cache(tmp, batch_size=args.batch_size, dtype=None)))
    for key, raw in first_batch_bytes(jobs, np).items():
        if not np.array_equal(first[key].numpy().reshape(-1).view(np.uint8), raw):
            raise RuntimeError(f"load_feature_cache and readinto differ on {key!r}.")
    times = {"load": []}
    for _ in range(args.repeats):  # Repeats interleaved: noise is shared.
        times["load"].append(os.getloadavg()[0])  # How busy the machine is.
        for threads in args.threads:
            for reader, dtype, verify in VARIANTS:
                started = time.perf_counter()
                if reader == "readinto":
                    count = readinto_epoch(jobs, threads, buffers)
                else:
                    count = reader_epoch(
                        load_feature_cache, checksums, tmp, args, threads, dtype, verify
                    )
                if count != args.images:
                    raise RuntimeError(f"{reader} delivered {count} images, not {args.images}.")
                times.setdefault((threads, reader, dtype, verify), []).append(
                    time.perf_counter() - started
                )
    return times


def time_verify(tmp, manifest, args):
    """Seconds per repeat to check every shard's checksum (one thread)."""
    from keras_apm.data.feature_cache import checksums

    shards = [(os.path.join(tmp, e["file"]), e) for e in manifest["shards"]]
    seconds = []
    for _ in range(args.repeats):
        checksums.forget_verified()
        started = time.perf_counter()
        for path, entry in shards:
            if checksums.shard_problem(path, entry):
                raise RuntimeError(f"{path} fails its checksum.")
        seconds.append(time.perf_counter() - started)
    return seconds


def read_rows(times, args, total_bytes):
    rows = []
    for threads in args.threads:
        base = statistics.median(times[(threads, "readinto", "stored", None)])
        bare = statistics.median(times[(threads, "load_feature_cache", "stored", "size")])
        for reader, dtype, verify in VARIANTS:
            seconds = times[(threads, reader, dtype, verify)]
            median = statistics.median(seconds)
            row = {
                "what": "read", "reader": reader, "dtype": dtype,
                "verify": verify, "threads": threads, "repeats": args.repeats,
                "seconds_median": median, "seconds": seconds,
                "images_per_s": args.images / median,
                "GB_per_s": total_bytes / median / 1e9,
                "load_average_1min": times["load"],
            }  # fmt: skip
            if reader != "readinto":
                row["ratio_to_readinto"] = base / median
            if verify == "checksum":
                row["ratio_to_unverified"] = bare / median
            rows.append(row)
    return rows


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)  # keras_apm from this checkout, installed or not.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from keras_apm.data import feature_cache
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
            "note": "staged write, rename and xxh3-128 of every shard; no teacher",
        })
        times = time_epochs(tmp, manifest, args, np)
        verify = time_verify(tmp, manifest, args)
        for row in read_rows(times, args, total_bytes):
            emit(row)
        median = statistics.median(verify)
        emit({
            "what": "verify", "threads": 1, "repeats": args.repeats,
            "seconds_median": median, "seconds": verify,
            "images_per_s": args.images / median,
            "GB_per_s": total_bytes / median / 1e9,
            "note": "checksums.shard_problem on every shard: xxh3-128 over a memory map",
        })  # fmt: skip
    if args.output:
        def write(staged):
            with open(staged, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")

        atomic_write(args.output, write)


if __name__ == "__main__":
    main()
