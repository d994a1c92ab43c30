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
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:  # POSIX file locks; elsewhere a lock is always granted (Lathe targets macOS and Linux)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

import yaml

FILE_MODE = 0o600
DIR_MODE = 0o700


class WorkspaceError(ValueError):
    """A name or path that would escape the workspace, or a workspace that cannot be used."""


def home() -> Path:
    """The workspace folder (created on first use)."""
    root = _home_path()
    ensure_dir(root)
    return root


def _home_path() -> Path:
    env = os.environ.get("LATHE_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Lathe"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lathe"


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


def within(root: Path, path: Path) -> Path:
    """`path` when it stays inside `root` once `..` and links are resolved; WorkspaceError otherwise.

    Every write whose path is joined from outside input (a revision, a file name from a server)
    goes through this, so no input can make Lathe write outside the folder it means to.
    """
    root_r = Path(root).resolve()
    resolved = (root_r / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if resolved != root_r and not resolved.is_relative_to(root_r):
        raise WorkspaceError(f"{path} is outside {root}; Lathe writes only inside it.")
    return Path(path)


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


# ---------------------------------------------------------------------------------------------
# OS file locks and the workspace's temporary folder


class FileLock:
    """An exclusive OS lock (`flock`) on a file: held until `release()` or until the process ends,
    so a crash or a kill can never leave it held. The holder's pid is written into the file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self, timeout: float = 0.0) -> bool:
        """Take the lock, waiting up to `timeout` seconds; False when another process holds it."""
        if self._fh is not None:
            return True
        ensure_dir(self.path.parent)
        fh = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE), "r+")
        deadline = time.monotonic() + timeout
        while fcntl is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.close()
                    return False
                time.sleep(0.02)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()  # closing the file releases the lock

    def holder(self) -> int | None:
        """The pid written by the process that holds (or last held) the lock."""
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None


def is_locked(path: Path) -> bool:
    """Whether a process holds the lock on `path` (probed without waiting; False if absent)."""
    if fcntl is None or not Path(path).exists():
        return False
    try:
        fh = open(path, "rb")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


TMP_DIR = "tmp"
SCRATCH_PREFIX = "lathe-"
LOCK_FILE = ".lathe-lock"
# A temporary folder is tidied only once it is this old and no live process holds its lock, so a
# folder another Lathe process has just made (and not yet locked) is never taken from it.
TIDY_MIN_AGE_S = 60.0
_OLD_IMPORT_TMP = re.compile(r"^\.\d{8}-\d{6}-.+-[0-9a-f]{4}\.tmp$")  # datasets/.<id>.tmp


def temp_dir() -> Path:
    """`$LATHE_HOME/tmp`: where Lathe unpacks zips and builds imports (never the system temp)."""
    return ensure_dir(home() / TMP_DIR)


@contextmanager
def scratch(purpose: str) -> Iterator[Path]:
    """A private folder under `temp_dir()`, locked while in use and removed afterwards. One that a
    killed process leaves behind is removed by `tidy()` at the next start."""
    folder = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{safe_name(purpose)}-", dir=temp_dir()))
    os.chmod(folder, DIR_MODE)
    lock = FileLock(folder / LOCK_FILE)
    lock.acquire()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.release()


def tidy() -> list[Path]:
    """Remove what killed Lathe processes left behind; returns what was removed.

    Only Lathe's own temporary names are touched: `tmp/lathe-*` folders (from `scratch`) and
    `datasets/.<id>.tmp` folders of older versions' imports, each only when no process holds its
    lock and it is older than a minute. Nothing else in the workspace is ever looked at.
    """
    removed: list[Path] = []
    root = _home_path()
    if not root.is_dir():
        return removed
    candidates = []
    if (root / TMP_DIR).is_dir():
        candidates += [p for p in (root / TMP_DIR).iterdir() if p.name.startswith(SCRATCH_PREFIX)]
    if (root / "datasets").is_dir():
        candidates += [p for p in (root / "datasets").iterdir() if _OLD_IMPORT_TMP.match(p.name)]
    now = time.time()
    for p in candidates:
        try:
            if not p.is_dir() or p.is_symlink() or now - p.lstat().st_mtime < TIDY_MIN_AGE_S:
                continue
        except OSError:
            continue
        lock = FileLock(p / LOCK_FILE)
        if (p / LOCK_FILE).exists() and not lock.acquire():
            continue  # a live process is using it
        try:
            shutil.rmtree(p, ignore_errors=True)
        finally:
            lock.release()
        if not p.exists():
            removed.append(p)
    return removed


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
    """Lathe's bundled resources (sample datasets, presets, model list).

    In a source checkout (and in the Mac app bundle) `resources/` sits beside `engine/`; an installed
    wheel carries the same files as the data-only package `lathe_resources` (see setup.py).
    """
    beside = Path(__file__).resolve().parents[1] / "resources"
    if beside.is_dir():
        return beside
    import importlib.util

    spec = importlib.util.find_spec("lathe_resources")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return beside


def shared_stories_model() -> Path | None:
    """The stories260K test model in ../shared beside the repo, when present (dev machines, CI)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
    return path if (path / "model.safetensors").exists() else None
