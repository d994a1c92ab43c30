"""Export jobs: progress callbacks and a cancel flag, so the GUI can run any export on a worker.

An export function takes `progress=` (a callable receiving `Progress`) and `cancel=` (a
`threading.Event`). It reports at stage boundaries and checks the flag between steps; a cancelled
export raises `ExportCancelled` and leaves nothing half-written at its destination.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from engine.errors import Cancelled, LatheError


class ExportError(LatheError):
    """An export that cannot be done; the message says why and the hint what to do."""

    kind = "export"


class ExportCancelled(Cancelled, ExportError):
    kind = "cancelled"

    def __init__(self, message: str = "The export was cancelled.", hint: str = ""):
        super().__init__(message, hint)


def private_output(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Make what an export wrote readable by the user only (README: files 0600, folders 0700),
    wherever `--out` put it: the result's `path` (and an Ollama folder's GGUF and Modelfile)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from engine.workspace import make_private

        result = fn(*args, **kwargs)
        for name in ("path", "gguf", "modelfile"):
            where = getattr(result, name, None)
            if where is not None:
                make_private(where)
        return result

    return wrapper


@dataclass
class Progress:
    """One progress report: `stage` (short id), `message` (for people), `fraction` 0..1 or None."""

    stage: str
    message: str
    fraction: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


ProgressFn = Callable[[Progress], None]


class Reporter:
    """What an export function uses internally: report progress, check for cancellation."""

    def __init__(self, progress: ProgressFn | None = None, cancel: threading.Event | None = None):
        self._progress = progress
        self.cancel = cancel or threading.Event()

    def __call__(self, stage: str, message: str, fraction: float | None = None) -> None:
        self.check()
        if self._progress is not None:
            self._progress(
                Progress(stage, message, None if fraction is None else min(max(fraction, 0.0), 1.0))
            )

    def check(self) -> None:
        if self.cancel.is_set():
            raise ExportCancelled()

    def scaled(self, start: float, end: float) -> ProgressFn:
        """A progress callback whose fractions 0..1 land in [start, end] of this reporter."""

        def forward(p: Progress) -> None:
            self(
                p.stage,
                p.message,
                None if p.fraction is None else start + (end - start) * p.fraction,
            )

        return forward

    def sub(self, start: float, end: float) -> Reporter:
        """A reporter for one part of the work, sharing this one's cancel flag."""
        return Reporter(self.scaled(start, end), self.cancel)


class ExportJob:
    """An export to run on a worker thread: `job.run(progress=cb)` there, `job.cancel()` from anywhere.

    job = ExportJob(fuse, "20260101-run", dequantize=True)
    result = job.run(progress=lambda p: print(p.stage, p.fraction))   # on the worker
    job.cancel()                                                        # from the GUI thread
    """

    def __init__(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any):
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.cancel_event = threading.Event()

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", "export")

    def run(self, progress: ProgressFn | None = None) -> Any:
        return self.fn(*self.args, progress=progress, cancel=self.cancel_event, **self.kwargs)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()
