"""DESIGN.md: engine/ never imports Qt."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_modules_import_no_qt():
    # A fresh interpreter, so Qt loaded by other tests cannot hide (or fake) an import.
    code = (
        "import importlib, pkgutil, sys, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    if m.name != 'engine.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "qt = sorted(n for n in sys.modules if n.split('.')[0] in ('PySide6', 'shiboken6', 'PyQt5', 'PyQt6'))\n"
        "print(','.join(qt))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"engine imported Qt modules: {out.stdout}"


def test_every_engine_module_is_importable():
    import engine

    names = [m.name for m in pkgutil.walk_packages(engine.__path__, "engine.")]
    assert "engine.config" in names
    for name in names:
        if name != "engine.__main__":
            importlib.import_module(name)


# DESIGN.md's layers inside the engine, lowest first, written down as data (issue 19). A module
# belongs to the layer of the longest prefix that names it. A module may import its own layer
# and the layers below it, never one above; and no chain of imports may lead back to where it
# started. Imports inside functions count: they run all the same, just later.
ENGINE_LAYERS = [
    (
        "foundation",
        [
            "engine",
            "engine.errors",
            "engine.platform",
            "engine.workspace",
            "engine.config",
            "engine.events",
            "engine.templates",
            "engine.head",
        ],
    ),
    # Records to tokens and batch plans: pure functions of token lengths, below the model library
    # (the memory estimate plans the largest batch with them).
    ("encoding", ["engine.encode", "engine.batching"]),
    ("models", ["engine.models"]),
    ("data", ["engine.data", "engine.tinymodel"]),
    # The training package (one job per module) and the run folders its checkpoints live in.
    ("training core", ["engine.training", "engine.runs"]),
    (
        "jobs",
        [
            "engine.train",
            "engine.models.measure",
            "engine.runspec",
            "engine.chat",
            "engine.evaluate",
            "engine.export",
            "engine.demo",
        ],
    ),
    ("interface", ["engine.commands", "engine.cli", "engine.__main__"]),
]


def _engine_modules() -> dict[str, Path]:
    mods = {}
    for f in (ROOT / "engine").rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every engine module each engine module imports, anywhere in its body."""
    import ast

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                names = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
                ]
            else:
                continue
            found |= {owner(n) for n in names if n == "engine" or n.startswith("engine.")}
        found.discard(mod)
        graph[mod] = found
    return graph


def _layer(mod: str) -> int:
    best, level = "", None
    for i, (_, prefixes) in enumerate(ENGINE_LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > len(best):
                best, level = p, i
    assert level is not None, f"{mod} is in no layer: add it to ENGINE_LAYERS"
    return level


def test_no_engine_module_imports_a_higher_layer():
    """Issue 19: memory.py -> engine.models, models/measure.py -> engine.train and
    chat/generation.py -> engine.train ran upward, inside functions where nothing complained."""
    graph = _imports(_engine_modules())
    upward = sorted(
        f"{a} ({ENGINE_LAYERS[_layer(a)][0]}) imports {b} ({ENGINE_LAYERS[_layer(b)][0]})"
        for a, outs in graph.items()
        for b in outs
        if _layer(b) > _layer(a)
    )
    assert upward == []


def test_engine_has_no_import_cycles():
    """Issue 19: train -> evaluate.golden -> chat -> chat.generation -> train was a cycle."""
    graph = _imports(_engine_modules())
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_function_in_the_training_package_is_over_80_lines():
    """Issue 19: `engine/train.py::_run` and `engine/trainer.py::train` had grown to ~250 lines
    each; in `engine/training/` every function and method stays within 80 lines."""
    import ast

    long = []
    for path in sorted((ROOT / "engine" / "training").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert long == []
