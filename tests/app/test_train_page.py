"""Train page: a real worker on a tiny model draws the chart and completes; Stop keeps a
checkpoint; a killed worker shows the error and Resume; the fit banner follows the settings."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.helpers import tiny_config


@pytest.fixture
def dataset(chat_jsonl) -> Path:
    return chat_jsonl


@pytest.mark.slow
def test_training_draws_the_chart_and_completes(window, qtbot, tiny_chat_model, dataset):
    page = window.train
    window.show_page("train")
    page.settings.set_config(tiny_config(tiny_chat_model, dataset))
    with qtbot.waitSignal(window.controller.sig_finished, timeout=120_000) as blocker:
        assert page.start()
        qtbot.waitUntil(lambda: window.controller.state == "running", timeout=10_000)
        assert not page.start_button.isEnabled() and page.stop_button.isEnabled()
    state, details = blocker.args
    qtbot.waitUntil(
        lambda: not page.result.isHidden(), timeout=10_000
    )  # after the run's numbers are read
    assert state == "completed", details
    assert page.chart.point_count >= 12
    qtbot.waitUntil(lambda: page.chart.points_drawn > 0, timeout=5_000)  # drawn by its timer
    assert page.result.isVisible()
    assert "Training completed" in page.result_text.text()
    assert page.chat_button.isVisibleTo(page) and page.export_button.isVisibleTo(page)
    assert page.progress.value() == page.progress.maximum()
    run_dir = Path(details["run_dir"])
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert page.start_button.isEnabled()
    # The Runs page lists it once it refreshes.
    qtbot.waitUntil(lambda: any(r.path == run_dir for r in window.runs.rows), timeout=20_000)
    # "Export" opens the export dialog; a fused MLX folder is written by engine.export.
    from app.export_dialog import ExportDialog

    page.export_button.click()
    dialog = window.findChild(ExportDialog)
    assert dialog is not None and dialog.run_dir == run_dir
    dialog.kind.setCurrentIndex(0)
    dialog.start()
    qtbot.waitUntil(lambda: not dialog.busy, timeout=120_000)
    assert dialog.status.text().startswith("Done."), dialog.status.text()
    assert (Path(dialog.result["path"]) / "config.json").exists()
    dialog.reject()


@pytest.mark.slow
def test_stop_ends_in_stopped_with_a_checkpoint(window, qtbot, tiny_chat_model, dataset):
    page = window.train
    page.settings.set_config(
        tiny_config(tiny_chat_model, dataset, iters=5000, save_every=4000, steps_per_eval=4000)
    )
    assert page.start()
    qtbot.waitUntil(lambda: page.chart.point_count >= 2, timeout=90_000)
    with qtbot.waitSignal(window.controller.sig_finished, timeout=60_000) as blocker:
        window.stop_action.trigger()
    state, details = blocker.args
    qtbot.waitUntil(
        lambda: not page.result.isHidden(), timeout=10_000
    )  # after the run's numbers are read
    assert state == "stopped", details
    run_dir = Path(details["run_dir"])
    checkpoints = [p for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
    assert checkpoints, "a stopped run keeps a checkpoint"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"
    assert "stopped" in page.result_text.text()
    assert page.resume_button.isVisibleTo(page)


@pytest.mark.slow
def test_a_killed_worker_shows_the_error_and_offers_resume(window, qtbot, tiny_chat_model, dataset):
    page = window.train
    page.settings.set_config(
        tiny_config(tiny_chat_model, dataset, iters=5000, save_every=3, steps_per_eval=4000)
    )
    assert page.start()
    qtbot.waitUntil(lambda: window.controller.last_checkpoint is not None, timeout=90_000)
    with qtbot.waitSignal(window.controller.sig_finished, timeout=30_000) as blocker:
        os.kill(window.controller.pid, signal.SIGKILL)
    state, details = blocker.args
    qtbot.waitUntil(
        lambda: not page.result.isHidden(), timeout=10_000
    )  # after the run's numbers are read
    assert state == "interrupted"
    text = page.result_text.text()
    assert "interrupted" in text and "killed" in text
    assert page.resume_button.isVisibleTo(page)
    run_dir = Path(details["run_dir"])
    assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
    # Resume continues the same run from its checkpoint.
    with qtbot.waitSignal(window.controller.sig_started, timeout=90_000) as started:
        page.resume_button.click()
    assert started.args[0]["run_id"] == run_dir.name
    assert started.args[0].get("resumed_from")
    with qtbot.waitSignal(window.controller.sig_finished, timeout=60_000) as blocker:
        page.stop()
    assert blocker.args[0] == "stopped"


def test_the_fit_banner_follows_the_settings(window, qtbot, tiny_chat_model, dataset):
    from engine.models import estimate

    page = window.train
    small = tiny_config(tiny_chat_model, dataset, batch_size=1)
    small.data.max_seq_length = 64
    big = tiny_config(tiny_chat_model, dataset, batch_size=64)
    big.data.max_seq_length = 1024
    from app.services import data_lengths

    # The banner estimates the largest batch the chosen data forms (issue 22 item 1), so do we.
    def peak(cfg):
        lengths = data_lengths(tiny_chat_model, cfg)
        assert lengths  # the dataset's real lengths, not the longest possible batch
        return estimate(tiny_chat_model, cfg, budget_bytes=1 << 40, lengths=lengths)

    p_small = peak(small).training_peak_bytes
    p_big = peak(big).training_peak_bytes
    budget = int(p_big / 1.2)
    assert p_small < 0.5 * budget
    page.fit_budget_bytes = budget

    page.settings.set_config(small)
    qtbot.waitUntil(lambda: page.fit_banner.verdict == "fits", timeout=20_000)
    assert "Fits" in page.fit_banner.label.text()
    assert not page.fit_banner.fix.isVisibleTo(page.fit_banner)

    # By default a run that would not fit gets gradient checkpointing first, and the banner says so.
    page.settings.set_config(big)
    qtbot.waitUntil(
        lambda: "turned on automatically" in page.fit_banner.label.text(), timeout=20_000
    )
    assert page.settings.config().training.auto_grad_checkpoint
    box = page.settings.fields["training.grad_checkpoint"]
    assert not box.isChecked() and box.text() == "On (auto)"  # the setting itself is unchanged
    assert "turns it on by itself" in box.toolTip()
    assert not page.settings.config().training.grad_checkpoint

    big.training.auto_grad_checkpoint = False
    page.settings.set_config(big)
    qtbot.waitUntil(lambda: page.fit_banner.verdict == "will not fit", timeout=20_000)
    assert "Will not fit" in page.fit_banner.label.text()
    assert box.text() == ""  # nothing is turned on by itself now
    assert page.fit_banner.fix.isVisibleTo(page.fit_banner)
    page.fit_banner.fix.click()  # "Use batch size 32 with 2 gradient accumulation steps"
    cfg = page.settings.config()
    assert cfg.training.batch_size < 64 and cfg.training.grad_accumulation_steps > 1
    qtbot.waitUntil(lambda: page.fit_banner.verdict == "fits", timeout=20_000)


def test_presets_set_values_and_tooltips_carry_the_help(window):
    from engine.config import field_help

    s = window.train.settings
    names = [s.preset.itemText(i) for i in range(s.preset.count())]
    assert names[:3] == ["Quick", "Balanced", "Thorough"]
    s.preset.setCurrentIndex(names.index("Thorough"))
    cfg = s.config()
    assert cfg.lora.rank == 32 and cfg.training.epochs == 3 and cfg.training.learning_rate == 5e-5
    s.fields["lora.rank"].setValue(12)
    assert s.preset.currentText() == "Custom"
    assert s.fields["training.learning_rate"].toolTip() == field_help("training", "learning_rate")
    assert s.fields["training.grad_checkpoint"].toolTip() == field_help(
        "training", "grad_checkpoint"
    )


def test_a_bad_setting_is_shown_not_raised(window, tiny_chat_model):
    page = window.train
    page.settings.set_config(tiny_config(tiny_chat_model, Path("/nonexistent/data.jsonl")))
    page.settings.fields["training.learning_rate"].setText("fast")
    assert not page.start()
    assert "Cannot start" in page.result_text.text() and "Learning rate" in page.result_text.text()
    assert not window.controller.active


def test_the_batch_size_says_what_it_means_in_the_run(window):
    """issue 22 item 4: the run's `started` event says what the batch size means (examples per
    step, steps) and the Train page shows it under the setting."""
    page = window.train
    note = page.settings.batch_note
    assert note.isHidden()
    text = (
        "Batch size 4 with budget batching: up to 512 tokens per step, about 5.6 examples per "
        "step, so 102 steps instead of 144 (set data.packing to off for exactly 4 examples per step)."
    )
    page._on_controller_started(
        {"event": "started", "run_id": "r", "total_steps": 102, "config": {"batch_note": text}}
    )
    assert not note.isHidden() and note.text() == f"This run: {text}"
