"""The docs are tests: every fenced example of README.md and docs/*.md runs.

Each Markdown file's fenced ```python blocks and ```bash / ```shell / ```sh
blocks run in order, as written, in one fresh Python process per file (one
namespace per file; shell blocks through `bash -e` with `keras-apm` on the
PATH), in a temporary working directory that also holds copies of the
repository's `tools/`, `benchmarks/` and `examples/`. TFDS data goes to a
temporary data directory shared by the session's files.

Markers (HTML comments, visible in the Markdown source), on the lines right
before a block:

- `<!-- not run: REASON -->`: the block is skipped (a download, a GPU, a long
  benchmark, an install); the test prints every skip and its reason, and
  fails if a quarter or more of all blocks are skipped.
- `<!-- run on: BACKEND[,BACKEND] (REASON) -->`: the block runs only under
  those Keras backends (skipped, with the reason, under the others).
- `<!-- run with: mocked tfds -->`: the block runs inside
  `tfds.testing.mock_data(num_examples=64)` (random examples of the real
  builders' features: the data sets themselves cannot be downloaded here).

Anywhere in a file, `<!-- doc test: backends BACKEND[,BACKEND] (REASON) -->`
runs the whole file under those backends only; a file without one runs
under `DEFAULT_BACKENDS` (TensorFlow): its examples are backend-agnostic
Keras code that the unit tests run on every backend, and one run per file
keeps CI within its 30 minutes. And `<!-- doc test: env NAME=VALUE -->` sets an environment
variable for the file's process.

Output the docs show is checked: a Python line `EXPR  # -> VALUE` asserts
that EXPR equals the literal VALUE (shapes, keys, tuples, numbers), and
`EXPR  # -> X +- D` that it lies within D of X. Blocks also assert directly.

Run one file by hand: `python tests/test_docs.py docs/tasks.md`.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_FILES = ["README.md"] + sorted(
    os.path.join("docs", name)
    for name in os.listdir(os.path.join(ROOT, "docs"))
    if name.endswith(".md")
)
PYTHON_LANGS = {"python", "py"}
SHELL_LANGS = {"bash", "shell", "sh"}
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*(not run|run on|run with)\s*:\s*(.*?)\s*-->\s*$")
FILE_MARKER = re.compile(r"<!--\s*doc test:\s*(backends|env)\s+(.*?)\s*-->")
CHECK = re.compile(r"^(?P<expr>[^#].*?)\s+# -> (?P<value>.+?)\s*$")


def parse_blocks(path):
    """Fenced python/shell blocks of `path`: dicts of lang, code, line, marker."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks, i, comments = [], 0, []
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            line = lines[i].strip()
            if line.startswith("<!--"):
                comments.append(line)
            elif line:
                comments = []
            i += 1
            continue
        lang, start = match.group(1).lower(), i + 1
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if lang in PYTHON_LANGS | SHELL_LANGS:
            markers = [MARKER.match(c) for c in comments]
            marker = next((m for m in markers if m), None)
            blocks.append(
                {
                    "lang": "python" if lang in PYTHON_LANGS else "shell",
                    "code": "\n".join(lines[start:end]) + "\n",
                    "line": start,
                    "marker": marker.groups() if marker else None,
                }
            )
        comments, i = [], end + 1
    return blocks


# Where a file without a `doc test: backends` marker runs, and why.
DEFAULT_BACKENDS = ("tensorflow",)
DEFAULT_REASON = (
    "backend-agnostic examples, run once: the unit tests cover every backend"
)


def file_settings(path):
    """The file's `doc test:` markers: (backends, reason, env)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    backends, reason, env = list(DEFAULT_BACKENDS), DEFAULT_REASON, {}
    for kind, value in FILE_MARKER.findall(text):
        if kind == "backends":
            names, _, reason = value.partition(" ")
            backends = names.split(",")
            reason = reason.strip("() ")
        else:
            name, _, val = value.partition("=")
            env[name] = val
    return backends, reason, env


def skip_reason(block, backend):
    """Why `block` does not run under `backend`, or None."""
    if block["marker"] is None:
        return None
    kind, value = block["marker"]
    if kind == "not run":
        return value
    if kind == "run on":
        names, _, reason = value.partition(" ")
        if backend not in names.split(","):
            return f"runs on {names} only: {reason.strip('() ')}"
    return None


def add_checks(code):
    """Turn `EXPR  # -> VALUE` lines into calls of `__doc_check__`."""
    out = []
    for line in code.splitlines():
        match = CHECK.match(line)
        if match and not line.startswith(" "):
            expr, value = match.group("expr"), match.group("value")
            try:
                ast.parse(expr, mode="eval")
            except SyntaxError:
                out.append(line)
                continue
            out.append(f"__doc_check__(({expr}), {value!r}, {expr!r})")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _plain(value):
    """Shapes, arrays and tensors as Python tuples/lists/numbers."""
    import numpy as np

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    if hasattr(value, "as_list"):  # tf.TensorShape
        return tuple(value.as_list())
    if type(value).__name__ == "Size":  # torch.Size
        return tuple(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def doc_check(value, expected, expr):
    """`expr` evaluated to `value`; the doc says `expected`."""
    value = _plain(value)
    if " +- " in expected:
        centre, spread = (float(v) for v in expected.split(" +- "))
        # The bounds are inclusive (1e-9 absorbs float rounding of X - D).
        assert abs(value - centre) <= spread + 1e-9, (
            f"{expr} is {value}; the doc says {expected}"
        )
        return
    assert value == ast.literal_eval(expected), (
        f"{expr} is {value!r}; the doc says {expected}"
    )


def run_file(doc, workdir):
    """Run the blocks of `doc` (relative to ROOT) in order; print a summary."""
    import keras

    backend = keras.backend.backend()
    blocks = parse_blocks(os.path.join(ROOT, doc))
    # Copies, not links: a block that writes beside a script (a results
    # file) must never change the repository.
    for name in ("tools", "benchmarks", "examples"):
        if not os.path.lexists(os.path.join(workdir, name)):
            shutil.copytree(os.path.join(ROOT, name), os.path.join(workdir, name))
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    namespace = {"__name__": "__doc__", "__doc_check__": doc_check}
    ran = 0
    for number, block in enumerate(blocks, 1):
        where = f"{doc}:{block['line']} (block {number})"
        reason = skip_reason(block, backend)
        if reason:
            print(f"SKIP {where}: {reason}", flush=True)
            continue
        start = time.time()
        if block["lang"] == "shell":
            result = subprocess.run(
                ["bash", "-e", "-c", block["code"]],
                cwd=workdir, env=env, capture_output=True, text=True,
            )
            if result.returncode:
                raise AssertionError(
                    f"{where} exited with {result.returncode}:\n"
                    f"{block['code']}\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-5000:]}"
                )
        else:
            code = compile(add_checks(block["code"]), where, "exec")
            if block["marker"] == ("run with", "mocked tfds"):
                import tensorflow_datasets as tfds

                with tfds.testing.mock_data(num_examples=64):
                    exec(code, namespace)
            else:
                exec(code, namespace)
        ran += 1
        print(f"RAN  {where} in {time.time() - start:.1f} s", flush=True)
    print(f"{doc}: ran {ran} of {len(blocks)} blocks", flush=True)


def all_blocks():
    return [(doc, block) for doc in DOC_FILES
            for block in parse_blocks(os.path.join(ROOT, doc))]


def test_docs_skip_under_a_quarter_of_their_blocks():
    blocks = all_blocks()
    skipped = [(doc, b["line"], b["marker"][1]) for doc, b in blocks
               if b["marker"] and b["marker"][0] == "not run"]
    for doc, line, reason in skipped:
        print(f"not run: {doc}:{line}: {reason}")
    print(f"{len(skipped)} of {len(blocks)} blocks are not run")
    assert len(skipped) * 4 < len(blocks), skipped


def test_doc_check_comments_compare_values():
    namespace = {"__doc_check__": doc_check}
    code = (
        "x = (2, 3)\nx  # -> (2, 3)\n"
        "0.915  # -> 0.916 +- 0.001\n0.9168  # -> 0.916 +- 0.001\n"
    )
    exec(add_checks(code), namespace)
    with pytest.raises(AssertionError, match="the doc says"):
        exec(add_checks("len('ab')  # -> 3\n"), namespace)
    with pytest.raises(AssertionError, match="the doc says"):
        exec(add_checks("0.9  # -> 0.916 +- 0.001\n"), namespace)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("doc", DOC_FILES)
def test_doc_examples_run(doc, tmp_path, tfds_dir):
    import keras

    backend = keras.backend.backend()
    backends, reason, extra_env = file_settings(os.path.join(ROOT, doc))
    if backends and backend not in backends:
        pytest.skip(f"{doc} runs on {','.join(backends)} only: {reason}")
    if not any(skip_reason(b, backend) is None
               for b in parse_blocks(os.path.join(ROOT, doc))):
        pytest.skip(f"{doc} has no block to run")
    env = dict(os.environ, TFDS_DATA_DIR=tfds_dir, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(
                   p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    for name, value in extra_env.items():
        env[name] = " ".join(v for v in (value, env.get(name)) if v)
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), doc, str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-8000:]


if __name__ == "__main__":
    doc = sys.argv[1]
    workdir = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp()
    os.chdir(workdir)
    run_file(doc, workdir)
