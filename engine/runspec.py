"""`RUN[:STEP]`: the one grammar for naming a run's adapter, shared by chat, evaluation and export.

    RUN            the run's final adapter; while the run has none yet (still training, stopped or
                   interrupted before its end), its newest complete checkpoint
    RUN:latest     the same as RUN
    RUN:final      the final adapter only (an error while the run has none)
    RUN:N          the checkpoint at step N (digits)

RUN is a run id in the workspace's runs/ or the path of a run folder. A path to an adapter folder
(adapters.safetensors + adapter_config.json, e.g. a checkpoint folder) names that adapter; a `:STEP`
after it is an error. A path that exists is taken whole, even when it contains a colon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine import workspace
from engine.errors import LatheError
from engine.runs import adapter_steps

ADAPTER_FILES = ("adapters.safetensors", "adapter_config.json")
_SPEC = re.compile(r"^(?P<run>.+):(?P<step>\d+|latest|final)$")
_SPEC_HINT = (
    "Give a run id from the Runs list (or a run folder), RUN:STEP for a checkpoint, or the path "
    "of an adapter folder."
)


@dataclass(frozen=True)
class AdapterRef:
    """Where an adapter is: its folder, and the run and step it belongs to when it has one."""

    path: Path  # an mlx-lm adapter path
    run_dir: Path | None = None
    step: int | None = None  # None: the run's final adapter (or a folder outside any run)


def split_spec(spec: str) -> tuple[str, str | None]:
    """`run:200` -> ("run", "200"); `run:latest` -> ("run", "latest"); an existing path stays whole."""
    text = str(spec).strip()
    match = _SPEC.match(text)
    if match and not Path(text).expanduser().exists():
        return match.group("run"), match.group("step")
    return text, None


def is_adapter_folder(path: Path) -> bool:
    return Path(path).is_dir() and all((Path(path) / n).is_file() for n in ADAPTER_FILES)


def looks_like_run(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists() for name in ("config.yaml", "adapters", "checkpoints", "status.json")
    )


def locate_adapter(spec: str | Path, error: type[LatheError] = LatheError) -> AdapterRef:
    """Resolve `RUN[:STEP]` or an adapter folder by the rules above; `error` is the caller's
    LatheError subclass (ChatError, ExportError, ...) for what cannot be resolved."""
    name, token = split_spec(str(spec))
    if not name:
        raise error("No run or adapter given.", _SPEC_HINT)
    path = Path(name).expanduser()
    if not path.exists():
        candidate = workspace.runs_dir() / name
        if workspace.safe_name(name) == name and candidate.is_dir():
            path = candidate
        else:
            raise error(f"'{name}' is neither a run nor an adapter folder.", _SPEC_HINT)
    path = path.resolve()

    if is_adapter_folder(path):
        if token is not None:
            raise error(
                f"{path} is already an adapter folder; a step applies only to a run.",
                "Drop the ':STEP' or pass the run instead.",
            )
        return AdapterRef(path, *_run_of_adapter(path))
    if not looks_like_run(path):
        raise error(
            f"{path} is neither a Lathe run nor an adapter folder.",
            "An adapter folder holds adapters.safetensors and adapter_config.json.",
        )
    steps = adapter_steps(path)
    if token is not None and token.isdigit():
        step = int(token)
        if step not in steps:
            raise error(
                f"Run {path.name} has no checkpoint at step {step}.",
                f"Checkpoints it has: {checkpoint_list(path)}.",
            )
        return AdapterRef(path / "checkpoints" / f"{step:07d}", path, step)
    if is_adapter_folder(path / "adapters"):
        return AdapterRef(path / "adapters", path, None)
    if token == "final":
        raise error(
            f"Run {path.name} has no final adapter yet.",
            f"Pick a checkpoint instead ({checkpoint_list(path)}), or let the run finish.",
        )
    if steps:
        return AdapterRef(path / "checkpoints" / f"{steps[-1]:07d}", path, steps[-1])
    raise error(
        f"Run {path.name} has no adapter yet.",
        "Wait for its first checkpoint, or pick another run.",
    )


def checkpoint_list(run_dir: Path, last: int = 5) -> str:
    """`run:100, run:200` for the newest checkpoints of a run (for hints)."""
    steps = adapter_steps(run_dir)
    if not steps:
        return "this run has no checkpoints"
    return ", ".join(f"{run_dir.name}:{s}" for s in steps[-last:])


def _run_of_adapter(path: Path) -> tuple[Path | None, int | None]:
    if path.name == "adapters" and looks_like_run(path.parent):
        return path.parent, None
    if (
        path.parent.name == "checkpoints"
        and path.name.isdigit()
        and looks_like_run(path.parent.parent)
    ):
        return path.parent.parent, int(path.name)
    return None, None
