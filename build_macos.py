#!/usr/bin/env python3
"""Build Lathe.app and Lathe.dmg on macOS (Apple Silicon) with PyInstaller.

    python build_macos.py            # on a Mac: icon, spec, PyInstaller, sign, .dmg (and notarize)
    python build_macos.py --check    # on any OS: validate everything that can be validated

Needs the build extra on the Mac: `pip install -e '.[build]'` (PyInstaller is a build-time tool,
never a runtime dependency). Signing and notarization come from the environment:

    LATHE_CODESIGN_IDENTITY   "Developer ID Application: Name (TEAMID)"; absent: ad-hoc signing
    LATHE_NOTARY_PROFILE      a `xcrun notarytool store-credentials` keychain profile, or else
    APPLE_ID, APPLE_TEAM_ID, APPLE_APP_PASSWORD   (an app-specific password)

The frozen executable is both the app and the engine worker: `Lathe --engine train ...` runs
`python -m engine train ...` (the GUI starts its worker that way when `sys.frozen` is set).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import os
import plistlib
import pprint
import shutil
import struct
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BUILD = ROOT / "build" / "macos"
DIST = ROOT / "dist"
RESOURCES = ROOT / "resources"
ICON_SVG = RESOURCES / "icon.svg"

APP_NAME = "Lathe"
BUNDLE_ID = "app.lathe.Lathe"
MIN_MACOS = "14.0"
ARCH = "arm64"
FIRST_PARTY = ("app", "engine")

# The .iconset that iconutil turns into Lathe.icns: (point size, scale).
ICON_SIZES = [
    (16, 1),
    (16, 2),
    (32, 1),
    (32, 2),
    (128, 1),
    (128, 2),
    (256, 1),
    (256, 2),
    (512, 1),
    (512, 2),
]

# Files a user can drop on the Dock icon (datasets). "Alternate": Lathe never becomes the default
# app for .txt or .json files.
DOCUMENT_TYPES = [
    ("JSON Lines dataset", ["jsonl"], ["org.jsonlines.jsonl"]),
    ("JSON dataset", ["json"], ["public.json"]),
    ("CSV dataset", ["csv"], ["public.comma-separated-values-text"]),
    ("Text", ["txt"], ["public.plain-text"]),
]

# Third-party packages the app and engine import, and how the bundle gets each one. Packages not
# listed here fail `--check` when app/ or engine/ starts importing them.
THIRD_PARTY = {
    "mlx": "Python modules + libmlx and mlx.metallib (the Metal kernels) from mlx/lib",
    "mlx_lm": "every submodule as a hidden import: model modules are imported by name at run time",
    "PySide6": "PyInstaller's PySide6 hooks: Qt libraries and plugins (cocoa platform, styles, image formats, SVG)",
    "shiboken6": "collected with PySide6 by its PyInstaller hooks (PySide6 cannot load without it)",
    "huggingface_hub": "static analysis + package metadata",
    "transformers": "pyinstaller-hooks-contrib hook + package metadata (it checks versions at import)",
    "tokenizers": "static analysis + package metadata",
    "numpy": "PyInstaller's numpy hook",
    "yaml": "static analysis (PyYAML)",
    "jinja2": "static analysis (chat templates)",
    "sentencepiece": "static analysis (SentencePiece tokenizers, GGUF export)",
    "safetensors": "static analysis + package metadata",
    "jsonschema": "pyinstaller-hooks-contrib hook (its metaschemas come with jsonschema_specifications)",
    "referencing": "static analysis ($ref resolution for jsonschema)",
    "gguf": "static analysis (llama.cpp's GGUF dequantizers for `models import FILE.gguf`)",
    "httpx2": "static analysis (huggingface_hub's HTTP client)",
    "httpx": "static analysis (HTTP client)",
    "requests": "static analysis + package metadata",
    "filelock": "static analysis + package metadata",
    "tqdm": "static analysis + package metadata",
    "packaging": "static analysis + package metadata",
    "regex": "static analysis + package metadata",
}
# Imported only inside `try: ... except ImportError` (optional features): warned about, not failed.
OPTIONAL_THIRD_PARTY = {"pyarrow", "psutil"}
# Distributions whose metadata must travel with the app (importlib.metadata.version at run time).
METADATA = [
    "transformers",
    "tokenizers",
    "huggingface_hub",
    "safetensors",
    "numpy",
    "PyYAML",
    "regex",
    "tqdm",
    "filelock",
    "packaging",
    "requests",
    "mlx",
    "mlx-lm",
    "jinja2",
    "sentencepiece",
]
EXCLUDES = [
    "tkinter",
    "torch",
    "tensorflow",
    "jax",
    "IPython",
    "matplotlib",
    "pytest",
    "PySide6.QtWebEngineCore",
]
ENTITLEMENTS = {
    # Hardened runtime exceptions Python needs: ctypes/libffi trampolines and loading extension
    # modules signed in the same bundle.
    "com.apple.security.cs.allow-jit": True,
    "com.apple.security.cs.allow-unsigned-executable-memory": True,
    "com.apple.security.cs.disable-library-validation": True,
}


# ---------------------------------------------------------------------------------------------
# What goes into the bundle


def project_version() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return str(data["project"]["version"])


def info_plist(version: str) -> dict:
    return {
        "CFBundleName": APP_NAME,
        "CFBundleDisplayName": APP_NAME,
        "CFBundleIdentifier": BUNDLE_ID,
        "CFBundleExecutable": APP_NAME,
        "CFBundlePackageType": "APPL",
        "CFBundleInfoDictionaryVersion": "6.0",
        "CFBundleShortVersionString": version,
        "CFBundleVersion": version,
        "CFBundleIconFile": f"{APP_NAME}.icns",
        "LSMinimumSystemVersion": MIN_MACOS,
        "LSArchitecturePriority": [ARCH],
        "LSRequiresNativeExecution": True,
        "LSApplicationCategoryType": "public.app-category.developer-tools",
        "NSHighResolutionCapable": True,
        "NSPrincipalClass": "NSApplication",
        "NSRequiresAquaSystemAppearance": False,
        "NSHumanReadableCopyright": "Lathe: fine-tune language models on your own data, privately.",
        "CFBundleDocumentTypes": [
            {
                "CFBundleTypeName": name,
                "CFBundleTypeRole": "Viewer",
                "LSHandlerRank": "Alternate",
                "CFBundleTypeExtensions": exts,
                "LSItemContentTypes": utis,
            }
            for name, exts, utis in DOCUMENT_TYPES
        ],
        # macOS has no system type for .jsonl: declare it, as a kind of plain text.
        "UTImportedTypeDeclarations": [
            {
                "UTTypeIdentifier": "org.jsonlines.jsonl",
                "UTTypeDescription": "JSON Lines",
                "UTTypeConformsTo": ["public.plain-text", "public.data"],
                "UTTypeTagSpecification": {
                    "public.filename-extension": ["jsonl"],
                    "public.mime-type": ["application/jsonl"],
                },
            }
        ],
    }


def python_sources() -> list[Path]:
    files = []
    for pkg in FIRST_PARTY:
        files += sorted(p for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(package: str) -> list[str]:
    """Every module of an installed package, found from its files (nothing is imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    base = Path(next(iter(spec.submodule_search_locations)))
    names = []
    for path in sorted(base.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(base).with_suffix("").parts
        rel = rel[:-1] if rel[-1] == "__init__" else rel
        names.append(".".join((package, *rel)))
    return names


def hidden_imports() -> list[str]:
    names = [module_name(p) for p in python_sources()]
    names += package_modules("mlx_lm")  # models/*, tuner, tool parsers: imported by name
    return sorted(set(names))


def resource_datas() -> list[tuple[str, str]]:
    """(source file, folder inside the bundle) for every file under resources/."""
    out = []
    for path in sorted(RESOURCES.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and not path.name.startswith("."):
            out.append((str(path), str(Path("resources") / path.parent.relative_to(RESOURCES))))
    return out


def mlx_runtime_files() -> list[tuple[str, str]]:
    """MLX's shared library and Metal kernels (mlx/lib), kept side by side as MLX expects."""
    spec = importlib.util.find_spec("mlx")
    if spec is None or not spec.submodule_search_locations:
        return []
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return [
        (str(p), "mlx/lib")
        for p in sorted(lib.glob("*"))
        if p.suffix in (".metallib", ".dylib", ".so")
    ]


def launcher_source() -> str:
    return '''"""Lathe.app's entry point (generated by build_macos.py)."""
import multiprocessing
import sys


def main() -> int:
    multiprocessing.freeze_support()
    # The frozen app is also the engine worker: `Lathe --engine train ...`.
    if len(sys.argv) > 1 and sys.argv[1] == "--engine":
        from engine.cli import main as engine_main

        return engine_main(sys.argv[2:])
    from app.__main__ import main as app_main

    # Finder may add a process serial number argument on older systems.
    return app_main([a for a in sys.argv[1:] if not a.startswith("-psn_")])


if __name__ == "__main__":
    sys.exit(main())
'''


def spec_source(
    version: str, *, icns: Path, launcher: Path, entitlements: Path, identity: str | None
) -> str:
    """The PyInstaller spec, with every list spelled out so it can be checked before a build."""
    datas = resource_datas() + [d for d in mlx_runtime_files() if d[0].endswith(".metallib")]
    binaries = [d for d in mlx_runtime_files() if not d[0].endswith(".metallib")]
    r = pprint.pformat
    return f"""# PyInstaller spec for {APP_NAME}.app, generated by build_macos.py {version}. Do not edit.
from PyInstaller.utils.hooks import collect_data_files, copy_metadata

hiddenimports = {r(hidden_imports(), width=100)}
datas = {r(datas, width=100)}
binaries = {r(binaries, width=100)}
datas += collect_data_files("mlx_lm")  # chat templates and other package data
for dist in {r(METADATA, width=100)}:
    try:
        datas += copy_metadata(dist)
    except Exception:
        pass  # not installed: nothing imports its version

a = Analysis(
    [{str(launcher)!r}],
    pathex=[{str(ROOT)!r}],
    binaries=binaries,
    datas=datas,
    hiddenimports=hiddenimports,
    excludes={r(EXCLUDES)},
    noarchive=False,
)
pyz = PYZ(a.pure)
exe = EXE(
    pyz,
    a.scripts,
    [],
    exclude_binaries=True,
    name={APP_NAME!r},
    console=False,
    argv_emulation=False,  # Qt receives dropped files as QFileOpenEvent itself
    target_arch={ARCH!r},
    codesign_identity={identity!r},
    entitlements_file={str(entitlements) if identity else None!r},
)
coll = COLLECT(exe, a.binaries, a.datas, name={APP_NAME!r})
app = BUNDLE(
    coll,
    name={APP_NAME + ".app"!r},
    icon={str(icns)!r},
    bundle_identifier={BUNDLE_ID!r},
    version={version!r},
    info_plist={r(info_plist(version), width=100)},
)
"""


# ---------------------------------------------------------------------------------------------
# Icon


def render_iconset(svg: Path, iconset: Path) -> list[Path]:
    """Render the SVG into Apple's .iconset PNGs with Qt (QSvgRenderer into a QImage)."""
    if sys.platform != "darwin":
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([sys.argv[0]])  # noqa: F841 - Qt needs one
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg} is not a valid SVG image")
    iconset.mkdir(parents=True, exist_ok=True)
    written = []
    for size, scale in ICON_SIZES:
        px = size * scale
        image = QImage(px, px, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        name = f"icon_{size}x{size}{'@2x' if scale == 2 else ''}.png"
        if not image.save(str(iconset / name), "PNG"):
            raise OSError(f"could not write {iconset / name}")
        written.append(iconset / name)
    return written


def png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path.name} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def png_has_content(path: Path) -> bool:
    from PySide6.QtGui import QImage

    image = QImage(str(path))
    w, h = image.width(), image.height()
    return image.pixelColor(w // 2, h // 2).alpha() > 0 and image.pixelColor(0, 0).alpha() == 0


# ---------------------------------------------------------------------------------------------
# Checks (any OS)


def imports_in(path: Path) -> list[tuple[str, bool]]:
    """(module, optional) for every import in a file, including those inside functions.

    `optional` is True for imports inside a `try` whose handlers catch ImportError.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ""
    if path.resolve().is_relative_to(ROOT):
        package = (
            module_name(path)
            if path.name == "__init__.py"
            else module_name(path).rpartition(".")[0]
        )
    optional_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            for inner in node.body:
                optional_nodes.update(id(n) for n in ast.walk(inner))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in optional_nodes) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((name, id(node) in optional_nodes))
    return found


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = []
    if handler.type is None:
        return True
    for n in [handler.type] if not isinstance(handler.type, ast.Tuple) else handler.type.elts:
        if isinstance(n, ast.Name):
            names.append(n.id)
    return any(n in ("ImportError", "ModuleNotFoundError", "Exception") for n in names)


def check_imports(
    sources: list[Path] | None = None, hidden: list[str] | None = None
) -> tuple[list[str], list[str], int]:
    """Every module app/ and engine/ import is collected: (problems, warnings, modules seen)."""
    sources = python_sources() if sources is None else sources
    hidden = set(hidden_imports() if hidden is None else hidden)
    problems, warnings, seen = [], [], set()
    stdlib = set(sys.stdlib_module_names)
    for path in sources:
        try:
            found = imports_in(path)
        except SyntaxError as exc:
            problems.append(
                f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: cannot be parsed ({exc.msg})"
            )
            continue
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for name, optional in found:
            top = name.split(".")[0]
            seen.add(name)
            if not top or top in stdlib or top == "__future__":
                continue
            if top in FIRST_PARTY:
                if name not in hidden and not any(h.startswith(name + ".") for h in hidden):
                    if _is_attribute_import(name):
                        continue
                    warnings.append(
                        f"{where} imports {name}, which is not in the source tree (yet)"
                    )
                continue
            if top not in THIRD_PARTY:
                if optional or top in OPTIONAL_THIRD_PARTY:
                    warnings.append(
                        f"{where} optionally imports {top}; the app is built without it"
                    )
                else:
                    problems.append(
                        f"{where} imports {top}, which the bundle does not collect: add it "
                        "to THIRD_PARTY in build_macos.py (and to the spec if it needs data)"
                    )
                continue
            if importlib.util.find_spec(top) is None:
                problems.append(f"{where} imports {top}, which is not installed here")
            elif (
                top == "mlx_lm"
                and name not in hidden
                and name != "mlx_lm"
                and not _is_attribute_import(name)
            ):
                problems.append(f"{where} imports {name}, which is not among the hidden imports")
    return problems, warnings, len(seen)


def _is_attribute_import(name: str) -> bool:
    """`from pkg.mod import obj` records pkg.mod; a dotted name that is no module is fine when its
    parent is one (e.g. from engine import __version__)."""
    parent = name.rpartition(".")[0]
    return (
        bool(parent)
        and importlib.util.find_spec(parent) is not None
        and importlib.util.find_spec(name) is None
    )


def check_mlx_lm_models(hidden: list[str]) -> list[str]:
    models = [m for m in package_modules("mlx_lm") if m.startswith("mlx_lm.models.")]
    if not models:
        return ["mlx_lm.models has no modules: is mlx-lm installed?"]
    missing = sorted(set(models) - set(hidden))
    return (
        [f"{len(missing)} mlx_lm.models modules are not hidden imports, e.g. {missing[0]}"]
        if missing
        else []
    )


def check_plist(plist: dict, version: str) -> list[str]:
    problems = []
    try:
        again = plistlib.loads(plistlib.dumps(plist, fmt=plistlib.FMT_XML))
    except (TypeError, ValueError, OverflowError) as exc:
        return [f"Info.plist cannot be written: {exc}"]
    if again != plist:
        problems.append("Info.plist does not survive a write and read")
    want = {
        "CFBundleIdentifier": BUNDLE_ID,
        "CFBundleShortVersionString": version,
        "CFBundleVersion": version,
        "LSMinimumSystemVersion": MIN_MACOS,
        "CFBundleExecutable": APP_NAME,
        "CFBundlePackageType": "APPL",
    }
    for key, value in want.items():
        if plist.get(key) != value:
            problems.append(f"Info.plist {key} is {plist.get(key)!r}, expected {value!r}")
    if plist.get("LSArchitecturePriority") != [ARCH]:
        problems.append("Info.plist does not ask for arm64")
    import re

    if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", plist.get("CFBundleIdentifier", "")):
        problems.append("the bundle id is not reverse-DNS")
    if not re.fullmatch(r"\d+(\.\d+){0,2}", version):
        problems.append(f"version {version!r} is not the 1.2.3 form macOS expects")
    extensions = {
        e
        for t in plist.get("CFBundleDocumentTypes", [])
        for e in t.get("CFBundleTypeExtensions", [])
    }
    for ext in ("jsonl", "json", "csv", "txt"):
        if ext not in extensions:
            problems.append(f"Info.plist does not accept .{ext} files dropped on the Dock icon")
    for t in plist.get("CFBundleDocumentTypes", []):
        if not t.get("LSItemContentTypes") or t.get("CFBundleTypeRole") not in ("Viewer", "Editor"):
            problems.append(
                f"document type {t.get('CFBundleTypeName')} lacks content types or a role"
            )
    return problems


def check_spec(text: str, hidden: list[str]) -> list[str]:
    problems = []
    try:
        tree = ast.parse(text)
        compile(tree, "Lathe.spec", "exec")
    except SyntaxError as exc:
        return [f"the generated spec is not valid Python: {exc}"]
    calls = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    for needed in ("Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE"):
        if needed not in calls:
            problems.append(f"the spec does not call {needed}")
    assigned = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                assigned[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    if sorted(assigned.get("hiddenimports", [])) != sorted(hidden):
        problems.append("the spec's hidden imports differ from the computed list")
    for src, _dest in assigned.get("datas", []) + assigned.get("binaries", []):
        if not Path(src).exists():
            problems.append(f"the spec collects {src}, which does not exist")
    bundle = next(
        (
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "BUNDLE"
        ),
        None,
    )
    exe = next(
        (
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "EXE"
        ),
        None,
    )
    if exe is None or not any(
        k.arg == "target_arch" and ast.literal_eval(k.value) == ARCH for k in exe.keywords
    ):
        problems.append("the spec does not build for arm64")
    if bundle is None or not any(k.arg == "info_plist" for k in bundle.keywords):
        problems.append("the spec's BUNDLE has no Info.plist")
    return problems


def check_resources() -> list[str]:
    problems = []
    if not ICON_SVG.is_file():
        return [f"{ICON_SVG.relative_to(ROOT)} is missing"]
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(ICON_SVG).getroot()
    except ET.ParseError as exc:
        return [f"{ICON_SVG.name} is not valid XML: {exc}"]
    if not root.tag.endswith("svg") or "viewBox" not in root.attrib:
        problems.append(f"{ICON_SVG.name} has no <svg viewBox=...>")
    else:
        _, _, w, h = (float(v) for v in root.attrib["viewBox"].split())
        if w != h:
            problems.append(f"{ICON_SVG.name} is not square ({w}x{h})")
    datas = resource_datas()
    listed = {Path(src) for src, _ in datas}
    on_disk = {
        p
        for p in RESOURCES.rglob("*")
        if p.is_file() and not p.name.startswith(".") and "__pycache__" not in p.parts
    }
    for missing in sorted(on_disk - listed):
        problems.append(f"resources/{missing.relative_to(RESOURCES)} is not collected")
    return problems


def check_iconset(iconset: Path) -> list[str]:
    problems = []
    try:
        render_iconset(ICON_SVG, iconset)
    except Exception as exc:  # noqa: BLE001 - reported as a check failure
        return [f"the icon cannot be rendered: {exc}"]
    for size, scale in ICON_SIZES:
        name = f"icon_{size}x{size}{'@2x' if scale == 2 else ''}.png"
        path = iconset / name
        if not path.is_file():
            problems.append(f"{name} was not written")
            continue
        w, h = png_size(path)
        if (w, h) != (size * scale, size * scale):
            problems.append(f"{name} is {w}x{h}, expected {size * scale}x{size * scale}")
        elif not png_has_content(path):
            problems.append(f"{name} is blank or has no transparent corner")
    return problems


def check_build_extra() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = data["project"].get("optional-dependencies", {})
    deps = " ".join(data["project"].get("dependencies", [])).lower()
    problems = []
    if not any(d.lower().startswith("pyinstaller") for d in extras.get("build", [])):
        problems.append("pyproject.toml has no 'build' extra with pyinstaller")
    if "pyinstaller" in deps:
        problems.append("pyinstaller must not be a runtime dependency")
    return problems


def check_metadata() -> list[str]:
    problems = []
    for dist in ("transformers", "tokenizers", "huggingface_hub", "mlx-lm", "numpy"):
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{dist} is not installed, so its metadata cannot be collected")
    return problems


def check_macos_tools() -> list[str]:
    problems = []
    for tool in ("iconutil", "codesign", "hdiutil", "xcrun"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is missing (install the Xcode command line tools)")
    if importlib.util.find_spec("PyInstaller") is None:
        problems.append("PyInstaller is not installed: pip install -e '.[build]'")
    if not any(src.endswith("mlx.metallib") for src, _ in mlx_runtime_files()):
        problems.append(
            "mlx.metallib was not found in the mlx package: install the Metal build of mlx"
        )
    import platform

    if platform.machine() != "arm64":
        problems.append(
            f"this Mac is {platform.machine()}; Lathe.app is built for arm64 on Apple Silicon"
        )
    return problems


def run_checks() -> int:
    version = project_version()
    hidden = hidden_imports()
    results: list[tuple[str, list[str], str]] = []
    warnings: list[str] = []

    results.append(
        ("pyproject: version and build extra", check_build_extra(), f"version {version}")
    )
    results.append(
        (
            "Info.plist",
            check_plist(info_plist(version), version),
            f"{BUNDLE_ID}, macOS {MIN_MACOS}+, {ARCH}, drops: .jsonl .json .csv .txt",
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        launcher = tmp / "lathe_main.py"
        launcher.write_text(launcher_source(), encoding="utf-8")
        launcher_problems = []
        try:
            compile(launcher.read_text(), str(launcher), "exec")
        except SyntaxError as exc:
            launcher_problems.append(f"the launcher is not valid Python: {exc}")
        if "--engine" not in launcher.read_text():
            launcher_problems.append("the launcher cannot start the engine worker")
        results.append(
            (
                "launcher (app + engine worker)",
                launcher_problems,
                "Lathe --engine ... runs the engine",
            )
        )
        spec = spec_source(
            version,
            icns=tmp / "Lathe.icns",
            launcher=launcher,
            entitlements=tmp / "e.plist",
            identity=None,
        )
        results.append(
            ("PyInstaller spec", check_spec(spec, hidden), f"{len(hidden)} hidden imports")
        )
        results.append(
            (
                "icon set",
                check_iconset(tmp / "Lathe.iconset"),
                f"{len(ICON_SIZES)} PNGs from resources/icon.svg",
            )
        )
    results.append(("resources", check_resources(), f"{len(resource_datas())} files collected"))
    import_problems, import_warnings, n_modules = check_imports(hidden=hidden)
    warnings += import_warnings
    results.append(
        (
            "imports of app/ and engine/",
            import_problems,
            f"{n_modules} imported modules in {len(python_sources())} files, all collected",
        )
    )
    results.append(("mlx_lm model modules", check_mlx_lm_models(hidden), "all are hidden imports"))
    results.append(("package metadata", check_metadata(), f"{len(METADATA)} distributions"))
    try:
        plistlib.dumps(ENTITLEMENTS)
        results.append(("entitlements", [], "hardened runtime exceptions for Python"))
    except (TypeError, ValueError) as exc:
        results.append(("entitlements", [str(exc)], ""))
    if sys.platform == "darwin":
        results.append(
            (
                "macOS build tools",
                check_macos_tools(),
                "iconutil, codesign, hdiutil, xcrun, PyInstaller",
            )
        )
    else:
        print(
            f"- macOS build tools: not checked on {sys.platform} (iconutil, codesign, hdiutil, mlx.metallib)"
        )

    failed = 0
    for name, problems, ok_text in results:
        if problems:
            failed += 1
            print(f"✗ {name}:")
            for p in problems:
                print(f"    {p}")
        else:
            print(f"✓ {name}: {ok_text}")
    for w in warnings:
        print(f"! {w}")
    if failed:
        print(f"{failed} check(s) failed.", file=sys.stderr)
        return 1
    print("All checks passed.")
    return 0


# ---------------------------------------------------------------------------------------------
# Build (macOS)


def sh(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def build() -> int:
    if sys.platform != "darwin":
        print("Lathe.app can only be built on macOS; use --check here.", file=sys.stderr)
        return 2
    problems = check_macos_tools()
    if problems:
        print("Cannot build:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    version = project_version()
    identity = os.environ.get("LATHE_CODESIGN_IDENTITY") or None
    shutil.rmtree(BUILD, ignore_errors=True)
    BUILD.mkdir(parents=True)
    DIST.mkdir(exist_ok=True)

    iconset = BUILD / f"{APP_NAME}.iconset"
    render_iconset(ICON_SVG, iconset)
    icns = BUILD / f"{APP_NAME}.icns"
    sh("iconutil", "--convert", "icns", "--output", str(icns), str(iconset))
    launcher = BUILD / "lathe_main.py"
    launcher.write_text(launcher_source(), encoding="utf-8")
    entitlements = BUILD / "entitlements.plist"
    entitlements.write_bytes(plistlib.dumps(ENTITLEMENTS))
    spec = BUILD / f"{APP_NAME}.spec"
    spec.write_text(
        spec_source(
            version, icns=icns, launcher=launcher, entitlements=entitlements, identity=identity
        )
    )

    sh(
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--clean",
        "--distpath",
        str(DIST),
        "--workpath",
        str(BUILD / "work"),
        str(spec),
    )
    app = DIST / f"{APP_NAME}.app"

    if identity:
        sh(
            "codesign",
            "--force",
            "--deep",
            "--options",
            "runtime",
            "--timestamp",
            "--entitlements",
            str(entitlements),
            "--sign",
            identity,
            str(app),
        )
    else:
        print(
            "No LATHE_CODESIGN_IDENTITY: signing ad hoc (runs on this Mac; Gatekeeper warns elsewhere)."
        )
        sh("codesign", "--force", "--deep", "--sign", "-", str(app))
    sh("codesign", "--verify", "--deep", "--strict", "--verbose=2", str(app))

    dmg = DIST / f"{APP_NAME}.dmg"
    staging = BUILD / "dmg"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copytree(app, staging / app.name, symlinks=True)
    (staging / "Applications").symlink_to("/Applications")
    dmg.unlink(missing_ok=True)
    sh(
        "hdiutil",
        "create",
        "-volname",
        APP_NAME,
        "-srcfolder",
        str(staging),
        "-ov",
        "-format",
        "UDZO",
        str(dmg),
    )
    if identity:
        sh("codesign", "--force", "--timestamp", "--sign", identity, str(dmg))
        notarize(dmg, app)
    print(f"Built {app} and {dmg}.")
    return 0


def notarize(dmg: Path, app: Path) -> None:
    profile = os.environ.get("LATHE_NOTARY_PROFILE")
    apple_id, team, password = (
        os.environ.get(k) for k in ("APPLE_ID", "APPLE_TEAM_ID", "APPLE_APP_PASSWORD")
    )
    if profile:
        auth = ["--keychain-profile", profile]
    elif apple_id and team and password:
        auth = ["--apple-id", apple_id, "--team-id", team, "--password", password]
    else:
        print(
            "Signed but not notarized: set LATHE_NOTARY_PROFILE or APPLE_ID, APPLE_TEAM_ID, APPLE_APP_PASSWORD."
        )
        return
    sh("xcrun", "notarytool", "submit", str(dmg), *auth, "--wait")
    sh("xcrun", "stapler", "staple", str(dmg))
    sh(
        "spctl",
        "--assess",
        "--type",
        "open",
        "--context",
        "context:primary-signature",
        "-vv",
        str(dmg),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build Lathe.app and Lathe.dmg on macOS.")
    parser.add_argument(
        "--check",
        action="store_true",
        help="Validate the spec, Info.plist, icon set, resources and imports (any OS).",
    )
    args = parser.parse_args(argv)
    return run_checks() if args.check else build()


if __name__ == "__main__":
    sys.exit(main())
