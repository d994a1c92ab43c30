"""Issue 17, items 7 and 8: names a person reads (run names without the doubled timestamp,
middle-elided paths with the whole path in the tooltip, each model listed once) and errors in the
window's words with their one-click fixes (Start needs a model, max length longer than the
model's context). Widgets only, offscreen; no training."""

from __future__ import annotations

from pathlib import Path

import pytest

RUN_ID = "20261130-133435-bank-support-a027"
DATASET = "/ws/datasets/20261130-133400-bank-support-0c98"


@pytest.fixture
def page(qtbot):
    from app.controller import TrainingController
    from app.pages.train import TrainPage

    controller = TrainingController()
    p = TrainPage(controller)
    qtbot.addWidget(p)
    p.resize(1100, 700)
    p.show()
    return p


def test_run_names_drop_the_workspace_stamp():
    """Item 8: "Training 20261130-133435-bank-support-a027 · stories260K" becomes
    "bank-support · stories260K"; ids inside engine labels are named too."""
    from app.names import dataset_name, humanize_ids, run_label, run_title

    assert run_title("", RUN_ID, DATASET, "/models/stories260K") == "bank-support · stories260K"
    assert run_title("my run", RUN_ID, DATASET, "mlx-community/Qwen2.5-0.5B-Instruct-4bit") == (
        "my run · Qwen2.5-0.5B-Instruct-4bit"
    )
    assert dataset_name(DATASET) == "bank-support"
    assert dataset_name("/Users/me/support.jsonl") == "support"
    assert dataset_name("/Users/me/faq/train.jsonl") == "faq"
    from datetime import date

    assert run_label("", RUN_ID, today=date(2026, 12, 1)) == "bank-support · 30 Nov 13:34"
    assert run_label("", RUN_ID, today=date(2026, 11, 30)) == "bank-support · 13:34"
    assert humanize_ids(f"stories260K + run {RUN_ID} · final adapter") == (
        "stories260K + run bank-support · final adapter"
    )


def test_train_header_shows_the_run_name_on_one_line(page):
    """Item 8: the header of a started run reads "Training bank-support · stories260K" (it showed
    the run id with its timestamp, wrapped over two lines)."""
    page._on_controller_started(
        {
            "run_id": RUN_ID,
            "run_dir": f"/ws/runs/{RUN_ID}",
            "total_steps": 100,
            "config": {"model": "/models/stories260K", "data": DATASET},
        }
    )
    assert page.header.full_text() == "Training bank-support · stories260K"
    assert page.header.toolTip().endswith(RUN_ID)  # the id is one hover away


def test_elided_paths_keep_both_ends_and_the_whole_path_in_the_tooltip(qtbot):
    """Item 8: paths are cut in the middle ("/work/…/stories260K"), not on the left
    ("ering/shared/models/stories260K"), and the tooltip has all of it."""
    from app.theme import ElidedLabel, elide_middle

    path = "/work/engineering/shared/models/very/deep/folder/stories260K"
    label = ElidedLabel(path)
    qtbot.addWidget(label)
    label.show()
    label.resize(160, 24)
    qtbot.waitUntil(lambda: label.width() == 160)
    shown = label.text()
    assert shown != path and "…" in shown
    assert shown.startswith("/w") and shown.endswith("K")
    assert label.toolTip() == path
    assert elide_middle(path, label.fontMetrics(), 10_000) == path


def test_model_field_shows_the_name_and_keeps_the_path(page):
    """Item 8: the model field shows "stories260K — /…/stories260K" middle-elided while the form
    still reads the path itself."""
    path = "/work/engineering/shared/models/stories260K"
    page.settings.model.setEditText(path)
    edit = page.settings.model.lineEdit()
    assert edit.display_text() == f"stories260K  —  {path}"
    metrics = edit.fontMetrics()
    narrow = edit.display_text(metrics.horizontalAdvance("stories260K  —  /work/…/stories260K"))
    assert narrow.startswith("stories260K  —  /") and narrow.endswith("/stories260K")
    assert "…" in narrow  # the path gives way in its middle; the name stays whole
    assert edit.display_text(metrics.horizontalAdvance("stories260K  —  ")) == "stories260K"
    assert page.settings.config().model.path == path
    assert edit.toolTip() == path


def test_start_is_disabled_without_a_model_and_says_why(page, qtbot):
    """Item 7: Start training was enabled with no model chosen; now it is disabled, the reason is
    shown with a link that opens the model picker, and choosing a model enables it."""
    page.settings.model.setEditText("")
    page.settings.data.setEditText("/data/support.jsonl")
    assert not page.start_button.isEnabled()
    assert page.start_reason.isVisible()
    assert "Choose a model" in page.start_reason.text()
    page.start_reason.linkActivated.emit("model")
    qtbot.waitUntil(
        lambda: page.settings.model.hasFocus() or page.settings.model.view().isVisible()
    )
    page.settings.model.hidePopup()
    page.settings.model.setEditText("/models/stories260K")
    assert page.start_button.isEnabled()
    assert not page.start_reason.isVisible()


def test_a_start_problem_is_in_the_windows_words_and_goes_when_fixed(page):
    """Item 7: "Cannot start: No model given: set model.path (or pass --model)" became "Choose a
    model to train." with a Choose a model button; it is cleared once the model is set."""
    page.settings.model.setEditText("")
    page.settings.data.setEditText("/data/support.jsonl")
    assert page.start() is False  # ⌘R still reaches start() with the button disabled
    text = page.result_text.text()
    assert page.result.isVisible() and "Choose a model to train." in text
    assert "model.path" not in text and "--model" not in text
    assert page.fix_button.isVisible() and page.fix_button.text() == "Choose a model"
    page.settings.model.setEditText("/models/stories260K")
    assert not page.result.isVisible()


def test_max_length_longer_than_the_context_has_a_one_click_fix(page, stories_path):
    """Item 7: the fit note "max_seq_length 2048 is longer than the model's context (512)" had no
    fix; it now reads in the form's words and its button sets Max sequence length to 512."""
    from engine.models import estimate

    page.settings.model.setEditText(str(stories_path))
    page.settings.fields["data.max_seq_length"].setValue(2048)
    report = estimate(stories_path, page.settings.config())
    page._on_fit_done(page._fit_generation, report)
    banner = page.fit_banner
    assert "Max sequence length 2048 is longer than this model's context (512 tokens)" in (
        banner.label.text()
    )
    assert "max_seq_length" not in banner.label.text()
    assert banner.note_button.isVisible() and banner.note_button.text() == "Use 512 tokens"
    banner.note_button.click()
    assert page.settings.fields["data.max_seq_length"].value() == 512


def test_engine_messages_lose_command_line_words():
    """Item 7: config keys become field labels and "(or pass --x)" goes."""
    from app.wording import in_window_words, window_words

    assert window_words("lora.rank must be at least 1.").text == "LoRA rank must be at least 1."
    message, hint = in_window_words("No dataset given: set data.path (or pass --data).")
    assert message == "Choose a dataset to train on." and "--" not in message + hint
    assert window_words("No dataset given: set data.path (or pass --data).").fix.focus == "data"
    # Idempotent: words already translated (by describe_error) keep their fix.
    note = "max_seq_length 2048 is longer than the model's context (512); estimated at 512."
    once = window_words(note)
    twice = window_words(once.text)
    assert twice.text == once.text and twice.fix == once.fix


def test_each_model_folder_is_listed_once(tmp_path, stories_path, monkeypatch):
    """Item 8: stories260K was listed twice (as an imported model and as the demo model) when
    the two spell its folder differently; the drop-down lists each folder once."""
    from app.services import model_choices
    from engine.models import import_model

    link = tmp_path / "link-to-models"
    link.symlink_to(stories_path.parent, target_is_directory=True)
    spelled_otherwise = link / stories_path.name
    import_model(stories_path)
    monkeypatch.setattr("engine.workspace.shared_stories_model", lambda: spelled_otherwise)
    values = [v for _label, v in model_choices()]
    folders = [str(Path(v).resolve()) for v in values if Path(v).is_dir()]
    assert folders.count(str(stories_path.resolve())) == 1, values


@pytest.mark.slow  # imports the bundled sample for real (~3-8 s on the loaded 2-core machine)
def test_welcome_uses_the_sample_and_data_lists_it_to_pick_again(window, qtbot):
    """Issue 17, Work: Welcome offers "Use the sample dataset" (imports it and shows the Data
    page), and the Data page lists imported datasets so one can be picked again."""
    window.show_page("welcome")
    window.welcome.sample_button.click()
    assert window.current_page() == "data"
    qtbot.waitUntil(lambda: window.data.report is not None, timeout=60_000)
    assert window.data.report.dataset_path
    qtbot.waitUntil(lambda: window.data.imported.count() == 2, timeout=10_000)
    assert window.data.imported.isVisible()
    assert window.data.imported.itemText(1).startswith("bank-support")
    assert Path(window.data.imported.itemData(1)) == Path(window.data.report.dataset_path)


def test_the_window_highlights_while_a_file_is_dragged_over_it(window, tmp_path):
    """Issue 17, Work: a drag over the window shows what a drop will do; leaving hides it."""
    from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDragLeaveEvent
    from PySide6.QtWidgets import QApplication

    data = tmp_path / "support.jsonl"
    data.write_text('{"text": "hello"}\n', encoding="utf-8")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(data))])
    enter = QDragEnterEvent(
        QPoint(200, 200),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(window, enter)
    overlay = window.drop_overlay
    assert overlay.isVisible() and overlay.text == "Drop to import support"
    assert overlay.geometry() == overlay.parentWidget().rect()
    QApplication.sendEvent(window, QDragLeaveEvent())
    assert not overlay.isVisible()


def test_style_sheet_keeps_native_controls_on_macos_and_follows_the_palette(qtbot):
    """Item 9: Fusion gets bezelled buttons with hover, pressed and disabled states; macOS gets
    only the shared rules (its native buttons show, the primary one as the default button); every
    colour token is filled from the palette, and a dark palette gives dark bezels."""
    import re

    from PySide6.QtGui import QColor, QPalette
    from PySide6.QtWidgets import QPushButton, QWidget

    from app.theme import native_primary_buttons, style_sheet

    light = QPalette(QColor("#efefef"))
    dark = QPalette(QColor("#333333"))
    fusion, mac = style_sheet(light, "linux"), style_sheet(light, "darwin")
    for state in ("QPushButton:hover", "QPushButton:pressed", "QPushButton:disabled"):
        assert state in fusion and state not in mac
    assert "QPushButton#primary" in fusion and "QFrame#card" in mac
    assert not re.search(r"@\w+@", fusion + mac)  # every token replaced
    assert style_sheet(dark, "linux") != fusion
    root = QWidget()
    qtbot.addWidget(root)
    primary = QPushButton("Start", root)
    primary.setObjectName("primary")
    QPushButton("Stop", root)
    assert native_primary_buttons(root, "darwin") == 1 and primary.isDefault()
    assert native_primary_buttons(root, "linux") == 0
