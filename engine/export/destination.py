"""Where an export of a run goes, and whether what is already there may be replaced.

The app's Export dialog lets the user choose the folder an export is written into and, when an
export of the same kind is already there, offers to replace it. Replacing is allowed only for what
Lathe wrote: a fused folder with Lathe's model card, an Ollama folder holding only Lathe's two
files, a GGUF file. Anything else at that path is the user's and is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.export.job import ExportError
from engine.export.source import resolve_adapter

KINDS = ("fuse", "gguf", "ollama")
OLLAMA_FILES = {"model.gguf", "Modelfile"}


@dataclass
class ExportTarget:
    path: Path  # the folder (fuse, ollama) or file (gguf) the export writes
    exists: bool  # something is there already
    replaceable: bool  # ...and Lathe wrote it, so Replace may overwrite it


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
    """Whether `path` holds an export of `kind` that Lathe wrote (and so may be replaced)."""
    path = Path(path)
    if kind == "gguf":
        try:
            with open(path, "rb") as fh:
                return path.is_file() and fh.read(4) == b"GGUF"
        except OSError:
            return False
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    if kind == "ollama":
        return bool(names) and names <= OLLAMA_FILES
    card = path / "README.md"
    try:
        head = card.read_text(encoding="utf-8")[:2000]
    except OSError:
        return False
    return "config.json" in names and "- lathe" in head


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
