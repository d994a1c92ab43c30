"""The workspace: one folder that holds everything Lathe writes.

`$LATHE_HOME` when set, else the platform's data folder. Inside: datasets/, models/, runs/,
settings.yaml. Every file is written to a temporary name and renamed into place, so a crash never
leaves a half-written file behind, and files are readable by the user only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

FILE_MODE = 0o600
DIR_MODE = 0o700


class WorkspaceError(ValueError):
    """A name or path that would escape the workspace, or a workspace that cannot be used."""


def home() -> Path:
    """The workspace folder (created on first use)."""
    env = os.environ.get("LATHE_HOME")
    if env:
        root = Path(env).expanduser()
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Application Support" / "Lathe"
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        root = Path(base) / "lathe"
    ensure_dir(root)
    return root


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    return path


def datasets_dir() -> Path:
    return ensure_dir(home() / "datasets")


def models_dir() -> Path:
    return ensure_dir(home() / "models")


def runs_dir() -> Path:
    return ensure_dir(home() / "runs")


def settings_path() -> Path:
    return home() / "settings.yaml"


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, fallback: str = "item") -> str:
    """A file-system-safe single path component made from a user's name for something.

    Separators, `..` and anything unusual collapse to `-`, so the result can never escape the folder
    it is joined to.
    """
    cleaned = _SAFE.sub("-", str(name)).strip("-.")
    cleaned = re.sub(r"-{2,}", "-", cleaned)[:80]
    return cleaned or fallback


def inside(root: Path, name: str) -> Path:
    """`root / name` for a single safe component; refuses anything that resolves outside `root`."""
    candidate = (root / safe_name(name)).resolve()
    if candidate.parent != root.resolve():
        raise WorkspaceError(f"'{name}' is not a valid name inside {root}")
    return candidate


def new_id(prefix: str) -> str:
    """A sortable, unique, readable id such as `20261122-143015-bank-support-3f2a`."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{safe_name(prefix)}-{secrets.token_hex(2)}"


# ---------------------------------------------------------------------------------------------
# Atomic writes


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


class _PlainDumper(yaml.SafeDumper):
    """Writes a value shared twice in full, never as an alias, because Lathe's loader refuses them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_yaml_atomic(path: Path, obj: Any) -> Path:
    text = yaml.dump(obj, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True)
    return write_text_atomic(path, text)


def temp_path_for(path: Path) -> Path:
    """A temporary sibling name for writers that need a path (e.g. `mx.save_safetensors`)."""
    path = Path(path)
    ensure_dir(path.parent)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")


def commit_temp(tmp: Path, final: Path) -> Path:
    """fsync `tmp`, restrict its mode and rename it onto `final`."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, final)
    return final


def make_private(path: Path) -> None:
    """Give a file Lathe wrote (or a folder it created, with everything in it) the workspace's modes:
    0600 files and 0700 folders, also where the user chose a place outside the workspace."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return
    if path.is_file():
        os.chmod(path, FILE_MODE)
        return
    os.chmod(path, DIR_MODE)
    for folder, dirs, files in os.walk(path):
        for name in dirs:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), DIR_MODE)
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), FILE_MODE)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def load_settings() -> dict:
    from engine.config import ConfigError, read_yaml

    try:
        data = read_yaml(settings_path().read_text(encoding="utf-8"), settings_path())
    except (OSError, UnicodeDecodeError, ConfigError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(settings: dict) -> None:
    write_yaml_atomic(settings_path(), settings)


def resources_dir() -> Path:
    """Lathe's bundled resources (sample datasets, presets, model list)."""
    return Path(__file__).resolve().parents[1] / "resources"


def shared_stories_model() -> Path | None:
    """The stories260K test model in ../shared beside the repo, when present (dev machines, CI)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
    return path if (path / "model.safetensors").exists() else None
