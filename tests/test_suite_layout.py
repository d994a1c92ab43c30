"""The test suite's own layout: test modules share helpers through tests/helpers.py only."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every module `path` imports, `from X import Y` giving X.Y too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_no_test_module_imports_another_test_module_or_a_conftest(tmp_path):
    """Issue 19, tests: no test module (nor conftest or helper) imports a test module or a conftest.

    Such imports (21 modules had them) hid which helpers were shared and tied test modules to one
    another, so moving or renaming one broke others; the shared helpers live in tests/helpers.py,
    and fixtures in conftest.py files, which pytest provides without an import.
    """

    def offenders(root: Path) -> list[str]:
        out = []
        for path in sorted(root.rglob("*.py")):
            for line, name in _imported_modules(path):
                parts = name.split(".")
                where = f"{path.relative_to(root)}:{line} imports "
                if parts[0] == "tests" and any(
                    p.startswith("test_") or p == "conftest" for p in parts[1:]
                ):
                    if not (out and out[-1].startswith(where)):  # once per import statement
                        out.append(where + name)
        return out

    # The check itself finds such an import (so this test can fail).
    bad = tmp_path / "engine" / "test_b.py"
    bad.parent.mkdir()
    bad.write_text("import json\nfrom tests.engine.test_a import make_config\n")
    (tmp_path / "engine" / "test_c.py").write_text("def f():\n    import tests.app.conftest\n")
    (tmp_path / "helpers.py").write_text("from tests.engine import test_a\nfrom tests import x\n")
    assert offenders(tmp_path) == [
        "engine/test_b.py:2 imports tests.engine.test_a",
        "engine/test_c.py:2 imports tests.app.conftest",
        "helpers.py:1 imports tests.engine.test_a",
    ]

    assert offenders(TESTS) == []
