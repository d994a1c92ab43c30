"""What to export: a run (latest adapter or a checkpoint), or an adapter folder, and its base model.

`RUN[:STEP]` names a run by id (inside the workspace's runs/) or by path; STEP picks
`checkpoints/<7-digit step>/`. A bare adapter folder (adapters.safetensors + adapter_config.json)
works too: its base model comes from `adapter_config.json`'s `model` key (mlx-lm writes it) or from
`base_model=`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine import workspace
from engine.export.job import ExportError
from engine.runs import adapter_steps, base_model_of

ADAPTER_FILES = ("adapters.safetensors", "adapter_config.json")


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


def is_adapter_folder(path: Path) -> bool:
    return all((path / name).is_file() for name in ADAPTER_FILES)


def split_spec(spec: str) -> tuple[str, int | None]:
    """`run:200` -> ("run", 200); a path with a colon that is not `:digits` stays whole."""
    m = re.fullmatch(r"(.+):(\d+)", str(spec))
    if m and not Path(spec).exists():
        return m.group(1), int(m.group(2))
    return str(spec), None


def find_run_dir(name: str) -> Path | None:
    path = Path(name).expanduser()
    if path.is_dir() and ((path / "config.yaml").is_file() or (path / "adapters").is_dir()):
        return path.resolve()
    if "/" not in name and name not in ("", ".", ".."):
        candidate = workspace.runs_dir() / name
        if candidate.is_dir():
            return candidate.resolve()
    return None


def resolve_adapter(spec: str | Path, base_model: str | None = None) -> AdapterSource:
    """Turn `RUN[:STEP]` or an adapter folder into an `AdapterSource`; raise ExportError if neither."""
    name, step = split_spec(str(spec))
    run_dir = find_run_dir(name)
    if run_dir is not None:
        if step is None:
            adapter = run_dir / "adapters"
            if not is_adapter_folder(adapter):
                raise ExportError(
                    f"Run {run_dir.name} has no finished adapter yet.",
                    hint=f"Pick a checkpoint instead ({_checkpoint_hint(run_dir)}), or let the run finish.",
                )
        else:
            adapter = run_dir / "checkpoints" / f"{step:07d}"
            if not is_adapter_folder(adapter):
                raise ExportError(
                    f"Run {run_dir.name} has no checkpoint at step {step}.",
                    hint=f"Available: {_checkpoint_hint(run_dir)}.",
                )
        template_file = run_dir / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
        adapter_config = _read_json(adapter / "adapter_config.json")
        base = base_model or base_model_of(run_dir) or adapter_config.get("model")
        if not base:
            raise ExportError(
                f"Run {run_dir.name} does not say which base model it trained.",
                hint="Pass the base model explicitly (--model).",
            )
        return AdapterSource(adapter, str(base), run_dir, step, template, adapter_config)

    path = Path(name).expanduser()
    if path.is_dir() and is_adapter_folder(path):
        if step is not None:
            raise ExportError(f"{path} is an adapter folder, so ':{step}' means nothing here.")
        adapter_config = _read_json(path / "adapter_config.json")
        base = base_model or adapter_config.get("model")
        if not base:
            raise ExportError(
                f"The adapter in {path} does not name its base model.",
                hint="Pass the base model explicitly (--model).",
            )
        template_file = path / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
        return AdapterSource(path.resolve(), str(base), None, None, template, adapter_config)

    raise ExportError(
        f"'{spec}' is neither a run nor an adapter folder.",
        hint="Give a run id (a folder in the workspace's runs/), a run folder, RUN:STEP for a "
        "checkpoint, or a folder with adapters.safetensors and adapter_config.json.",
    )


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


def _checkpoint_hint(run_dir: Path) -> str:
    steps = list_checkpoints(run_dir)
    if not steps:
        return "this run has no checkpoints"
    return ", ".join(f"{run_dir.name}:{s}" for s in steps[-5:])


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} cannot be read: {exc}.") from None
    return data if isinstance(data, dict) else {}
