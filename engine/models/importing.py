"""Adding a model to the library by whatever the user points at (a folder, a GGUF file, the name of
a model LM Studio or Ollama already holds). Above library.py and gguf_import.py, so neither imports
the other's caller."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelError
from engine.models.gguf_import import import_gguf
from engine.models.gguf_reader import is_gguf
from engine.models.library import (
    LibraryEntry,
    _cached_models,
    _found_models,
    import_model,
)


def import_any(ref: str | Path, name: str | None = None, *, progress=None) -> LibraryEntry:
    """Add a model by what `ref` is: a model folder (imported in place), a GGUF file (converted
    into the library), or the listed name of an LM Studio or Ollama model."""
    path = Path(str(ref)).expanduser()
    if path.is_dir():
        return import_model(path, name)
    if path.is_file():
        if not is_gguf(path):
            raise ModelError(
                f"{path} is neither a model folder nor a GGUF file.",
                "Choose the folder that contains config.json, or a .gguf file.",
            )
        return import_gguf(path, name, progress=progress)
    for entry in _found_models() + _cached_models():
        if entry.name == str(ref):
            if entry.format == "gguf":
                return import_gguf(
                    entry.path,
                    name or entry.name.replace("/", "-").replace(":", "-"),
                    progress=progress,
                    source_label=f"{entry.kind} {entry.name}",
                )
            return import_model(entry.path, name)
    raise ModelError(
        f"'{ref}' is not a folder, a GGUF file, or a model in LM Studio, Ollama or the Hugging "
        "Face cache.",
        "Give a path, or a name from `models list`.",
    )
