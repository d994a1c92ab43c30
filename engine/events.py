"""Events: how the engine reports, as JSON-serialisable dicts with `event` and `time`.

The training loop only ever calls a sink (`sink(event_dict)`). A JSON-lines writer (the worker's
stdout for the GUI), the run's `events.jsonl`, a console printer and a test recorder are
interchangeable sinks.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

Sink = Callable[[dict], None]

KINDS = ("started", "progress", "eval", "checkpoint", "log", "error", "finished", "golden")
# Fields every event kind must carry (DESIGN.md, "Events").
REQUIRED: dict[str, tuple[str, ...]] = {
    "started": ("run_id", "config", "total_steps"),
    "progress": (
        "step",
        "total",
        "train_loss",
        "learning_rate",
        "tokens_per_second",
        "trained_tokens",
        "peak_memory_gb",
        "eta_seconds",
    ),
    "eval": ("step", "val_loss"),
    "checkpoint": ("step", "path"),
    "log": ("level", "message"),
    "error": ("kind", "message", "hint"),
    "finished": ("status", "adapter_path", "summary"),
    # Greedy answers to the run's golden prompts at a checkpoint step: [{prompt, answer, ...}];
    # optional `general`: the forgetting check's {score, passed, total, answers: [{prompt, answer,
    # passed, metric}]}.
    "golden": ("step", "answers"),
}


def make(kind: str, /, **fields: Any) -> dict:
    """An event dict of `kind` with the current time."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return {"event": kind, "time": round(time.time(), 3), **fields}


def check(event: dict) -> list[str]:
    """Problems with an event against the contract (empty when it conforms)."""
    problems = []
    kind = event.get("event")
    if kind not in KINDS:
        return [f"unknown event kind {kind!r}"]
    if not isinstance(event.get("time"), (int, float)):
        problems.append(f"{kind}: 'time' missing or not a number")
    for key in REQUIRED[kind]:
        if key not in event:
            problems.append(f"{kind}: missing '{key}'")
    return problems


def dumps(event: dict) -> str:
    """One JSON line; NaN/Inf become null so every line is strict JSON."""
    return json.dumps(_finite(event), ensure_ascii=False, separators=(",", ":"))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class JsonLinesWriter:
    """Writes each event as one JSON line to a stream (the worker's stdout), flushed at once."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        line = dumps(event) + "\n"
        with self._lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                # The reader is gone (GUI closed); the run goes on and its events.jsonl stays complete.
                pass


class EventLog:
    """Appends events to a run's `events.jsonl`; each line is written whole or not at all.

    A line goes out in one `os.write` on an O_APPEND descriptor. When a write fails (a full disk),
    whatever part of the line reached the file is cut off again before the error is raised, so the
    file never holds a torn line that would swallow the next event.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        data = (dumps(event) + "\n").encode("utf-8")
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"{self.path} is closed")
            size = os.fstat(self._fd).st_size
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                if event.get("event") in ("checkpoint", "finished", "error"):
                    os.fsync(self._fd)
            except BaseException as exc:
                try:
                    os.ftruncate(self._fd, size)
                except OSError:
                    pass
                if isinstance(exc, OSError) and not exc.filename:
                    raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
                raise

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_log(path: Path) -> list[dict]:
    """Every complete event in an `events.jsonl`. A line that cannot be read (one torn by a crash,
    even mid-way through a multibyte character, or not JSON) is skipped, never fatal."""
    events = []
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                try:
                    event = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
                if isinstance(event, dict):
                    events.append(event)
    except FileNotFoundError:
        pass
    return events


class Recorder:
    """Keeps every event in a list (tests, benchmarks)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]


class Fanout:
    """Sends each event to several sinks."""

    def __init__(self, sinks: Iterable[Sink]):
        self.sinks = list(sinks)

    def __call__(self, event: dict) -> None:
        # Every sink gets the event even when one fails (a full disk must not hide it from the app);
        # the first failure is raised afterwards.
        error = None
        for sink in self.sinks:
            try:
                sink(event)
            except Exception as exc:  # noqa: BLE001 - re-raised below
                error = error or exc
        if error is not None:
            raise error


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class ConsolePrinter:
    """Readable progress for people at a terminal: one line per report with a bar and ETA."""

    def __init__(self, stream: IO[str] | None = None, width: int = 24):
        self.stream = stream or sys.stderr
        self.width = width

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __call__(self, e: dict) -> None:
        kind = e["event"]
        if kind == "started":
            cfg = e.get("config", {})
            self._print(
                f"Run {e['run_id']}: {cfg.get('method', '')} on {cfg.get('model', '')}, "
                f"{e['total_steps']} steps"
            )
            if cfg.get("batch_note"):
                self._print(f"  {cfg['batch_note']}")
            self._print(f"  folder: {e.get('run_dir', '')}")
            if cfg.get("compute_dtype") and cfg.get("compute_dtype") != cfg.get("stored_dtype"):
                self._print(
                    f"  computes in {cfg['compute_dtype']} on this {cfg.get('backend', 'machine')} "
                    f"(the model is stored as {cfg.get('stored_dtype')})"
                )
        elif kind == "progress":
            frac = e["step"] / max(1, e["total"])
            filled = int(round(frac * self.width))
            bar = "#" * filled + "-" * (self.width - filled)
            self._print(
                f"[{bar}] {e['step']:>5}/{e['total']}  loss {e['train_loss']:.4f}  "
                f"lr {e['learning_rate']:.2e}  {e['tokens_per_second']:.0f} tok/s  "
                f"peak {e['peak_memory_gb']:.2f} GB  ETA {format_duration(e['eta_seconds'])}"
            )
        elif kind == "eval":
            self._print(f"  step {e['step']:>5}: validation loss {e['val_loss']:.4f}")
        elif kind == "checkpoint":
            self._print(f"  checkpoint saved at step {e['step']}")
        elif kind == "golden":
            for a in e["answers"]:
                self._print(
                    f"  golden @ {e['step']}: {a.get('prompt', '')!r} -> {a.get('answer', '')!r}"
                )
            g = e.get("general")
            if isinstance(g, dict) and g.get("total"):
                self._print(
                    f"  general prompts @ {e['step']}: {g.get('passed')}/{g['total']} answered right"
                )
        elif kind == "log":
            self._print(f"  {e['level']}: {e['message']}")
        elif kind == "error":
            self._print(f"Error: {e['message']}")
            if e.get("hint"):
                self._print(f"  What to do: {e['hint']}")
        elif kind == "finished":
            summary = e.get("summary", {})
            self._print(f"Run {e['status']}. Adapter: {e.get('adapter_path')}")
            if summary:
                parts = [
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in summary.items()
                ]
                self._print("  " + ", ".join(parts))
