"""No import circle in keras_apm, counting imports inside functions too.

A circle (a module that imports one that imports it back, even lazily)
makes the import order matter and hides a layering mistake: a base class
that imports its own subclasses, say. Reads the source; imports nothing.
"""

import ast
import os

# The checkout this test file belongs to.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_files():
    modules = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "keras_apm")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                modules[module.removesuffix(".__init__")] = path
    return modules


def import_graph(modules):
    """`{module: {keras_apm modules it imports, anywhere in the file}}`.

    `from package import name` points at the submodule `package.name` if
    there is one, else at the package.
    """
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
                names = [n if n in modules else node.module for n in names]
            else:
                continue
            targets.update(n for n in names if n in modules and n != module)
        graph[module] = targets
    return graph


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


def test_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_circle(graph) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_keras_apm():
    modules = module_files()
    graph = import_graph(modules)
    assert "keras_apm.teachers.teacher" in graph
    circle = find_circle(graph)
    assert circle is None, " -> ".join(circle)
