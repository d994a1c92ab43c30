"""The model library: download, import, quantize, inspect, and know before training whether it fits.

Public API (the GUI calls these on a worker thread; nothing here imports Qt):
- `list_models()`, `import_model(path)`, `download(repo_id, progress=, cancel=)`, `delete(name)`,
  `resolve(ref)`: the library (library.py, hub.py), which also lists LM Studio's and Ollama's
  models (local_stores.py)
- `import_any(ref)`: a folder, a GGUF file or a listed LM Studio/Ollama name; `import_gguf(path)`
  converts a GGUF into a library model (gguf_import.py, gguf_tensors.py)
- `quantize(model, bits, group_size, progress=)`, `dequantize(model, progress=)` (convert.py)
- `inspect_model(path)`, `validate_model_dir(path)` (info.py: no MLX import)
- `estimate(model, run_config)` (fit.py: no MLX import), `measure_training(...)` (measure.py)
- `recommended_models()` (recommended.py: resources/models.yaml)

Submodules are imported on first use so `import engine.models` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "list_models": "library",
    "import_model": "library",
    "import_any": "importing",
    "import_gguf": "gguf_import",
    "resolve_model": "loading",
    "load_model": "loading",
    "download": "library",
    "delete": "library",
    "resolve": "library",
    "LibraryEntry": "library",
    "download_model": "hub",
    "DownloadProgress": "hub",
    "DownloadCancelled": "hub",
    "is_offline": "hub",
    "quantize": "convert",
    "dequantize": "convert",
    "ConvertProgress": "convert",
    "inspect_model": "info",
    "validate_model_dir": "info",
    "ModelInfo": "info",
    "estimate": "fit",
    "FitReport": "fit",
    "memory_budget": "fit",
    "measure_training": "measure",
    "recommended_models": "recommended",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"engine.models.{module}"), name)
    globals()[name] = value
    return value
