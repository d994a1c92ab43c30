"""Engine features wired into the pages: the Evaluate tab on the Runs page, nan_retry, starting a run
that will not fit, memory and disk-full summaries, and training on several Macs (no ssh: the worker
command line and engine.training.distributed.check_hosts are intercepted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PySide6.QtCore import QTimer

import app  # noqa: F401 - the PySide6/Python 3.11 None workaround before any Qt call
from tests.helpers import tiny_config


@pytest.fixture
def controller(qtbot):
    from app.controller import TrainingController

    c = TrainingController()
    yield c
    if c.active:
        c.kill()


@pytest.fixture
def launched(controller, monkeypatch) -> list[list[str]]:
    """Worker command lines the controller would start (no process is started)."""
    calls: list[list[str]] = []

    def fake_launch(program, args, run_dir):
        calls.append([program, *args])
        controller.run_dir = Path(run_dir)

    monkeypatch.setattr(controller, "_launch", fake_launch)
    return calls


@pytest.fixture
def train_page(qtbot, controller, tiny_chat_model, chat_jsonl):
    from app.pages.train import TrainPage

    page = TrainPage(controller)
    qtbot.addWidget(page)
    page.settings.set_config(tiny_config(tiny_chat_model, chat_jsonl))
    yield page
    from app.tasks import wait_all

    wait_all(10_000)


def _finished_run(steps=(100, 200)) -> Path:
    """A completed run folder with curves, a final adapter and checkpoints (no training)."""
    from app.screenshot import synthetic_events
    from engine.config import RunConfig
    from engine.runs import create_run, write_status

    cfg = RunConfig()
    cfg.name, cfg.model.path, cfg.data.path = "evaluated", "m", "d.jsonl"
    run_dir = create_run(cfg)
    events = synthetic_events(run_dir.name, run_dir, 200, seed=1)
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    write_status(run_dir, "completed", step=200, total_steps=200)
    for folder in [run_dir / "adapters"] + [run_dir / "checkpoints" / f"{s:07d}" for s in steps]:
        folder.mkdir(parents=True)
        (folder / "adapters.safetensors").write_bytes(b"")
        (folder / "adapter_config.json").write_text("{}")
    return run_dir


def test_runs_page_has_an_evaluate_tab_whose_checkpoint_goes_to_chat_and_export(qtbot, controller):
    from app.pages.runs import RunsPage

    run_dir = _finished_run()
    page = RunsPage(controller)
    qtbot.addWidget(page)
    page.show()
    with qtbot.waitSignal(page.sig_refreshed, timeout=20_000):
        page.refresh()
    page.select_run(run_dir)
    tabs = [page.tabs.tabText(i) for i in range(page.tabs.count())]
    assert tabs == ["Curves", "Config", "Evaluate"]
    page.tabs.setCurrentWidget(page.eval_view)
    qtbot.waitUntil(lambda: page.eval_view.run_dir == run_dir, timeout=20_000)
    combo = page.eval_view._checkpoint_combo
    assert [combo.itemData(i) for i in range(combo.count())] == [None, 200, 100]
    combo.setCurrentIndex(2)  # step 100
    page.eval_view._use_button.click()
    menu = page.checkpoint_menu
    assert menu is not None and menu.isVisible()
    chat, export = menu.actions()
    assert "step 100" in chat.text() and "Chat" in chat.text() and "Export" in export.text()
    with qtbot.waitSignal(page.sig_chat_requested) as got:
        chat.trigger()
    assert got.args == [f"{run_dir}:100"]
    with qtbot.waitSignal(page.sig_export_requested) as got:
        export.trigger()
    assert got.args == [f"{run_dir}:100"]
    # The export engine reads RUN:STEP as that checkpoint of that run.
    from engine.runspec import locate_adapter

    ref = locate_adapter(got.args[0])
    assert ref.run_dir == run_dir.resolve() and ref.step == 100


def test_nan_retry_is_an_advanced_setting_that_reaches_the_runs_config(train_page, launched):
    from engine.config import field_help

    box = train_page.settings.fields["training.nan_retry"]
    assert box.toolTip() == field_help("training", "nan_retry")
    assert box.parentWidget() is train_page.settings.advanced and not box.isChecked()
    box.setChecked(True)
    assert train_page.start()
    (cmd,) = launched
    config_path = Path(cmd[cmd.index("--config") + 1])
    assert yaml.safe_load(config_path.read_text())["training"]["nan_retry"] is True
    assert "--hosts" not in cmd and "--force" not in cmd


def _answer_fit_confirm(qtbot, page, button_text: str) -> None:
    def answer():
        box = page.fit_confirm
        if box is None:
            QTimer.singleShot(20, answer)
            return
        next(b for b in box.buttons() if b.text() == button_text).click()

    QTimer.singleShot(0, answer)


def test_a_run_that_will_not_fit_asks_and_then_starts_with_the_override(
    qtbot, train_page, launched
):
    page = train_page
    page.fit_budget_bytes = 1024  # nothing fits in 1 KB
    page.refresh_fit()
    qtbot.waitUntil(lambda: page.fit_banner.verdict == "will not fit", timeout=20_000)

    _answer_fit_confirm(qtbot, page, "Cancel")
    assert not page.start()
    assert launched == []

    _answer_fit_confirm(qtbot, page, "Start anyway")
    assert page.start()
    (cmd,) = launched
    config = yaml.safe_load(Path(cmd[cmd.index("--config") + 1]).read_text())
    assert config["training"]["ignore_fit_check"] is True


def _finish_with(controller, *events) -> None:
    from app.controller import FAILED, RUNNING

    controller.state = RUNNING
    for e in events:
        controller.handle_line(json.dumps(e))
    controller._finish(FAILED, exit_code=1)
    # The Train page reads the run's numbers (engine.runs.run_numbers) off the GUI thread first.
    from PySide6.QtWidgets import QApplication

    from app.tasks import wait_all

    wait_all(10_000)
    QApplication.processEvents()


def test_a_refused_run_shows_the_memory_numbers_and_can_start_anyway(
    train_page, controller, launched, tmp_path
):
    page = train_page
    controller.run_dir = tmp_path / "run"
    fit = {
        "verdict": "will not fit",
        "training_peak_gb": 41.3,
        "budget_gb": 21.3,
        "budget_source": "Metal working set",
        "training_peak_bytes": 1,
        "budget_bytes": 1,
        "suggestion": {
            "description": "use batch size 1 with 8 gradient accumulation steps",
            "training_peak_gb": 18.2,
        },
    }
    _finish_with(
        controller,
        {
            "event": "error",
            "kind": "memory",
            "message": "This run needs about 41.3 GB…",
            "hint": "To start anyway, use `train --force`.",
            "fit": fit,
        },
        {"event": "finished", "status": "failed", "summary": {"reason": "x"}},
    )
    text = page.result_text.text()
    assert "will not fit in memory" in text and "41.3 GB" in text and "21.3 GB" in text
    assert "batch size 1 with 8 gradient accumulation steps" in text and "18.2 GB" in text
    assert page.force_button.isVisibleTo(page) and not page.resume_button.isVisibleTo(page)
    page.force_button.click()
    (cmd,) = launched
    assert cmd[cmd.index("--resume") + 1] == str(tmp_path / "run") and "--force" in cmd


def test_memory_and_disk_full_errors_get_their_own_summary(train_page, controller, tmp_path):
    page = train_page
    controller.run_dir = tmp_path / "run"
    _finish_with(
        controller,
        {"event": "progress", "step": 3, "total": 10, "train_loss": 1.0},
        {
            "event": "error",
            "kind": "disk_full",
            "message": "The disk is full, so Lathe could not "
            "write adapters.safetensors and stopped the run.",
            "hint": "Free some disk space.",
        },
        {"event": "finished", "status": "failed", "summary": {"reason": "x"}},
    )
    text = page.result_text.text()
    assert "the disk is full" in text and "Free some disk space" in text
    assert page.resume_button.isVisibleTo(page) and not page.force_button.isVisibleTo(page)

    _finish_with(
        controller,
        {"event": "progress", "step": 3, "total": 10, "train_loss": 1.0},
        {
            "event": "error",
            "kind": "memory",
            "message": "Memory ran short at step 3.",
            "hint": "Resume with a smaller batch size.",
            "memory": {"stop_bytes": 15 * 1024**3},
        },
        {"event": "finished", "status": "failed", "summary": {"reason": "x"}},
    )
    text = page.result_text.text()
    assert "memory ran short" in text and "15.0 GB" in text and "smaller batch size" in text


def test_several_macs_writes_hosts_yaml_and_passes_hosts(qtbot, train_page, controller, launched):
    from engine.training.distributed import read_hosts

    hosts = train_page.settings.hosts
    assert not hosts.body.isVisible() and not hosts.enabled_box.isChecked()  # collapsed, off
    hosts.set_hosts(
        "mac-studio.local 192.168.1.20\n# the laptop:\nme@macbook.local, 192.168.1.21\n"
    )
    assert train_page.start()
    (cmd,) = launched
    run_dir = Path(cmd[cmd.index("--config") + 1]).parent
    assert cmd[cmd.index("--hosts") + 1] == str(run_dir / "hosts.yaml")
    listed = read_hosts(run_dir / "hosts.yaml")
    assert [(h.ssh, h.ips) for h in listed] == [
        ("mac-studio.local", ["192.168.1.20"]),
        ("me@macbook.local", ["192.168.1.21"]),
    ]
    # Resuming that run goes across the same Macs.
    controller.resume(run_dir)
    assert launched[-1][launched[-1].index("--hosts") + 1] == str(run_dir / "hosts.yaml")

    launched.clear()
    hosts.set_hosts("mac-studio.local\n")
    assert not train_page.start()
    assert "at least two Macs" in train_page.result_text.text() and launched == []


def test_check_connection_shows_each_host(qtbot, train_page, monkeypatch):
    import threading

    from engine.training import distributed

    seen = []

    def fake_check(hosts, timeout=10.0):
        seen.append(([h.ssh for h in hosts], threading.current_thread() is threading.main_thread()))
        return [("mac-a", True, "reachable"), ("mac-b", False, "Permission denied (publickey).")]

    monkeypatch.setattr(distributed, "check_hosts", fake_check)
    hosts = train_page.settings.hosts
    train_page.settings.advanced_toggle.setChecked(True)
    hosts.toggle.setChecked(True)
    hosts.set_hosts("mac-a\nmac-b 10.0.0.2")
    hosts.check_button.click()
    qtbot.waitUntil(lambda: bool(hosts.results), timeout=10_000)
    assert seen == [(["mac-a", "mac-b"], False)]  # ran on a worker thread
    import re

    text = re.sub(r"<[^>]+>", "", hosts.status.text())
    assert "✓ mac-a: reachable" in text and "✗ mac-b: Permission denied" in text
    hosts.editor.setPlainText("mac-c")  # an edited list clears the old results
    assert hosts.status.text() == ""
