"""Run folders: `workspace/runs/<id>/` with config, status, events, adapters and checkpoints."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine import checkpoint as ckpt
from engine.config import RunConfig
from engine.errors import LatheError
from engine.events import read_log
from engine.workspace import (
    ensure_dir,
    new_id,
    read_json,
    runs_dir,
    safe_name,
    write_json_atomic,
    write_text_atomic,
)

STATES = ("created", "running", "completed", "stopped", "failed", "interrupted")
FINAL_STATES = ("completed", "stopped", "failed", "interrupted")


class RunError(LatheError):
    kind = "run"


@dataclass
class RunInfo:
    id: str
    path: Path
    config: RunConfig
    status: dict
    checkpoints: list[int] = field(default_factory=list)

    @property
    def state(self) -> str:
        return self.status.get("state", "created")

    @property
    def adapter_path(self) -> Path | None:
        p = self.path / "adapters"
        return p if (p / ckpt.ADAPTER_FILE).exists() else None

    def events(self) -> list[dict]:
        return read_log(self.path / "events.jsonl")

    @property
    def best_val_loss(self) -> float | None:
        return self.status.get("best_val_loss")


def create_run(config: RunConfig, run_id: str | None = None) -> Path:
    """A new run folder with `config.yaml` and a `created` status."""
    name = config.name or Path(config.data.path or "run").stem or "run"
    run_id = run_id or new_id(name)
    path = runs_dir() / safe_name(run_id)
    if path.exists():
        raise RunError(f"Run {run_id} already exists.", "Choose another name.")
    ensure_dir(path)
    write_text_atomic(path / "config.yaml", config.to_yaml())
    write_status(path, "created")
    return path


def write_status(run_dir: Path, state: str, reason: str = "", **extra) -> dict:
    """Replace status.json (atomically), keeping fields not given here."""
    if state not in STATES:
        raise ValueError(state)
    path = Path(run_dir) / "status.json"
    status = read_json(path, {}) or {}
    status.update(extra)
    status.update({"state": state, "reason": reason, "updated": round(time.time(), 3)})
    if state in FINAL_STATES:
        status["pid"] = None
    write_json_atomic(path, status)
    return status


def find_run(ref: str | Path) -> Path:
    """A run folder from an id, a path to the folder or a path to its config.yaml."""
    p = Path(ref).expanduser()
    if p.name == "config.yaml":
        p = p.parent
    if p.is_dir() and (p / "config.yaml").exists():
        return p.resolve()
    candidate = runs_dir() / safe_name(str(ref))
    if (candidate / "config.yaml").exists():
        return candidate
    raise RunError(
        f"No run called '{ref}' was found.", "List runs with `python -m engine runs list`."
    )


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (exited, not yet reaped by its parent) is not running either.
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def load_run(ref: str | Path) -> RunInfo:
    """A run's config and status; a `running` status whose worker is gone reads as interrupted."""
    path = find_run(ref)
    config = RunConfig.load(path / "config.yaml")
    status = read_json(path / "status.json", {}) or {"state": "created"}
    if status.get("state") == "running" and not _pid_alive(status.get("pid")):
        status = dict(
            status,
            state="interrupted",
            reason="The training process ended without finishing (crash, kill or power loss).",
        )
    steps = [int(c.name) for c in ckpt.list_checkpoints(path)]
    return RunInfo(path.name, path, config, status, steps)


def mark_interrupted(ref: str | Path) -> RunInfo:
    """Persist the interrupted state of a run whose worker died (e.g. found at app start)."""
    info = load_run(ref)
    if (
        info.state == "interrupted"
        and (read_json(info.path / "status.json", {}) or {}).get("state") == "running"
    ):
        info.status = write_status(info.path, "interrupted", info.status["reason"])
    return info


def adapter_steps(run_dir: Path) -> list[int]:
    """Steps of a run's checkpoints that hold a complete adapter (what chat, eval and export load), oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in folder.iterdir()
        if p.name.isdigit()
        and all((p / f).is_file() for f in (ckpt.ADAPTER_FILE, ckpt.ADAPTER_CONFIG))
    )


def base_model_of(run_dir: Path) -> str | None:
    """The base model a run trained (its config's model.path), or None when unreadable."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        return None
    try:
        return RunConfig.load(config_path, warnings=[]).model.path or None
    except LatheError:
        return None


def list_runs() -> list[RunInfo]:
    """Every run in the workspace, newest first. Unreadable folders are skipped."""
    runs = []
    for p in runs_dir().iterdir():
        if (p / "config.yaml").exists():
            try:
                runs.append(load_run(p))
            except LatheError:
                continue
    return sorted(
        runs, key=lambda r: r.status.get("created", r.status.get("updated", 0)), reverse=True
    )


def delete_run(ref: str | Path) -> Path:
    """Delete a run folder (config, events, adapters, checkpoints). Refuses a run still training."""
    import shutil

    info = load_run(ref)
    if info.state == "running":
        raise RunError(f"Run {info.id} is still training.", "Stop it first, then delete it.")
    if info.path.parent.resolve() != runs_dir().resolve():
        raise RunError(f"{info.path} is not inside the workspace's runs folder; it was left alone.")
    shutil.rmtree(info.path)
    return info.path
