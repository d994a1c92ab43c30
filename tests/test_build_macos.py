"""build_macos.py --check validates the app bundle's spec, plist, icon and imports on any OS."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bm():
    spec = importlib.util.spec_from_file_location("build_macos", ROOT / "build_macos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_passes_on_this_machine():
    proc = subprocess.run(
        [sys.executable, "build_macos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in (
        "✓ Info.plist",
        "✓ PyInstaller spec",
        "✓ icon set",
        "✓ resources",
        "✓ imports of app/ and engine/",
        "✓ mlx_lm model modules",
        "All checks passed.",
    ):
        assert line in proc.stdout


def test_plist_has_what_macos_needs(bm):
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    plist = bm.info_plist(version)
    assert (
        plist["CFBundleShortVersionString"] == version and plist["LSMinimumSystemVersion"] == "14.0"
    )
    assert (
        plist["LSArchitecturePriority"] == ["arm64"] and plist["CFBundleIdentifier"] == bm.BUNDLE_ID
    )
    assert bm.check_plist(plist, version) == []
    plist["CFBundleDocumentTypes"] = [
        t for t in plist["CFBundleDocumentTypes"] if "csv" not in t["CFBundleTypeExtensions"]
    ]
    assert any(".csv" in p for p in bm.check_plist(plist, version))


def test_icon_set_has_every_size(bm, tmp_path):
    written = bm.render_iconset(bm.ICON_SVG, tmp_path / "Lathe.iconset")
    sizes = sorted(bm.png_size(p)[0] for p in written)
    assert sizes == [16, 32, 32, 64, 128, 256, 256, 512, 512, 1024]
    assert all(bm.png_has_content(p) for p in written)


def test_an_uncollected_import_fails_the_check(bm, tmp_path):
    src = tmp_path / "new_feature.py"
    src.write_text(
        "import json\nimport numpy\n\ndef f():\n    import surely_not_collected_pkg\n"
        "try:\n    import pyarrow_optional_thing\nexcept ImportError:\n    pass\n"
    )
    problems, warnings, _ = bm.check_imports(sources=[src], hidden=bm.hidden_imports())
    assert len(problems) == 1 and "surely_not_collected_pkg" in problems[0]
    assert any("pyarrow_optional_thing" in w for w in warnings)


def test_spec_lists_every_mlx_lm_model_and_builds_arm64(bm, tmp_path):
    hidden = bm.hidden_imports()
    assert (
        "mlx_lm.models.llama" in hidden
        and "mlx_lm.models.qwen2" in hidden
        and "engine.export.fuse" in hidden
    )
    spec = bm.spec_source(
        "0.1.0",
        icns=tmp_path / "L.icns",
        launcher=tmp_path / "l.py",
        entitlements=tmp_path / "e.plist",
        identity=None,
    )
    assert bm.check_spec(spec, hidden) == []
    assert bm.check_spec(spec.replace("'arm64'", "'x86_64'"), hidden) == [
        "the spec does not build for arm64"
    ]
    assert bm.check_spec(spec, hidden[:-1]) == [
        "the spec's hidden imports differ from the computed list"
    ]
    assert bm.check_mlx_lm_models(hidden[:3]) != []
