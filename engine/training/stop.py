"""Stop signals: how a training worker is told to stop at the next step boundary.

A line `stop` (or `quit`) on stdin, stdin closing when it is a pipe (the app that started the worker
is gone), SIGINT or SIGTERM. The loop asks between micro-batches (`LoopCallbacks.should_stop`) and
the run then saves a checkpoint and ends `stopped`, with the reason in its status.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading


class StopSignal:
    """Set by `stop` on stdin, stdin closing (when it is a pipe), SIGINT or SIGTERM."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""

    def __call__(self) -> bool:
        return self.event.is_set()

    def set(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    def install(self, watch_stdin: bool) -> None:
        def on_signal(signum, _frame):
            self.set(signal.Signals(signum).name)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        if watch_stdin:
            threading.Thread(target=self._read_stdin, name="stdin-stop", daemon=True).start()

    def _read_stdin(self) -> None:
        try:
            is_pipe = stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode)
        except (OSError, ValueError):
            return
        try:
            for line in sys.stdin:
                if line.strip().lower() in ("stop", "quit"):
                    self.set("stop requested")
                    return
        except (OSError, ValueError):
            pass
        if is_pipe:
            # The app that started us is gone: stop cleanly with a checkpoint instead of orphaning.
            self.set("the app closed")
