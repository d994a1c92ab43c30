"""JobController: one engine command (evaluation, export, quantization, dataset import, token
view) in a worker process.

MLX never runs in the window's process (DESIGN.md): a Metal abort while fusing a big model ends
the worker, not the window; nor does the tokenizer, whose first loading holds Python's GIL (a
window stall). A job starts `lathe-engine COMMAND ... --json` with the QProcess the training
controller's worker gets too (app.controller.engine_command, worker_process), reads stdout in one
place and re-emits it as signals:

- `{"progress": {...}}` lines (commands with `--progress`) -> sig_progress(dict)
- the final JSON document                                   -> sig_finished(result)
- `{"error": {kind, message, hint}}` (engine/cli.py)        -> sig_failed(message, hint), in
                                                              the window's words (app.wording)
- an exit without either (killed, crashed)                  -> sig_failed naming the exit
- an exit after cancel()                                    -> sig_cancelled

Every job ends with exactly one of sig_finished, sig_failed or sig_cancelled, then sig_ended.
Cancelling is a request (SIGINT, the engine's Ctrl-C: exports stop cleanly), then a bounded wait,
then terminate, then kill.
"""

from __future__ import annotations

import json
import os
import signal
from collections import deque

from PySide6.QtCore import QObject, QProcess, QTimer, Signal

from app.controller import READ_CHUNK, engine_command, worker_process

CANCEL_WAIT_MS = 10_000  # how long a cancelled job may take to stop on its own
TERMINATE_WAIT_MS = 3_000  # after SIGTERM, before SIGKILL
STDERR_TAIL = 40


def describe_exit(what: str, exit_code: int, crashed: bool, stderr: list[str]) -> str:
    """The sentence for a worker that ended without a result or an error report."""
    if crashed:
        sig = exit_code
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = ""
        how = f"exit code {-sig} / signal {sig}" + (f", {name}" if name else "")
        text = f"The {what} worker stopped unexpectedly ({how})."
        if sig == signal.SIGKILL:
            text += " It was killed, often because the system ran out of memory."
        elif sig == signal.SIGABRT:
            text += " It aborted, for example in the GPU driver (Metal)."
    else:
        text = f"The {what} worker ended without a result (exit code {exit_code})."
    text += " The window is unaffected; you can try again."
    lines = [line for line in stderr if line.strip()][-6:]
    if lines:
        text += "\nLast output:\n" + "\n".join(lines)
    return text


def engine_error_words(err: dict) -> tuple[str, str]:
    """(message, hint) of an engine's `{"error": ...}` in the window's words (app.wording), as a
    failed Task says it; an unexpected error (kind "internal") says it is a bug."""
    from app.wording import in_window_words

    message, hint = str(err.get("message", "")), str(err.get("hint", ""))
    if err.get("kind") == "internal":
        message = message.replace("; set LATHE_DEBUG=1 for the full traceback", "")
        hint = hint or "This is a bug in Lathe; please report it with the steps that led here."
    return in_window_words(message, hint)


class JobController(QObject):
    """One engine job at a time. `what` names it in messages ("export", "evaluation")."""

    sig_started = Signal()
    sig_progress = Signal(dict)
    sig_finished = Signal(object)  # the command's JSON result (a dict, or a list)
    sig_failed = Signal(str, str)  # message, hint
    sig_cancelled = Signal()
    sig_ended = Signal()  # after any of the three above

    def __init__(self, what: str, parent: QObject | None = None):
        super().__init__(parent)
        self.what = what
        self.process: QProcess | None = None
        self.command: list[str] = []
        self.pid = 0  # the last worker's process id
        self.cancel_wait_ms = CANCEL_WAIT_MS
        self.terminate_wait_ms = TERMINATE_WAIT_MS
        self.stderr: deque[str] = deque(maxlen=STDERR_TAIL)
        self._buffer = b""
        self._result_text: list[str] = []
        self._cancelling = False
        self._escalation = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._escalate)

    @property
    def running(self) -> bool:
        return self.process is not None

    # -- public API ---------------------------------------------------------------------------
    def start(self, *args: str) -> None:
        """Run `lathe-engine ARGS... --json` in a worker process."""
        program, full = engine_command(*args, "--json")
        self.start_command(program, full)

    def start_command(self, program: str, args: list[str]) -> None:
        """Run any process that prints what `--json` engine commands print (tests use scripts)."""
        if self.running:
            raise RuntimeError(f"The {self.what} is still running.")
        self._buffer = b""
        self._result_text = []
        self.stderr.clear()
        self._cancelling = False
        self._escalation = 0
        self.command = [program, *args]
        self.process = worker_process(
            self,
            stdout=self._on_stdout,
            stderr=self._on_stderr,
            finished=self._on_finished,
            error=self._on_error,
            started=self._on_started,
        )
        self.process.start(program, args)

    def cancel(self) -> None:
        """Ask the worker to stop (SIGINT); terminate, then kill, if it does not in time."""
        if self.process is None or self._cancelling:
            return
        self._cancelling = True
        pid = int(self.process.processId())
        if pid and hasattr(signal, "SIGINT") and os.name == "posix":
            os.kill(pid, signal.SIGINT)
        else:
            self.process.terminate()
        self.process.closeWriteChannel()
        self._timer.start(self.cancel_wait_ms)

    def kill(self) -> None:
        """End the worker now (the window is closing)."""
        if self.process is not None:
            self._cancelling = True
            self.process.kill()
            self.process.waitForFinished(3000)

    # -- process ------------------------------------------------------------------------------
    def _on_started(self) -> None:
        if self.process is not None:
            self.pid = int(self.process.processId())
        self.sig_started.emit()

    def _on_stdout(self) -> None:
        if self.process is None:
            return
        self._buffer += bytes(self.process.read(READ_CHUNK))
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            self._handle_line(raw.decode("utf-8", "replace"))
        if self.process is not None and self.process.bytesAvailable() > 0:
            QTimer.singleShot(0, self._on_stdout)

    def _handle_line(self, line: str) -> None:
        text = line.strip()
        if text.startswith('{"progress"'):
            try:
                event = json.loads(text)
            except json.JSONDecodeError:
                event = None
            if isinstance(event, dict) and isinstance(event.get("progress"), dict):
                self.sig_progress.emit(event["progress"])
                return
        self._result_text.append(line)

    def _on_stderr(self) -> None:
        if self.process is None:
            return
        text = bytes(self.process.readAllStandardError()).decode("utf-8", "replace")
        self.stderr.extend(line for line in text.splitlines() if line.strip())

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and self.process is not None:
            message = f"The {self.what} worker could not start: {self.process.errorString()}"
            self._end(self.sig_failed, message, "Check that Lathe is installed completely.")

    def _on_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        proc = self.process
        if proc is None:
            return
        while proc.bytesAvailable() > 0:
            self._buffer += bytes(proc.read(READ_CHUNK))
        if self._buffer:
            *lines, rest = self._buffer.split(b"\n")
            for raw in [*lines, rest]:
                self._handle_line(raw.decode("utf-8", "replace"))
            self._buffer = b""
        self._on_stderr()
        crashed = exit_status == QProcess.ExitStatus.CrashExit
        result = self._result()
        if self._cancelling:
            self._end(self.sig_cancelled)
        elif isinstance(result, dict) and isinstance(result.get("error"), dict):
            self._end(self.sig_failed, *engine_error_words(result["error"]))
        elif result is not None and exit_code == 0 and not crashed:
            self._end(self.sig_finished, result)
        else:
            message = describe_exit(self.what, exit_code, crashed, list(self.stderr))
            self._end(self.sig_failed, message, "")

    def _result(self):
        text = "\n".join(self._result_text).strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            # A line of plain output before the document (a library's print): take the last one.
            start = text.rfind("\n{")
            try:
                return json.loads(text[start + 1 :]) if start >= 0 else None
            except json.JSONDecodeError:
                return None

    def _end(self, signal_, *args) -> None:
        self._timer.stop()
        proc, self.process = self.process, None
        if proc is not None:
            proc.deleteLater()
        signal_.emit(*args)
        self.sig_ended.emit()

    def _escalate(self) -> None:
        if self.process is None:
            return
        if self._escalation == 0:
            self._escalation = 1
            self.process.terminate()
            self._timer.start(self.terminate_wait_ms)
        else:
            self.process.kill()
