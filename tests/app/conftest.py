"""Fixtures for the GUI tests: a real MainWindow (offscreen), small datasets, fast fake workers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import app  # noqa: F401 - applies the PySide6/Python 3.11 None workaround before any Qt call
from tests.helpers import chat_records


@pytest.fixture
def chat_jsonl(tmp_path) -> Path:
    path = tmp_path / "support.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_records(40)), encoding="utf-8")
    return path


@pytest.fixture
def window(qtbot, lathe_home):
    from PySide6.QtWidgets import QApplication

    from app.theme import apply_theme
    from app.window import MainWindow

    apply_theme(QApplication.instance())
    w = MainWindow(remember=False)
    w.controller.stop_wait_ms = 30_000
    qtbot.addWidget(w)
    w.show()
    yield w
    if w.controller.active:
        w.controller.kill()
    w.quit_confirmed = True
    w.close()
    from app.tasks import wait_all

    wait_all(20_000)


# A stand-in worker that speaks the events protocol without MLX: streams progress until `stop`.
FAKE_WORKER = r"""
import json, sys, threading, time
stop = threading.Event()
def watch():
    for line in sys.stdin:
        if line.strip() == "stop":
            stop.set(); return
threading.Thread(target=watch, daemon=True).start()
def emit(kind, **kw):
    print(json.dumps({"event": kind, "time": time.time(), **kw}), flush=True)
emit("started", run_id="fake", config={"model": "m", "data": "d"}, total_steps=100000)
step = 0
while not stop.is_set() and step < 100000:
    step += 1
    emit("progress", step=step, total=100000, train_loss=2.0 / step ** 0.1, learning_rate=1e-4,
         tokens_per_second=1000.0, trained_tokens=step * 10, peak_memory_gb=0.1, eta_seconds=1.0)
    time.sleep(0.01)
emit("checkpoint", step=step, path="ckpt")
emit("finished", status="stopped", adapter_path="a", summary={"steps": step})
"""


@pytest.fixture
def fake_worker() -> tuple[str, list[str]]:
    return sys.executable, ["-c", FAKE_WORKER]
