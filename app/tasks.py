"""Short engine calls on a worker thread (QThreadPool), reporting back by signals.

A `Task` runs one function off the GUI thread. The function may accept `progress` (a callable it
calls with anything; forwarded as `sig_progress`) and `cancel` (a `threading.Event`). The result
arrives as `sig_done(result)`, a failure as `sig_failed(message, hint)`: never a traceback in a
dialog, never a frozen window.
"""

from __future__ import annotations

import inspect
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from engine.errors import Cancelled


class TaskCancelled(Cancelled):
    """Raised inside a task function when its cancel flag is set."""


class _Signals(QObject):
    sig_progress = Signal(object)
    sig_done = Signal(object)
    sig_failed = Signal(str, str)
    sig_cancelled = Signal()
    sig_ended = Signal()


class Task(QRunnable):
    """One function call on the shared thread pool. Keep a reference while it runs."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        super().__init__()
        self.setAutoDelete(False)
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.cancel_event = threading.Event()
        self.signals = _Signals()
        self.sig_progress = self.signals.sig_progress
        self.sig_done = self.signals.sig_done
        self.sig_failed = self.signals.sig_failed
        self.sig_cancelled = self.signals.sig_cancelled
        self.sig_ended = self.signals.sig_ended
        self.running = False
        self.finished = False

    def start(self, owner: QObject | None = None) -> Task:
        """Queue the task. With an `owner` (the widget that shows the result), the task's signals
        die with it: a result that arrives after the window closed goes nowhere."""
        if owner is not None:
            self.signals.setParent(owner)
        self.running = True
        _live.add(self)
        QThreadPool.globalInstance().start(self)
        return self

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def run(self) -> None:  # worker thread
        kwargs = dict(self.kwargs)
        try:
            params = inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            params = {}
        if "progress" in params and "progress" not in kwargs:
            kwargs["progress"] = self.signals.sig_progress.emit
        if "cancel" in params and "cancel" not in kwargs:
            kwargs["cancel"] = self.cancel_event
        try:
            result = self.fn(*self.args, **kwargs)
        except Cancelled:
            self._emit(self.signals.sig_cancelled)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message for the user
            message, hint = describe_error(exc)
            self._emit(self.signals.sig_failed, message, hint)
        else:
            if self.cancel_event.is_set():
                self._emit(self.signals.sig_cancelled)
            else:
                self._emit(self.signals.sig_done, result)
        finally:
            self.running = False
            self.finished = True
            self._emit(self.signals.sig_ended)
            _live.discard(self)

    def _emit(self, signal, *args) -> None:
        try:
            signal.emit(*args)
        except RuntimeError:
            pass  # the receiver is gone (window closed while the task ran)


# Tasks stay referenced while they run, even when their owner dropped them.
_live: set[Task] = set()


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(message, hint) for an exception: engine errors carry both, in the window's words
    (app.wording); others get a plain sentence."""
    hint = getattr(exc, "hint", "") or ""
    if hint and exc.args:
        message = str(exc.args[0])  # engine errors: the sentence without the hint appended
    else:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    known = type(exc).__module__.startswith("engine") or isinstance(exc, (OSError, ValueError))
    if not known:
        last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" (in {last[0].name})" if last else ""
        message = f"Unexpected {type(exc).__name__}{where}: {message}"
        hint = hint or "This is a bug in Lathe; please report it with the steps that led here."
        return str(message), str(hint)
    from app.wording import in_window_words

    return in_window_words(str(message), str(hint))


def wait_all(timeout_ms: int = 5000) -> bool:
    """Wait for running tasks (tests, quitting)."""
    return QThreadPool.globalInstance().waitForDone(timeout_ms)
