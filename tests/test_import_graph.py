"""keras_apm's import graph: no circle between files or folders, folders in
layers, and `jax`/`torch` imported only behind `keras_apm.backend`.

A circle (a module that imports one that imports it back, even lazily)
makes the import order matter and hides a layering mistake: a base class
that imports its own subclasses, say. Imports inside functions count, and a
name a package exports lazily (`keras_apm.utils.lazy.lazy_exports`) counts
as an import of the module that defines it. Reads the source; imports
nothing.
"""

import ast
import functools
import os

import pytest

# Touches no Keras backend: one job of the three runs it (tests/conftest.py).
pytestmark = pytest.mark.backend_independent

# The checkout this test file belongs to.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The folders of keras_apm, lowest first: a folder imports only folders of
# lower tiers. The engines (`distill`, `ttt`, ...) never import
# `visualize` or the applications (`apps`: e.g. the digits demo, which
# draws pictures of a distillation run), and the command line sits on top.
LAYERS = (
    ("utils",),
    ("backend",),
    ("layers",),
    ("teachers",),
    ("models",),
    ("convert", "data"),
    ("distill",),
    ("ttt",),
    # On-device TTT files (`export/ttt_litert.py`) are built from `ttt`.
    ("export",),
    ("visualize",),
    ("apps",),
    ("cli",),
)

# Engine code: only these folders import `jax` or `torch` (`convert` reads
# PyTorch `.pth` checkpoints).
ENGINE_FOLDERS = ("backend", "convert")
ENGINES = ("jax", "torch")


def module_files():
    modules = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "keras_apm")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                modules[module.removesuffix(".__init__")] = path
    return modules


@functools.lru_cache(maxsize=None)
def parse(path):
    # Read once per test session: the tests below walk the same files.
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def lazy_spec(package, spec):
    """`{name: module}` of a `lazy_exports(package, spec)` spec (the same
    reading as `keras_apm.utils.lazy.lazy_exports`)."""
    exports = {}
    for line in spec.strip().splitlines():
        module, names = line.split(":")
        module = module.strip()
        if not module.startswith("keras_apm."):
            module = f"{package}.{module}"
        for name in names.split():
            exports[name] = module
    return exports


def lazy_exports(modules):
    """`{package: {exported name: module that defines it}}`.

    Reads each package's `lazy_exports(__name__, spec)` call and the
    `_EXPORTS` table of `keras_apm/__init__.py` (name: (module, attribute)).
    """
    found = {}
    for module, path in modules.items():
        if not path.endswith("__init__.py"):
            continue
        exports = {}
        for node in ast.walk(parse(path)):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "lazy_exports"
                and len(node.args) == 2
                and isinstance(node.args[1], ast.Constant)
            ):
                exports.update(lazy_spec(module, node.args[1].value))
            if (
                isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["_EXPORTS"]
            ):
                table = ast.literal_eval(node.value)
                exports.update({name: m for name, (m, _) in table.items()})
        if exports:
            found[module] = exports
    return found


def import_graph(modules, lazy=None):
    """`{module: {keras_apm modules it imports, anywhere in the file}}`.

    `from package import name` points at the submodule `package.name` if
    there is one, else at the module that defines a lazy export `name` of
    `package`, else at the package. A package with lazy exports imports
    their modules (outside the `keras-apm` command it loads them all).
    """
    lazy = {} if lazy is None else lazy

    def resolve(package, name):
        if f"{package}.{name}" in modules:
            return f"{package}.{name}"
        return lazy.get(package, {}).get(name, package)

    graph = {}
    for module, path in modules.items():
        targets = set(lazy.get(module, {}).values())
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [resolve(node.module, a.name) for a in node.names]
            else:
                continue
            targets.update(names)
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def folder_graph(graph, modules):
    """`{folder: {other folders its modules import}}`, the package's own
    `keras_apm/__init__.py` and `__main__.py` (which export everything)
    left out."""
    folders = {}
    for module, targets in graph.items():
        source = top_folder(module, modules)
        if source is None:
            continue
        edges = folders.setdefault(source, set())
        for target in targets:
            folder = top_folder(target, modules)
            if folder is not None and folder != source:
                edges.add(folder)
    return folders


def top_folder(module, modules):
    parts = module.split(".")
    if len(parts) < 2 or not modules[".".join(parts[:2])].endswith(
        "__init__.py"
    ):
        return None  # keras_apm itself, keras_apm.__main__
    return parts[1]


def find_circle(graph):
    """One import circle as a list of modules, or None (depth-first)."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            circle = visit(target)
            if circle:
                return circle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        circle = visit(module)
        if circle:
            return circle
    return None


def layering_errors(folders, layers):
    """`"a -> b"` for each folder import that goes sideways or up."""
    tier = {folder: i for i, names in enumerate(layers) for folder in names}
    errors = []
    for source, targets in sorted(folders.items()):
        for target in sorted(targets):
            if tier.get(target, -1) >= tier.get(source, -1):
                errors.append(f"{source} -> {target}")
    return errors


def engine_imports(modules):
    """`"module: engine"` for each `jax`/`torch` import outside
    `ENGINE_FOLDERS` (import statements, and `importlib.import_module`,
    `__import__` or `keras_apm.utils.optional.require` of a name)."""
    found = []
    for module, path in sorted(modules.items()):
        if top_folder(module, modules) in ENGINE_FOLDERS:
            continue
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None))
                in ("import_module", "__import__", "require")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            else:
                continue
            for name in names:
                if name.split(".")[0] in ENGINES:
                    found.append(f"{module}: {name}")
    return found


def test_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_circle(graph) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_resolves_lazy_exports():
    modules = module_files()
    lazy = lazy_exports(modules)
    distill = lazy["keras_apm.distill"]
    assert distill["APMDistiller"] == "keras_apm.distill.distiller"
    assert lazy["keras_apm"]["BatchedTTT"] == "keras_apm.ttt"
    graph = import_graph(modules, lazy)
    # `from keras_apm.distill import APMDistiller` is an edge to the
    # distiller's module, not to the package.
    assert "keras_apm.distill.distiller" in graph["keras_apm.distill"]
    assert graph["keras_apm.visualize.overfit"] >= {
        "keras_apm.distill.distiller"
    }


def test_layering_finds_a_folder_going_up():
    folders = {
        "distill": {"visualize", "models"},
        "visualize": {"distill"},
        "models": set(),
    }
    layers = (("models",), ("distill",), ("visualize",))
    assert layering_errors(folders, layers) == ["distill -> visualize"]
    assert find_circle(folders) == ["distill", "visualize", "distill"]


def test_no_import_circle_in_keras_apm():
    modules = module_files()
    graph = import_graph(modules, lazy_exports(modules))
    assert "keras_apm.teachers.teacher" in graph
    circle = find_circle(graph)
    assert circle is None, " -> ".join(circle)


def test_folders_form_layers():
    modules = module_files()
    folders = folder_graph(import_graph(modules, lazy_exports(modules)), modules)
    listed = {folder for names in LAYERS for folder in names}
    assert set(folders) == listed, "add new folders to LAYERS"
    circle = find_circle(folders)
    assert circle is None, " -> ".join(circle)
    assert layering_errors(folders, LAYERS) == []


def test_jax_and_torch_only_behind_the_backend_door():
    modules = module_files()
    assert engine_imports(modules) == []
    # The scan sees the imports it allows: `torch` in a copy of the torch
    # module outside the door, and `require("torch")` in convert's reader.
    moved = {
        "keras_apm.layers": modules["keras_apm.layers"],
        "keras_apm.layers.torch_copy": modules["keras_apm.backend.torch"],
        "keras_apm.layers.official": modules["keras_apm.convert.official"],
    }
    assert engine_imports(moved) == [
        "keras_apm.layers.official: torch",
        "keras_apm.layers.torch_copy: torch",
        "keras_apm.layers.torch_copy: torch.distributed",
    ]
