"""Distills the `apm_tiny_digits` preset shipped with keras_apm.

Runs the `"digits"` recipe (`keras_apm.apps.digits_demo`: the
`vit_tiny_digits` teacher, the sklearn_digits train split, teacher targets
cached once, the recipe's 60 epochs of `fit`; `keras-apm demo` runs the
shorter `"digits_demo"`) and writes the student as a preset, with a
`training.json` holding the test-split figures (grid and global cosine to
the teacher), the seed, the epochs, the wall time and the backend. The
folder is written under a temporary name and renamed when complete; below
`--min-grid-cosine` (default 0.9) nothing is written.

Usage:

```shell
KERAS_BACKEND=tensorflow python tools/distill_digits_apm.py
```

Then, offline, on any backend:

```python
model = keras_apm.APM.from_preset("apm_tiny_digits")
```
"""

import argparse
import os
import shutil
import sys
import tempfile

DEFAULT_OUTPUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "keras_apm",
    "presets",
    "apm_tiny_digits",
)


def parse_args(argv=None):
    from keras_apm.apps import digits_demo as digits

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="Preset folder to write.")
    parser.add_argument(
        "--epochs", type=int, default=digits.RECIPE.epochs, help="Epochs."
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed.")
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument(
        "--min-grid-cosine", type=float, default=0.9,
        help="Write nothing below this test grid cosine.",
    )
    return parser.parse_args(argv)


def main(argv=None):
    from keras_apm.apps import digits_demo as digits
    from keras_apm.utils.files import atomic_write
    from keras_apm.utils.files import write_json
    from keras_apm.utils.files import write_manifest
    from keras_apm.utils.preset_files import record_checksums

    args = parse_args(argv)
    work = tempfile.mkdtemp(prefix="apm_tiny_digits-")
    try:
        summary = digits.distill_digits(
            work, epochs=args.epochs, seed=args.seed, data_dir=args.data_dir,
            verbose=2,
        )
        if summary["grid_cosine"] < args.min_grid_cosine:
            print(
                f"Test grid cosine {summary['grid_cosine']:.4f} is below "
                f"--min-grid-cosine {args.min_grid_cosine}: nothing written.",
                file=sys.stderr,
            )
            return 1
        summary = dict(summary, seed=args.seed, student=None)

        def write(staged):
            shutil.copytree(os.path.join(work, "student"), staged)
            write_json(os.path.join(staged, "training.json"), summary)
            # Checksums of every file, recorded in metadata.json (shipped presets
            # are verified on load like saved ones).
            record_checksums(staged)
            write_manifest(staged)

        atomic_write(args.output, write)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Wrote {args.output}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
