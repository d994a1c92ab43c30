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
