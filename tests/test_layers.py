"""The package's layers import one way (config < data < models < inference < evaluation <
calibration < training < demo < serve < cli), and no module imports itself back through a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import deepfake_detect

PACKAGE = Path(deepfake_detect.__file__).parent
LAYERS = ["config", "data", "models", "inference", "evaluation", "calibration", "training",
          "demo", "serve", "cli"]
# Below every layer: the error types, the output rules, the run facts and dynamic batching
# that everything may use.
FOUNDATION = {"errors", "outputs", "runinfo", "batching", "__init__"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("deepfake_detect", *parts)).removesuffix(".__init__")
        mods[name] = path
    return mods


def _imports(path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports, at any depth of the file (function-level
    imports count: they are edges all the same)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n for n in names if n in known}
    return found


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    if part in FOUNDATION:
        return -1
    if part == "__main__":  # `python -m deepfake_detect`: above the command line it starts
        return len(LAYERS)
    assert part in LAYERS, f"{module}: not in any layer; add its package to LAYERS"
    return LAYERS.index(part)


def test_every_import_goes_down_the_layers() -> None:
    mods = _modules()
    upward = []
    for name, path in sorted(mods.items()):
        if name == "deepfake_detect":  # the package's lazy public API may name any layer
            continue
        for target in _imports(path, set(mods)):
            if _layer(target) > _layer(name):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports from a lower layer into a higher one:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    mods = _modules()
    # The root package's lazy public API (deepfake_detect.load_checkpoint...) imports on first
    # use only; every other edge counts, function-level imports too.
    graph = {name: _imports(path, set(mods)) - {name} for name, path in mods.items()
             if name != "deepfake_detect"}
    packages = {name for name, path in mods.items() if path.name == "__init__.py"}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    # A package __init__ re-exporting its own modules makes package <-> module edges, which
    # are no cycle between modules: only cycles through two or more plain modules count.
    real = [c for c in cycles if len(set(c) - packages) >= 2]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)
