"""Data page: dropping a dataset shows its report; broken files show their problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDropEvent

from tests.helpers import chat_records, drop


def test_dropping_a_dataset_shows_its_report(window, qtbot, chat_jsonl, tiny_chat_model):
    window.data.preferred_model = str(tiny_chat_model)
    with qtbot.waitSignal(window.data.sig_report_ready, timeout=60_000) as blocker:
        drop(window, chat_jsonl)
    report = blocker.args[0]
    assert window.current_page() == "data"
    assert report.format == "chat"
    assert report.kept == 40
    text = window.data.summary.text()
    assert "OpenAI chat" in text and "40 of 40 records kept" in text
    assert sum(window.data.histogram.counts) == report.splits["train"]
    assert window.data.histogram.limit == 2048
    assert window.data.use_button.isEnabled()
    # The token view shows trained and masked tokens differently.
    window.data.show_tokens.click()
    qtbot.waitUntil(lambda: "trained" in window.data.token_info.text(), timeout=30_000)
    html = window.data.tokens.toHtml()
    assert "rgba(52,199,89" in html.replace(" ", "") or "#34c759" in html.lower()


def test_a_broken_file_lists_its_problems_and_shows_the_record(
    window, qtbot, tmp_path, tiny_chat_model
):
    rows = [json.dumps(r) for r in chat_records(12)]
    rows[2] = '{"messages": [{"role": "user", "content": "unterminated'
    rows[5] = json.dumps({"messages": [{"role": "user", "content": "no answer here"}]})
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    window.data.preferred_model = str(tiny_chat_model)
    with qtbot.waitSignal(window.data.sig_report_ready, timeout=60_000) as blocker:
        drop(window, path)
    report = blocker.args[0]
    assert report.skipped == 2
    items = [window.data.problems.item(i).text() for i in range(window.data.problems.count())]
    assert any("line 3" in t for t in items), items
    assert any("line 6" in t for t in items), items
    assert window.data.tabs.tabText(0) == "Problems (2)"
    row = next(i for i, t in enumerate(items) if "line 6" in t)
    window.data.problems.setCurrentRow(row)
    assert "no answer here" in window.data.record.toPlainText()


def test_a_file_that_is_not_a_dataset_gets_a_clear_message(
    window, qtbot, tmp_path, tiny_chat_model
):
    path = tmp_path / "photo.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    window.data.preferred_model = str(tiny_chat_model)
    with qtbot.waitSignal(window.data.sig_import_failed, timeout=60_000) as blocker:
        drop(window, path)
    assert window.data.error.isVisible()
    assert "cannot be used" in window.data.error.text()
    assert (
        "Traceback" not in window.data.error.text()
        and "bug in Lathe" not in window.data.error.text()
    )
    assert blocker.args[0]


@pytest.mark.slow
def test_import_can_be_cancelled(window, qtbot, tmp_path, tiny_chat_model):
    path = tmp_path / "big.jsonl"
    # Large enough that the import is still running when Cancel lands (60,000 once finished first).
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_records(250_000)), encoding="utf-8")
    window.data.preferred_model = str(tiny_chat_model)
    window.data.open_path(path)
    qtbot.waitUntil(lambda: "examples" in window.data.progress_label.text(), timeout=60_000)
    window.data.cancel_button.click()
    qtbot.waitUntil(lambda: not window.data.busy, timeout=60_000)
    assert "cancelled" in window.data.error.text()
    assert window.data.report is None


def test_dropping_a_model_folder_imports_it_on_the_models_page(window, qtbot, tiny_chat_model):
    with qtbot.waitSignal(window.models.sig_library_changed, timeout=30_000):
        drop(window, tiny_chat_model)
    assert window.current_page() == "models"
    qtbot.waitUntil(
        lambda: any(r.path == str(tiny_chat_model.resolve()) for r in window.models.library),
        timeout=30_000,
    )
    row = next(r for r in window.models.library if r.path == str(tiny_chat_model.resolve()))
    assert row.kind == "imported" and row.chat_template == "yes"
    assert "Imported" in window.models.status.text()


def test_the_data_page_measures_with_the_train_pages_model(window, tiny_chat_model):
    window.train.settings.model.setEditText(str(tiny_chat_model))
    window.train.settings.fields["data.max_seq_length"].setValue(512)
    assert window.data.preferred_model == str(tiny_chat_model)
    assert window.data.max_seq_length == 512


def test_csv_columns_can_be_mapped(window, qtbot, tmp_path, tiny_chat_model):
    path = tmp_path / "faq.csv"
    rows = ["id,frage,antwort"] + [
        f"{i},Wie hoch ist die Gebühr {i}?,Sie beträgt {i} Euro." for i in range(20)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    window.data.preferred_model = str(tiny_chat_model)
    window.data.open_path(path, mapping={"prompt": "frage", "completion": "antwort"})
    qtbot.waitUntil(
        lambda: window.data.report is not None or window.data.error.isVisible(), timeout=60_000
    )
    assert window.data.map_button.isVisibleTo(window.data)
    report = window.data.report
    assert report is not None, window.data.error.text()
    assert report.mapping == {"prompt": "frage", "completion": "antwort"}
    assert report.kept == 20
    assert "frage" in window.data.summary.text()


def test_placeholders_can_be_filled_on_the_data_page(
    window, qtbot, tmp_path, tiny_chat_model, monkeypatch
):
    """Issue 20 item 5: the report's `{{name}}` placeholders get a Fill placeholders dialog whose
    values are filled in at import."""
    from PySide6.QtWidgets import QDialog

    from app.pages import data as data_page
    from engine.data import read_imported

    path = tmp_path / "identity.jsonl"
    rows = [{"prompt": f"Who are you? ({i})", "completion": "I am {{name}}."} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    page = window.data
    page.preferred_model = str(tiny_chat_model)
    with qtbot.waitSignal(page.sig_report_ready, timeout=60_000) as first:
        page.open_path(path)
    assert first.args[0].placeholders == {"name": 4}
    assert page.fill_button.isVisibleTo(page)

    def accept(dialog):
        dialog.edits["name"].setText("Lathe")
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(data_page.FillPlaceholdersDialog, "exec", accept)
    with qtbot.waitSignal(page.sig_report_ready, timeout=60_000) as second:
        page.fill_button.click()
    report = second.args[0]
    assert report.placeholders == {}
    records = read_imported(Path(report.dataset_path))
    completions = {r["completion"] for split in records.values() for r in split}
    assert completions == {"I am Lathe."}


def test_a_failed_import_takes_the_previous_report_away(
    window, qtbot, chat_jsonl, tmp_path, tiny_chat_model
):
    """Issue 17, item 4: a failed import (or format override) showed its error above the previous
    report, which still said "No problems found" and still offered "Use for training"."""
    window.data.preferred_model = str(tiny_chat_model)
    with qtbot.waitSignal(window.data.sig_report_ready, timeout=60_000):
        drop(window, chat_jsonl)
    assert window.data.use_button.isEnabled() and window.data.body.currentIndex() == 1
    bad = tmp_path / "photo.jsonl"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with qtbot.waitSignal(window.data.sig_import_failed, timeout=60_000):
        drop(window, bad)
    assert window.data.report is None
    assert not window.data.use_button.isEnabled()
    assert window.data.body.currentIndex() == 0  # the drop zone, not the old report


def test_drops_are_taken_as_a_copy_never_a_move(window, chat_jsonl):
    """Issue 17, item 4: drops were accepted with the proposed action, a Move when the source
    offers one; a source that honours Move deletes the user's original file."""
    from PySide6.QtGui import QDragEnterEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(chat_jsonl))])
    both = Qt.DropAction.CopyAction | Qt.DropAction.MoveAction
    args = (QPoint(400, 300), both, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    enter = QDragEnterEvent(*args)
    window.dragEnterEvent(enter)
    assert enter.isAccepted() and enter.dropAction() == Qt.DropAction.CopyAction
    event = QDropEvent(*args)
    window.dropEvent(event)
    assert event.isAccepted() and event.dropAction() == Qt.DropAction.CopyAction
    move_only = QDropEvent(
        QPoint(400, 300),
        Qt.DropAction.MoveAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    move_only.ignore()
    window.dropEvent(move_only)
    assert not move_only.isAccepted()
    assert chat_jsonl.exists()


def test_open_folder_imports_a_folder_dataset(window, qtbot, monkeypatch, tiny_chat_model):
    """Issue 17, item 4: Open... could not choose a folder, and the bundled sample is a folder."""
    from PySide6.QtWidgets import QFileDialog

    from engine.workspace import resources_dir

    sample = resources_dir() / "samples" / "bank-support"
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(sample))
    window.data.preferred_model = str(tiny_chat_model)
    window.show_page("data")
    with qtbot.waitSignal(window.data.sig_report_ready, timeout=60_000) as blocker:
        window.data.open_folder_button.click()
    splits = blocker.args[0].splits  # 288 training examples, 5% held out as a test split
    assert splits["train"] + splits.get("test", 0) == 288 and splits.get("test", 0) > 0
