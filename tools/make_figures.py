"""Regenerates the committed pictures of docs/visualize.md, on purpose.

The commands in docs/visualize.md write to `/tmp/docs_vis/`, never into the
repository, so that trying them cannot overwrite the committed figures. This
script runs exactly those commands (every fenced `shell` block of the page,
in order, so the page and the figures cannot drift apart) and then copies the
figures the page shows into `--output`:

```shell
KERAS_BACKEND=torch python tools/make_figures.py --output docs/images   # about 1.5 minutes, 2 cores
```
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "visualize.md")
WORK = "/tmp/docs_vis"
# The files of WORK that the page (and the README) show.
FIGURES = (
    "overfit.png",
    "overfit_digits.png",
    "islands.png",
    "interpolate.png",
    "interpolate.gif",
    "upsample.png",
)


def shell_blocks(page):
    """The page's fenced `shell` blocks that run something, in order.

    The first block of the page is the usage synopsis (`--preset P`), which
    is not a runnable command.
    """
    with open(page, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"```shell\n(.*?)```", text, flags=re.S)
    return [b for b in blocks if "--preset P " not in b]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output",
        required=True,
        help="folder that receives the figures (docs/images to update them)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands only"
    )
    args = parser.parse_args(argv)
    blocks = shell_blocks(PAGE)
    if args.dry_run:
        print("\n".join(blocks))
        return 0
    os.makedirs(args.output, exist_ok=True)
    os.makedirs(WORK, exist_ok=True)
    for i, block in enumerate(blocks, 1):
        print(f"[{i}/{len(blocks)}] {block.strip().splitlines()[0]}", flush=True)
        subprocess.run(["bash", "-euo", "pipefail", "-c", block], check=True)
    for name in FIGURES:
        shutil.copyfile(os.path.join(WORK, name), os.path.join(args.output, name))
        print(f"wrote {os.path.join(args.output, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
