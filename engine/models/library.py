"""The model library: downloaded, imported and converted models in one list.

Where each kind lives, and what deleting it does:
- downloaded: in the Hugging Face cache (shared with other tools, never copied). Lathe records the
  download in `workspace/models/library.json`. Delete removes the cached revision only when Lathe
  fetched it (it was not complete in the cache before); a model another tool had already cached is
  only dropped from the list.
- imported: a folder of the user's, referenced in place (no copy: models are gigabytes, and the
  folder stays the user's). Delete only forgets it; the folder is never modified or removed.
- converted: written by Lathe (quantize/dequantize) into `workspace/models/<name>/` with a
  `lathe.json` describing its source. Delete removes that folder.
Models other tools put in the Hugging Face cache are listed too (kind "cached") so they can be
picked, and so are LM Studio's and Ollama's models (kinds "lmstudio", "ollama"; local_stores.py):
a GGUF file among them (format "gguf") is trained after `import_any` converts it (gguf_import.py).
Lathe never deletes any of these.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from engine import workspace
from engine.errors import ModelError
from engine.models import hub
from engine.models.info import check_weights, folder_size, validate_model_dir

REGISTRY = "library.json"
META = "lathe.json"


@dataclass
class LibraryEntry:
    """One model in the library."""

    name: str
    kind: str  # downloaded | imported | converted | cached | lmstudio | ollama
    path: str
    size_bytes: int
    repo_id: str | None = None
    source: str | None = None  # what a converted model was made from
    added: float | None = None
    deletable: bool = True  # whether delete removes files (False: it only forgets the entry)
    available: bool = True  # False when an imported folder has gone missing
    format: str = "mlx"  # "gguf": a GGUF file to import (models import NAME) before training

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Registry file


def _registry_path() -> Path:
    return workspace.models_dir() / REGISTRY


@contextmanager
def _locked_registry() -> Iterator[dict]:
    """Read-modify-write of library.json under a file lock (the GUI and a CLI may both write)."""
    lock_path = workspace.models_dir() / ".library.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = workspace.read_json(_registry_path(), default=None) or {"version": 1, "models": {}}
        yield data
        workspace.write_json_atomic(_registry_path(), data)


def _records() -> dict:
    data = workspace.read_json(_registry_path(), default=None) or {}
    return data.get("models", {})


def _unique_name(base: str, taken) -> str:
    name = workspace.safe_name(base, "model")
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}-{n}", n + 1
    return candidate


# ---------------------------------------------------------------------------------------------
# Adding models


def import_model(path: str | Path, name: str | None = None) -> LibraryEntry:
    """Validate a local model folder (HF or MLX layout) and add it to the library, in place.

    Raises ModelError with the reason when mlx-lm cannot train it (see `validate_model_dir`).
    The folder is only read, never changed; importing the same folder twice returns the entry.
    """
    folder = Path(path).expanduser().resolve()
    validate_model_dir(folder)
    check_weights(folder)  # a truncated or lying file is refused now, not mid-training
    with _locked_registry() as data:
        models = data["models"]
        for key, rec in models.items():
            if rec.get("kind") == "imported" and rec.get("path") == str(folder):
                return _entry(key, rec)
        key = _unique_name(name or folder.name, set(models) | _converted_names())
        models[key] = {"kind": "imported", "path": str(folder), "added": time.time()}
        rec = models[key]
    return _entry(key, rec)


def record_download(result: hub.DownloadResult, owned: bool) -> LibraryEntry:
    """Add (or refresh) a downloaded model; `owned` when Lathe fetched files for it."""
    with _locked_registry() as data:
        rec = data["models"].get(result.repo_id, {})
        rec.update(
            {
                "kind": "downloaded",
                "repo_id": result.repo_id,
                "revision": result.revision,
                "commit": result.commit,
                "path": result.path,
                "owned": bool(rec.get("owned")) or owned,
                "added": rec.get("added") or time.time(),
            }
        )
        data["models"][result.repo_id] = rec
    return _entry(result.repo_id, rec)


def download(repo_id: str, **kwargs) -> LibraryEntry:
    """`hub.download_model` (same keyword arguments: progress, cancel, revision, token) and add
    the result to the library."""
    result = hub.download_model(repo_id, **kwargs)
    return record_download(result, owned=not result.already_cached)


def converted_dir(name: str) -> Path:
    """A new folder for a converted model inside workspace/models/."""
    return workspace.inside(workspace.models_dir(), name)


def _converted_names() -> set[str]:
    root = workspace.models_dir()
    return {p.name for p in root.iterdir() if (p / META).exists()}


def new_converted_name(base: str) -> str:
    return _unique_name(base, set(_records()) | _converted_names())


# ---------------------------------------------------------------------------------------------
# Listing


def _entry(key: str, rec: dict) -> LibraryEntry:
    path = Path(rec.get("path", ""))
    kind = rec.get("kind", "imported")
    available = path.is_dir() and (path / "config.json").exists()
    return LibraryEntry(
        name=key,
        kind=kind,
        path=str(path),
        size_bytes=folder_size(path) if available else 0,
        repo_id=rec.get("repo_id"),
        source=rec.get("source"),
        added=rec.get("added"),
        deletable=kind == "converted" or (kind == "downloaded" and bool(rec.get("owned"))),
        available=available,
    )


def converted_entry(folder: Path) -> LibraryEntry:
    """The library entry of a converted model folder in workspace/models/."""
    meta = workspace.read_json(folder / META, default={}) or {}
    return LibraryEntry(
        name=folder.name,
        kind="converted",
        path=str(folder),
        size_bytes=folder_size(folder),
        source=meta.get("source"),
        added=meta.get("created"),
    )


def list_models(include_cache: bool = True) -> list[LibraryEntry]:
    """Every model Lathe knows: downloaded, imported, converted, and (optionally) models other
    tools left in the Hugging Face cache. Sorted by kind, then name."""
    entries = [_entry(k, r) for k, r in _records().items()]
    root = workspace.models_dir()
    for folder in sorted(p for p in root.iterdir() if (p / META).exists()):
        entries.append(converted_entry(folder))
    if include_cache:
        known = {e.repo_id for e in entries if e.repo_id}
        entries.extend(e for e in _cached_models() if e.repo_id not in known)
        entries.extend(_found_models())
    order = {
        "downloaded": 0,
        "converted": 1,
        "imported": 2,
        "cached": 3,
        "lmstudio": 4,
        "ollama": 5,
    }
    return sorted(entries, key=lambda e: (order.get(e.kind, 9), e.name.lower()))


def _cached_models() -> list[LibraryEntry]:
    cache = hub.hub_cache_dir()
    if not cache.is_dir():
        return []
    out = []
    for storage in sorted(cache.glob("models--*")):
        repo_id = storage.name[len("models--") :].replace("--", "/", 1)
        snap = hub.cached_snapshot(repo_id, "main", cache)
        if snap is None:
            snaps = (
                sorted((storage / "snapshots").glob("*/config.json"))
                if (storage / "snapshots").is_dir()
                else []
            )
            snap = snaps[-1].parent if snaps else None
        if snap is None:
            out.extend(_cached_gguf_files(repo_id, storage))
            continue
        if not any(snap.glob("*.safetensors")):
            continue
        out.append(
            LibraryEntry(
                name=repo_id,
                kind="cached",
                path=str(snap),
                size_bytes=folder_size(snap),
                repo_id=repo_id,
                deletable=False,
            )
        )
    return out


def _found_models() -> list[LibraryEntry]:
    """LM Studio's and Ollama's models, listed in place (local_stores.py)."""
    from engine.models.local_stores import lmstudio_models, ollama_models

    out = []
    for name, path, fmt in lmstudio_models():
        size = folder_size(path) if fmt == "mlx" else path.stat().st_size
        out.append(LibraryEntry(name, "lmstudio", str(path), size, deletable=False, format=fmt))
    for name, blob in ollama_models():
        out.append(
            LibraryEntry(
                name, "ollama", str(blob), blob.stat().st_size, deletable=False, format="gguf"
            )
        )
    return out


def _cached_gguf_files(repo_id: str, storage: Path) -> list[LibraryEntry]:
    """GGUF files of a Hub repo in the cache (a "-GGUF" repo has no config.json): one entry per
    file, named `repo_id/file.gguf`, to import before training."""
    ref = storage / "refs" / "main"
    snaps = [storage / "snapshots" / ref.read_text().strip()] if ref.is_file() else []
    snaps += sorted((storage / "snapshots").glob("*")) if (storage / "snapshots").is_dir() else []
    for snap in snaps:
        files = [f for f in sorted(snap.glob("*.gguf")) if not f.name.lower().startswith("mmproj")]
        if files:
            return [
                LibraryEntry(
                    f"{repo_id}/{f.name}",
                    "cached",
                    str(f),
                    f.stat().st_size,
                    repo_id=repo_id,
                    deletable=False,
                    format="gguf",
                )
                for f in files
                if f.exists()
            ]
    return []


def get(name: str) -> LibraryEntry:
    """The library entry called `name` (ModelError when there is none)."""
    for entry in list_models():
        if entry.name == name:
            return entry
    raise ModelError(f"There is no model called '{name}' in the library.", "See `models list`.")


def file_not_folder(path: Path) -> ModelError:
    """The error for a model path that names a file (a .safetensors, a .gguf, config.json)."""
    return ModelError(
        f"{path} is a file, not a model folder.",
        f"Give the folder that holds config.json and the .safetensors weights (perhaps "
        f"{path.parent}).",
    )


def resolve(ref: str | Path) -> Path:
    """A model folder from a path, a library name or a cached Hugging Face repo id."""
    path = Path(str(ref)).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix.lower() == ".gguf":
        raise ModelError(
            f"{path.name} is a GGUF file; Lathe trains MLX folders.",
            f"Import it first: `lathe-engine models import {path}` (or drop it on the window).",
        )
    if path.is_file():
        raise file_not_folder(path)
    for entry in list_models():
        if entry.name == str(ref) or entry.repo_id == str(ref):
            if not entry.available:
                raise ModelError(f"The folder of '{ref}' ({entry.path}) is missing.")
            if entry.format == "gguf":
                raise ModelError(
                    f"'{ref}' is a GGUF file from {entry.kind}; Lathe trains MLX folders.",
                    f"Import it first: `lathe-engine models import {ref}`; the copy Lathe makes "
                    "is the model you train.",
                )
            return Path(entry.path)
    raise ModelError(
        f"'{ref}' is neither a model folder nor a model in the library.",
        "Give a folder path, or download/import the model first (`models list` shows the library).",
    )


# ---------------------------------------------------------------------------------------------
# Deleting


def delete(name: str) -> dict:
    """Remove `name` from the library, deleting only files Lathe created.

    Returns {"name", "kind", "removed_files": bool, "freed_bytes"}.
    """
    entry = get(name)
    freed = 0
    removed = False
    if entry.kind == "cached":
        raise ModelError(
            f"Lathe did not download {name}; it belongs to the Hugging Face cache.",
            "Remove it with `hf cache delete` if you no longer need it.",
        )
    if entry.kind in ("lmstudio", "ollama"):
        app = "LM Studio" if entry.kind == "lmstudio" else "Ollama"
        raise ModelError(
            f"{name} belongs to {app}; Lathe only lists it and never deletes it.",
            f"Remove it in {app} if you no longer need it.",
        )
    if entry.kind == "converted":
        folder = Path(entry.path)
        if (
            folder.parent.resolve() != workspace.models_dir().resolve()
            or not (folder / META).exists()
        ):
            raise ModelError(f"{folder} is not a folder Lathe created; it was left alone.")
        freed = folder_size(folder)
        shutil.rmtree(folder)
        removed = True
    elif entry.kind == "downloaded" and entry.deletable:
        freed, removed = _delete_cached_revision(entry)
    with _locked_registry() as data:
        data["models"].pop(name, None)
    return {"name": name, "kind": entry.kind, "removed_files": removed, "freed_bytes": freed}


def _delete_cached_revision(entry: LibraryEntry) -> tuple[int, bool]:
    from huggingface_hub import scan_cache_dir

    rec = _records().get(entry.name, {})
    commit = rec.get("commit")
    cache = hub.hub_cache_dir()
    if not commit or not cache.is_dir():
        return 0, False
    info = scan_cache_dir(cache)
    strategy = info.delete_revisions(commit)
    freed = int(strategy.expected_freed_size)
    strategy.execute()
    storage = hub.repo_storage_folder(entry.repo_id or entry.name, cache)
    if storage.is_dir():
        for partial in (storage / "blobs").glob("*" + hub.PARTIAL_SUFFIX):
            partial.unlink(missing_ok=True)
        if not any((storage / "snapshots").glob("*")) if (storage / "snapshots").exists() else True:
            shutil.rmtree(storage, ignore_errors=True)
    return freed, True


def write_meta(folder: Path, meta: dict) -> None:
    """Mark `folder` as created by Lathe (a converted model) with where it came from."""
    workspace.write_text_atomic(folder / META, json.dumps(meta, indent=2) + "\n")
