"""The package's imports run one way: no circles, no lower layer importing a higher one, and the
model imports nothing outside ``model/`` (read from the source with ``ast``, nothing imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "vla_ablate"

# Each module's layer: a module imports only modules of its own layer or below. The package's
# __init__ (the public names) stands above them all.
LAYERS = [
    ["_version", "errors", "fileio", "precision"],
    ["console", "runfolder", "optim", "plots"],
    ["data", "data.process", "data.store", "data.tokens", "data.lerobot", "data.tokenizer",
     "data.hub", "data.robot", "data.robot_config", "model"],
    ["factory", "host"],
    ["config", "config.schema", "config.paths", "config.checks", "config.identity"],
    ["training"],
    ["evaluate", "locks", "loggers"],
    ["evaluations", "trained"],
    ["pipeline"],
    ["job"],
    ["__main__", "sweep", "sample", "visualize", "check_cache", "data.__main__"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(module of the package imported, line, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for target in targets:
            if not (target == "vla_ablate" or target.startswith("vla_ablate.")):
                continue
            name = target.removeprefix("vla_ablate").lstrip(".")
            while name and name not in known:  # `from vla_ablate.x import y` where y is a name
                name = name.rpartition(".")[0]
            if name and name in known:
                found.append((name, node.lineno, id(node) in top))
    return found


def layer_of(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if name == entry or (entry in ("model", "training") and name.startswith(entry + ".")):
                return i
    raise AssertionError(f"vla_ablate.{name} has no layer in tests/test_imports.py's LAYERS: "
                         "add it where it belongs")


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: {t for t, _, _ in imports(path, known) if t != name}
            for name, path in mods.items() if name}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_circle():
    found = cycle(graph())
    assert found is None, "import circle: " + " -> ".join(found)


def test_every_import_runs_down_the_layers():
    wrong = []
    for name, targets in graph().items():
        for target in targets:
            if target and layer_of(target) > layer_of(name):
                wrong.append(f"{name} (layer {layer_of(name)}) imports {target} "
                             f"(layer {layer_of(target)})")
    assert not wrong, "\n".join(wrong)


def test_the_model_imports_nothing_outside_model():
    outside = [f"{name} imports {t}" for name, targets in graph().items()
               if name == "model" or name.startswith("model.")
               for t in targets if not (t == "model" or t.startswith("model."))]
    assert not outside, outside


def test_no_import_of_the_package_inside_a_function():
    mods = modules()
    lazy = [f"{path.relative_to(ROOT)}:{line} imports vla_ablate.{t}"
            for path in mods.values() for t, line, at_top in imports(path, set(mods))
            if not at_top]
    assert not lazy, lazy


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
])
def test_the_circle_finder_finds_circles(edges, expected):
    assert cycle(edges) == expected


def test_the_import_reader_sees_lazy_and_from_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from vla_ablate.data.tokens import ACTION\nimport os\n\n\ndef f():\n"
                      "    from vla_ablate import job\n")
    found = imports(source, {"data", "data.tokens", "job"})
    assert ("data.tokens", 1, True) in found and ("job", 6, False) in found
