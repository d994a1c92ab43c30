"""Run folders: `workspace/runs/<id>/` with config, status, events, adapters and checkpoints."""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import RunConfig
from engine.errors import LatheError, disk_full, is_disk_full
from engine.events import read_log
from engine.training import checkpoint as ckpt
from engine.workspace import (
    FileLock,
    ensure_dir,
    is_locked,
    new_id,
    read_json,
    runs_dir,
    safe_name,
    write_json_atomic,
    write_text_atomic,
)

STATES = ("created", "running", "completed", "stopped", "failed", "interrupted")
FINAL_STATES = ("completed", "stopped", "failed", "interrupted")
# The events that mark training time (log lines are not: a worker logs while it loads).
TIMED_EVENTS = ("started", "progress", "eval", "checkpoint", "golden", "finished", "error")


LOCK_FILE = "worker.lock"


class RunError(LatheError):
    kind = "run"


# Run folders whose lock this process holds: path -> [lock, how many holders in this process].
_held: dict[Path, list] = {}


def claim(run_dir: Path) -> None:
    """Take the run's exclusive OS lock (`worker.lock`) for this process, or raise RunError naming
    the process that holds it. The lock is what says a run is training: the OS drops it when the
    worker ends in any way (exit, crash, kill), so a stale pid can never keep a run "running".
    Claims nest within one process; each `claim` needs a `release`."""
    key = Path(run_dir).resolve()
    if key in _held:
        _held[key][1] += 1
        return
    lock = FileLock(key / LOCK_FILE)
    # A short wait: another process may be probing the lock (is_live) at this very moment.
    if not lock.acquire(timeout=1.0):
        holder = lock.holder()
        raise RunError(
            f"Run {key.name} is already training in process {holder or 'unknown'}.",
            "Two workers cannot train one run: wait for it to finish, or stop it first.",
        )
    _held[key] = [lock, 1]


def release(run_dir: Path) -> None:
    """Give back one `claim` of this process; the lock goes when the last one does."""
    key = Path(run_dir).resolve()
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _held[key]
        entry[0].release()


def is_live(run_dir: Path) -> bool:
    """Whether a worker (this process or another) holds the run's lock, i.e. is training it."""
    key = Path(run_dir).resolve()
    return key in _held or is_locked(key / LOCK_FILE)


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
        return self.numbers().best_val_loss

    def numbers(self) -> RunNumbers:
        """Steps reached, active duration and best validation loss (see `run_numbers`)."""
        if self._numbers is None:
            self._numbers = run_numbers(self.path, self.status)
        return self._numbers

    _numbers: RunNumbers | None = field(default=None, repr=False, compare=False)


@dataclass
class RunNumbers:
    """The numbers a user reads about a run; the Train and Runs pages both show these."""

    step: int  # the step the run has reached (where a resume continues from; killed runs too)
    total_steps: int
    active_seconds: (
        float | None
    )  # training time summed over every start and resume, pauses excluded
    best_val_loss: float | None  # lowest validation loss measured after training began (step > 0)
    best_val_step: int | None


def run_numbers(run_dir: Path, status: dict | None = None, now: float | None = None) -> RunNumbers:
    """A run's numbers from its `events.jsonl`, with `status.json` where the events say nothing.

    - step: the last step of the latest start or resume (a resume that goes back to an earlier
      checkpoint repeats steps, so the run is where its latest segment got to); a run killed
      between checkpoints still counts the steps its progress events reported.
    - active_seconds: each start or resume from its `started` event to its last training event
      (progress, eval, checkpoint, finished...), summed; a running run counts up to `now`. The
      time a run sat stopped, and a worker's loading before `started`, are not training time.
    - best_val_loss: the lowest validation loss of an evaluation at step > 0; the evaluation at
      step 0 measures the untrained model, and a later value of the same step wins.
    """
    run_dir = Path(run_dir)
    if status is None:
        status = read_json(run_dir / "status.json", {}) or {}
    segments: list[list[dict]] = []
    for e in read_log(run_dir / "events.jsonl"):
        if e.get("event") == "started" or not segments:
            segments.append([])
        segments[-1].append(e)
    valid: dict[int, float] = {}
    active = 0.0
    total = int(status.get("total_steps") or 0)
    for seg in segments:
        # Timed from `started` to the segment's last training event: the log lines a worker
        # writes while it loads (before `started`) land in the previous segment and would
        # otherwise count the pause between a stop and a resume as training.
        times = [
            float(e["time"])
            for e in seg
            if e.get("event") in TIMED_EVENTS and isinstance(e.get("time"), (int, float))
        ]
        if times:
            active += max(times) - min(times)
        for e in seg:
            if e.get("event") == "eval" and isinstance(e.get("val_loss"), (int, float)):
                step = int(e.get("step") or 0)
                if step > 0 and math.isfinite(e["val_loss"]):
                    valid[step] = float(e["val_loss"])
            elif e.get("event") == "started" and e.get("total_steps"):
                total = int(e["total_steps"])
    step = int(status.get("step") or 0)
    if segments:
        last = segments[-1]
        reached = [int(e["step"]) for e in last if isinstance(e.get("step"), int)]
        for e in last:
            summary = e.get("summary") if e.get("event") == "finished" else None
            if isinstance(summary, dict) and isinstance(summary.get("steps"), int):
                reached.append(summary["steps"])
        started = next((e for e in last if e.get("event") == "started"), None)
        if started is not None and isinstance(started.get("resumed_from"), int):
            reached.append(started["resumed_from"])
        if reached:
            step = max(reached)
        last_times = [
            float(e["time"])
            for e in last
            if e.get("event") in TIMED_EVENTS and isinstance(e.get("time"), (int, float))
        ]
        if status.get("state") == "running" and last_times:
            active += max(0.0, (now or time.time()) - max(last_times))
    best_step, best = (None, None)
    if valid:
        best_step, best = min(valid.items(), key=lambda sv: (sv[1], sv[0]))
    return RunNumbers(step, total, active if segments else None, best, best_step)


def create_run(config: RunConfig, run_id: str | None = None) -> Path:
    """A new run folder with `config.yaml` and a `created` status."""
    name = config.name or Path(config.data.path or "run").stem or "run"
    run_id = run_id or new_id(name)
    path = runs_dir() / safe_name(run_id)
    if path.exists():
        raise RunError(f"Run {run_id} already exists.", "Choose another name.")
    try:
        ensure_dir(path)
        write_text_atomic(path / "config.yaml", config.to_yaml())
        write_status(path, "created")
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)  # no empty run folder left behind
        if is_disk_full(exc):
            raise disk_full("create the run folder") from None
        raise
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
        f"No run called '{ref}' was found.",
        "List runs with `lathe-engine runs list` (the app's Runs page lists them too); pass a "
        "run id or a run folder's path.",
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
    """A run's config and status; a `running` status whose worker is gone reads as interrupted.

    Whether the worker is gone is decided by the run's lock, not by the pid in status.json: after
    a crash that pid may belong to any other process."""
    path = find_run(ref)
    config = RunConfig.load(path / "config.yaml")
    status = read_json(path / "status.json", {}) or {"state": "created"}
    if status.get("state") == "running" and not is_live(path):
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
