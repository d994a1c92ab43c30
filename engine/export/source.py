"""What to export: a run (latest adapter or a checkpoint), or an adapter folder, and its base model.

`RUN[:STEP]` names a run (the grammar and its fallback rule: engine.runspec). A bare adapter folder
(adapters.safetensors + adapter_config.json) works too: its base model comes from
`adapter_config.json`'s `model` key (mlx-lm writes it) or from `base_model=`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from engine.export.job import ExportError
from engine.runs import adapter_steps, base_model_of
from engine.runspec import locate_adapter


@dataclass
class AdapterSource:
    adapter_path: Path
    base_model: str  # a local folder or a Hugging Face repo id, as the run recorded it
    run_dir: Path | None = None
    step: int | None = None
    chat_template: str | None = None  # the template the run trained with (chat_template.jinja)
    adapter_config: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short name for output folders, e.g. `bank-support-step-0000200`."""
        base = self.run_dir.name if self.run_dir else self.adapter_path.name
        return f"{base}-step-{self.step:07d}" if self.step is not None else base


def resolve_adapter(spec: str | Path, base_model: str | None = None) -> AdapterSource:
    """Turn `RUN[:STEP]` or an adapter folder into an `AdapterSource` (the grammar and the fallback
    rule: engine.runspec); raise ExportError for what names no adapter or no base model."""
    ref = locate_adapter(spec, ExportError)
    adapter_config = _read_json(ref.path / "adapter_config.json")
    home = ref.run_dir if ref.run_dir is not None else ref.path
    template_file = home / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
    recorded = base_model_of(ref.run_dir) if ref.run_dir is not None else None
    base = base_model or recorded or adapter_config.get("model")
    if not base:
        what = (
            f"Run {ref.run_dir.name}" if ref.run_dir is not None else f"The adapter in {ref.path}"
        )
        raise ExportError(
            f"{what} does not say which base model it trained.",
            hint="Pass the base model explicitly (--model).",
        )
    return AdapterSource(ref.path, str(base), ref.run_dir, ref.step, template, adapter_config)


def resolve_base_model(base: str) -> Path:
    """A local folder for `base`: the folder itself, or the Hugging Face cache (never downloads)."""
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ExportError(f"The base model folder {path} has no config.json.")
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not available offline"
        raise ExportError(
            f"The base model {base} is not on this Mac.",
            hint="Download it on the Models page (or with `python -m engine models download`) first.",
        ) from None


def list_checkpoints(run_dir: Path) -> list[int]:
    """Steps whose checkpoint holds a complete adapter (engine.runs.adapter_steps)."""
    return adapter_steps(run_dir)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} cannot be read: {exc}.") from None
    return data if isinstance(data, dict) else {}
