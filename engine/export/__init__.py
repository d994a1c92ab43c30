"""Export a tuned model: fuse into an MLX folder, GGUF, an Ollama folder, or upload to the Hub.

Every export is a function taking `progress=` and `cancel=` (see `job.py`); wrap one in an
`ExportJob` to run it on a worker thread and cancel it from the GUI:

    job = ExportJob(fuse, "RUN_ID:200", dequantize=True)
    result = job.run(progress=on_progress)     # worker thread; result.to_dict() for display
    job.cancel()                                # any thread; the export raises ExportCancelled

Heavy modules (MLX, mlx-lm, huggingface_hub) load only when an export runs.
"""

from engine.export.card import model_card, run_facts
from engine.export.fuse import FuseResult, RoundTrip, fuse, round_trip
from engine.export.gguf import SUPPORTED_ARCHITECTURES, GgufResult, export_gguf, unsupported_reason
from engine.export.hub import UploadResult, hub_token, upload
from engine.export.job import ExportCancelled, ExportError, ExportJob, Progress
from engine.export.ollama import OllamaResult, detect_style, export_ollama, modelfile
from engine.export.source import AdapterSource, list_checkpoints, resolve_adapter

__all__ = [
    "AdapterSource",
    "ExportCancelled",
    "ExportError",
    "ExportJob",
    "FuseResult",
    "GgufResult",
    "OllamaResult",
    "Progress",
    "RoundTrip",
    "SUPPORTED_ARCHITECTURES",
    "UploadResult",
    "detect_style",
    "export_gguf",
    "export_ollama",
    "fuse",
    "hub_token",
    "list_checkpoints",
    "model_card",
    "modelfile",
    "resolve_adapter",
    "round_trip",
    "run_facts",
    "unsupported_reason",
    "upload",
]
