"""Where exports are written, and the one rule about replacing: only what Lathe wrote.

An export folder (fuse, Ollama) is built under a temporary name beside its destination and renamed
into place, with `.lathe-export.json` listing every file Lathe wrote into it. Overwriting
(`--force`) replaces a folder only when that manifest is there and the folder holds nothing else:
a folder Lathe did not create (your Desktop, a project folder) is refused whatever the flag, and
so is a Lathe export you have since added files to. A single exported file (GGUF) is replaced only
when it carries Lathe's mark in its own metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.export.job import ExportError
from engine.export.source import resolve_adapter

KINDS = ("fuse", "gguf", "ollama")
MANIFEST = ".lathe-export.json"
MADE_BY = "Lathe"


def written_files(folder: Path) -> set[str] | None:
    """The relative paths Lathe's manifest lists in `folder`, or None when it has none."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("made_by") != MADE_BY:
        return None
    files = data.get("files")
    return {str(f) for f in files} if isinstance(files, list) else None


def _entries(folder: Path) -> list[str]:
    """Every file and link under `folder` (links are not followed), relative, POSIX-style."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        for name in filenames + [d for d in dirnames if (base / d).is_symlink()]:
            found.append((base / name).relative_to(folder).as_posix())
    return found


def check_folder(out: Path, overwrite: bool) -> None:
    """Refuse a destination folder Lathe may not write: a file, a folder Lathe did not create (or
    one with files Lathe did not write), or an earlier export without `overwrite`. A missing or
    empty folder is fine."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportError(
            f"{out} exists and is not a folder.", hint="Choose another output folder."
        )
    if not out.is_dir() or not any(out.iterdir()):
        return
    ours = written_files(out)
    if ours is None:
        raise ExportError(
            f"{out} already exists and Lathe did not create it, so Lathe will not replace it "
            "(not even with --force).",
            hint="Choose a folder that does not exist yet; Lathe creates it.",
        )
    if not overwrite:
        raise ExportError(
            f"{out} already exists.", hint="Choose another folder or allow overwriting (--force)."
        )
    others = sorted(set(_entries(out)) - ours - {MANIFEST})
    if others:
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
        raise ExportError(
            f"{out} holds files Lathe did not write ({shown}), so Lathe will not replace it.",
            hint="Move those files out of the folder, or choose another folder.",
        )


def temp_folder(out: Path) -> Path:
    """A new, empty folder beside `out` to build the export in (same disk, so renaming is atomic)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def write_manifest(folder: Path, kind: str) -> None:
    """List every file in `folder` as written by Lathe (the last file written into an export)."""
    from engine.workspace import write_json_atomic

    files = sorted(set(_entries(folder)) - {MANIFEST})
    write_json_atomic(Path(folder) / MANIFEST, {"made_by": MADE_BY, "kind": kind, "files": files})


def add_to_manifest(folder: Path, names: list[str]) -> None:
    """Record files Lathe has since written into one of its export folders (e.g. a model card)."""
    from engine.workspace import write_json_atomic

    listed = written_files(folder)
    if listed is None:
        return  # not a folder Lathe made: nothing to record in
    data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    data["files"] = sorted(listed | set(names))
    write_json_atomic(Path(folder) / MANIFEST, data)


def replace_folder(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished export `tmp` to `out`, replacing an earlier Lathe export there (checked
    again now: the folder may have changed while the export ran)."""
    tmp, out = Path(tmp), Path(out)
    check_folder(out, overwrite)
    if not out.exists():
        tmp.rename(out)
        return
    if not any(out.iterdir()):
        out.rmdir()  # an empty folder only; refuses if something appeared meanwhile
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "export")
    try:
        tmp.rename(out)
    except BaseException:
        os.replace(old / "export", out)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)  # held only files Lathe wrote (checked above)


# ---------------------------------------------------------------------------------------------
# Single files (GGUF)

GGUF_MARK = "lathe.made_by"


def check_file(out: Path, overwrite: bool) -> None:
    """Refuse to replace a file Lathe did not write: `out` may be replaced only with `overwrite` and
    only when it is a GGUF file carrying Lathe's mark."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_file():
        raise ExportError(f"{out} exists and is not a file.", hint="Choose another file name.")
    if not _lathe_gguf(out):
        raise ExportError(
            f"{out} already exists and Lathe did not write it, so Lathe will not replace it "
            "(not even with --force).",
            hint="Choose another file name.",
        )
    if not overwrite:
        raise ExportError(
            f"{out} already exists.",
            hint="Choose another file name or allow overwriting (--force).",
        )


def _lathe_gguf(path: Path) -> bool:
    from engine.models.gguf_reader import read_gguf

    try:
        return read_gguf(path).metadata.get(GGUF_MARK) == MADE_BY
    except Exception:  # noqa: BLE001 - anything unreadable is not a file Lathe wrote
        return False


@dataclass
class ExportTarget:
    """Where the app's Export dialog will write, and what is there already."""

    path: Path  # the folder (fuse, ollama) or file (gguf) the export writes
    exists: bool  # something is there already
    replaceable: bool  # ...and Lathe wrote all of it, so Replace may overwrite it


def default_folder(spec: str | Path) -> Path:
    """The folder exports of `spec` (RUN[:STEP] or an adapter folder) go into by default."""
    source = resolve_adapter(str(spec))
    return source.run_dir / "exports" if source.run_dir else source.adapter_path.parent


def export_target(kind: str, spec: str | Path, folder: str | Path | None = None) -> ExportTarget:
    """The path an export of `kind` writes inside `folder` (default: the run's exports folder)."""
    if kind not in KINDS:
        raise ValueError(kind)
    source = resolve_adapter(str(spec))
    base = Path(folder).expanduser() if folder else default_folder(spec)
    name = {
        "fuse": f"{source.label}-fused",
        "gguf": f"{source.label}-f16.gguf",
        "ollama": f"{source.label}-ollama",
    }[kind]
    path = base / name
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    return ExportTarget(path, exists, exists and written_by_lathe(path, kind))


def written_by_lathe(path: Path, kind: str) -> bool:
    """Whether `path` holds an export of `kind` that Lathe wrote and nothing else, by the same rule
    `check_folder` / `check_file` apply (the manifest; the GGUF mark)."""
    path = Path(path)
    if kind == "gguf":
        return path.is_file() and not path.is_symlink() and _lathe_gguf(path)
    if path.is_symlink() or not path.is_dir():
        return False
    ours = written_files(path)
    return ours is not None and not (set(_entries(path)) - ours - {MANIFEST})


def check_replace(kind: str, path: str | Path) -> None:
    """Raise ExportError unless an export of `kind` may be written at `path` in place of what is
    there: nothing, or an earlier export that Lathe wrote (never the user's own files)."""
    if not str(path):
        raise ExportError("Replacing needs --out: the export to replace.", hint="Pass --out PATH.")
    path = Path(path).expanduser()
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not written_by_lathe(path, kind):
        raise ExportError(
            f"{path} already exists and was not written by Lathe, so it is left alone.",
            hint="Choose another folder.",
        )
