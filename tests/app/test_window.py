"""The window: quitting during a run, keep-awake command, Runs page, startup stays light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.controller import keep_awake_command, worker_command


def test_quitting_during_a_run_asks_and_can_be_cancelled(window, qtbot, fake_worker):
    window.controller.start_command(*fake_worker)
    qtbot.waitUntil(lambda: window.controller.last_progress is not None, timeout=20_000)
    asked = []
    window.ask_stop_run = lambda: asked.append(1) or False
    assert window.confirm_quit() is False
    assert asked and window.controller.active
    window.ask_stop_run = lambda: True
    with qtbot.waitSignal(window.controller.sig_finished, timeout=30_000) as blocker:
        assert window.confirm_quit() is True
    assert blocker.args[0] == "stopped"
    assert not window.controller.active


def test_quitting_without_a_run_does_not_ask(window):
    window.ask_stop_run = lambda: (_ for _ in ()).throw(AssertionError("asked"))
    assert window.confirm_quit() is True


def test_an_unresponsive_worker_is_terminated_after_the_bounded_wait(window, qtbot):
    script = "import time, signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('{}', flush=True)\ntime.sleep(60)"
    c = window.controller
    c.stop_wait_ms, c.terminate_wait_ms = 300, 300
    c.start_command(sys.executable, ["-c", script])
    qtbot.waitUntil(lambda: c.state == "running", timeout=10_000)
    with qtbot.waitSignal(c.sig_finished, timeout=15_000) as blocker:
        c.stop()
    assert blocker.args[0] == "interrupted"
    assert any("killing" in line for line in c.tail) or blocker.args[1]["exit_code"] == -1


def test_keep_awake_command_is_macos_only():
    assert keep_awake_command(1234, "darwin")[-3:] == ["-i", "-w", "1234"]
    assert keep_awake_command(1234, "linux") is None
    assert keep_awake_command(0, "darwin") is None
    prog, args = worker_command(resume=Path("/runs/x"))
    assert args[-3:] == ["--resume", "/runs/x", "--events"]


def test_the_built_app_starts_its_worker_through_its_own_executable(monkeypatch):
    import sys

    prog, args = worker_command(config_path=Path("/runs/x/config.yaml"))
    assert prog == sys.executable and args[:3] == ["-m", "engine", "train"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    prog, args = worker_command(config_path=Path("/runs/x/config.yaml"))
    # build_macos.py's launcher runs `Lathe --engine train ...` as the engine.
    assert prog == sys.executable and args[:2] == ["--engine", "train"]


def test_runs_page_shows_an_orphaned_running_run_as_interrupted(window, qtbot):
    from engine.config import RunConfig
    from engine.runs import create_run, write_status

    cfg = RunConfig()
    cfg.model.path, cfg.data.path, cfg.name = "m", "d.jsonl", "crashed-app"
    run_dir = create_run(cfg)
    write_status(run_dir, "running", pid=2**22 + 12345, step=7, total_steps=50)
    with open(run_dir / "events.jsonl", "w") as fh:
        for step in range(1, 8):
            fh.write(
                json.dumps(
                    {
                        "event": "progress",
                        "time": 0,
                        "step": step,
                        "total": 50,
                        "train_loss": 3.0 - step * 0.1,
                    }
                )
                + "\n"
            )
    window.show_page("runs")
    with qtbot.waitSignal(window.runs.sig_refreshed, timeout=20_000):
        window.runs.refresh()
    row = next(r for r in window.runs.rows if r.path == run_dir)
    assert row.state == "interrupted"
    window.runs.select_run(run_dir)
    assert "interrupted" in window.runs.table.selectedItems()[0].text(1)
    assert window.runs.resume_button.isEnabled()
    qtbot.waitUntil(lambda: window.runs.chart.point_count == 7, timeout=20_000)
    # Delete asks first; the engine removes the folder.
    with qtbot.waitSignal(window.runs.sig_refreshed, timeout=20_000):
        window.runs.delete_run(run_dir)
    assert not run_dir.exists()


def test_menu_shortcuts(window):
    from PySide6.QtGui import QKeySequence

    assert window.open_action.shortcut() == QKeySequence(QKeySequence.StandardKey.Open)
    assert window.start_action.shortcut() == QKeySequence("Ctrl+R")
    assert window.stop_action.shortcut() == QKeySequence("Ctrl+.")
    assert not window.preferences_action.shortcut().isEmpty()


def test_window_state_is_remembered(qtbot, lathe_home):
    from app.window import MainWindow

    first = MainWindow()
    qtbot.addWidget(first)
    assert first.current_page() == "welcome"  # first launch
    first.show()
    first.show_page("runs")
    first.resize(1111, 777)
    qtbot.waitUntil(lambda: first.width() == 1111)
    first.save_state()
    first.quit_confirmed = True
    first.close()
    second = MainWindow()
    qtbot.addWidget(second)
    second.show()
    assert second.current_page() == "runs"
    from app.window import settings_store

    # (The offscreen screen is 800x600, so the restored size is clamped; the bytes are what count.)
    assert settings_store().value("window/geometry") == first.saveGeometry()
    second.quit_confirmed = True
    second.close()


def test_startup_does_not_import_mlx(lathe_home):
    code = (
        "import sys\nfrom PySide6.QtWidgets import QApplication\napp = QApplication([])\n"
        "from app.window import MainWindow\nw = MainWindow(remember=False)\nw.show()\n"
        "app.processEvents()\nprint(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('mlx', 'mlx_lm', 'transformers', 'numpy')))"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.slow
def test_screenshot_renders_a_page(tmp_path):
    target = tmp_path / "chat.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run(
        [sys.executable, "-m", "app", "--screenshot", "chat", str(target)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert target.stat().st_size > 10_000


def test_many_qt_calls_do_not_exhaust_none(tmp_path):
    """PySide6 6.12 on Python 3.11 drops a reference to None per void call; the app guards it."""
    code = (
        "import app, sys\nfrom PySide6.QtCore import QObject\no = QObject()\n"
        "for _ in range(300_000):\n    o.setObjectName('x')\n    o.blockSignals(False)\n"
        "print('alive', app.NONE_WORKAROUND)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.startswith("alive")
