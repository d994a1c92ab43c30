"""Issue 17, items 6 and 12: the Train chart, progress and form read right; the wheel scrolls the
form instead of changing a field; labels carry their field's tooltip."""

from __future__ import annotations

import json

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from app.chart import LossChartWidget


def _events(chart, steps):
    chart.load_events(
        [{"event": "progress", "step": s, "total": 300, "train_loss": 3.0 - s / 200} for s in steps]
    )


def test_a_resume_from_step_zero_replaces_the_old_points(qtbot):
    """Item 6: resuming a run that restarts from step 0 kept the old points; the line zig-zagged
    back in time. The later values of the repeated steps now replace the earlier ones."""
    chart = LossChartWidget()
    qtbot.addWidget(chart)
    _events(chart, list(range(1, 41)) + list(range(1, 11)))
    assert chart.train.xs == [float(s) for s in range(1, 11)]
    # A resume from the checkpoint at step 30 after reaching 40 drops 30..40 the same way.
    _events(chart, list(range(1, 41)) + list(range(31, 36)))
    assert chart.train.xs == [float(s) for s in range(1, 36)]
    assert chart.train.lo == min(chart.train.ys) and chart.train.hi == max(chart.train.ys)


def test_the_loss_axis_stays_at_or_above_zero_with_round_ticks(qtbot):
    """Item 6: the axis went below zero (-0.151) and its ticks read 4.97 / 3.9 / 2.83."""
    chart = LossChartWidget()
    qtbot.addWidget(chart)
    chart.add_train(1, 4.97)
    chart.add_train(2, 0.05)
    chart.add_valid(2, 2.83)
    _, _, y0, y1 = chart._ranges()
    assert y0 >= 0.0 and y1 >= 4.97
    ticks = chart.y_ticks()
    assert ticks[0] == y0 and ticks[-1] == y1
    spacing = {round(b - a, 9) for a, b in zip(ticks, ticks[1:])}
    assert len(spacing) == 1 and spacing.pop() in (1.0, 2.0, 2.5, 5.0)


def test_the_form_shows_whole_epochs_and_all_layers(window):
    """Item 6: the demo's form showed "Epochs 2.0" and Layers "-1"."""
    form = window.train.settings
    form.set_values({"training.epochs": 2.0, "lora.num_layers": -1})
    assert form.fields["training.epochs"].text() == "2"
    assert form.fields["lora.num_layers"].text() == "All"
    form.set_values({"training.epochs": 1.5, "lora.num_layers": 8})
    assert form.fields["training.epochs"].text() == "1.5"
    assert form.config().lora.num_layers == 8


def _wheel(widget, dy=-120):
    pos = QPointF(widget.rect().center())
    event = QWheelEvent(
        pos,
        QPointF(widget.mapToGlobal(pos.toPoint())),
        QPoint(0, 0),
        QPoint(0, dy),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)


def test_the_wheel_over_an_unfocused_field_leaves_its_value(window, qtbot):
    """Item 12: scrolling the settings form over Batch size changed it (4 to 24)."""
    window.show_page("train")
    batch = window.train.settings.fields["training.batch_size"]
    batch.setValue(4)
    window.train.start_button.setFocus()
    for _ in range(5):
        _wheel(batch, dy=120)
    assert batch.value() == 4
    assert batch.focusPolicy() == Qt.FocusPolicy.StrongFocus
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5_000)
    batch.setFocus()
    qtbot.waitUntil(batch.hasFocus, timeout=2_000)
    _wheel(batch, dy=120)
    assert batch.value() == 5  # a field the user chose still takes the wheel


def test_labels_carry_their_fields_tooltips(window):
    """Item 12: tooltips appeared over the fields but not over their labels."""
    form = window.train.settings
    for key in ("training.batch_size", "lora.rank", "data.max_seq_length"):
        field = form.fields[key]
        assert field.toolTip() and form.labels[field].toolTip() == field.toolTip()
    assert form.labels[form.model].toolTip() == form.model.toolTip()


def test_the_bar_and_the_message_agree_on_the_step(window, qtbot):
    """Item 6: the bar said "step 100 of 300" (the last progress report) while the message said
    "stopped at step 106" (the checkpoint)."""
    from engine.config import RunConfig
    from engine.runs import create_run, write_status

    cfg = RunConfig()
    cfg.model.path, cfg.data.path = "m", "d.jsonl"
    run_dir = create_run(cfg)
    events = [{"event": "started", "time": 10.0, "total_steps": 300}]
    events += [
        {"event": "progress", "time": 10.0 + s, "step": s, "total": 300, "train_loss": 2.0}
        for s in range(10, 101, 10)
    ]
    events.append({"event": "checkpoint", "time": 117.0, "step": 106, "path": "c"})
    summary = {"steps": 106, "wall_seconds": 107.0}
    events.append({"event": "finished", "time": 117.0, "status": "stopped", "summary": summary})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    write_status(run_dir, "stopped", step=106, total_steps=300)
    page = window.train
    window.show_page("train")
    window.controller.last_progress = events[-3]
    window.controller.total_steps = 300
    page.final_details = {}
    details = {
        "run_dir": str(run_dir),
        "run_id": run_dir.name,
        "finished": events[-1],
        "last_progress": events[-3],
        "last_checkpoint": events[-2],
    }
    page._on_controller_finished("stopped", details)
    qtbot.waitUntil(lambda: not page.result.isHidden(), timeout=10_000)
    qtbot.wait(250)  # the stats timer runs meanwhile and must not put the bar back
    assert "at step 106" in page.result_text.text()
    assert page.progress.value() == 106 and page.progress.format() == "step 106 of 300"
