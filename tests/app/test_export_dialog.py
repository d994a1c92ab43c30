"""Issue 17, item 11: the Export dialog chooses where, offers Reveal and Copy Path after success,
and a second export of the same kind offers Replace (only for what Lathe wrote)."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QGuiApplication

from tests.helpers import make_chat_run


@pytest.fixture
def run_dir(stories_path, tmp_path):
    return make_chat_run(stories_path, tmp_path / "20260101-000000-export-ab12", steps=())


def _export(qtbot, dialog):
    dialog.export_button.click()
    qtbot.waitUntil(lambda: not dialog.busy and dialog.export_button.isEnabled(), timeout=90_000)


@pytest.mark.slow
def test_export_into_a_chosen_folder_then_replace(qtbot, run_dir, tmp_path):
    """A second export of the same kind failed with "already exists" and offered no Replace;
    there was no choice of folder and nothing to do with the result."""
    from app.export_dialog import ExportDialog

    dialog = ExportDialog(run_dir)
    qtbot.addWidget(dialog)
    dialog.show()
    out = tmp_path / "exports here"
    out.mkdir()
    dialog.set_folder(str(out))
    dialog.kind.setCurrentIndex(dialog.kind.findData("fuse"))
    _export(qtbot, dialog)
    assert dialog.status.text().startswith("Done."), dialog.status.text()
    first = dialog.result_path
    assert first.parent == out and (first / "config.json").is_file()
    assert dialog.reveal_button.isVisible() and dialog.copy_button.isVisible()
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == str(first)
    # The whole status is shown, not cut at the dialog's edge.
    qtbot.wait(50)
    assert dialog.status.height() >= dialog.status.heightForWidth(dialog.status.width())

    _export(qtbot, dialog)
    assert "already in" in dialog.status.text() and dialog.replace_button.isVisible()
    stamp = (first / "config.json").stat().st_mtime_ns
    dialog.replace_button.click()
    qtbot.waitUntil(lambda: not dialog.busy and dialog.export_button.isEnabled(), timeout=90_000)
    assert dialog.status.text().startswith("Done."), dialog.status.text()
    assert (first / "config.json").stat().st_mtime_ns != stamp
    dialog.reject()


@pytest.mark.slow
def test_replace_is_not_offered_for_what_lathe_did_not_write(qtbot, run_dir, tmp_path):
    from app.export_dialog import ExportDialog

    out = tmp_path / "mine"
    theirs = out / f"{run_dir.name}-ollama"
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("my notes")
    dialog = ExportDialog(run_dir)
    qtbot.addWidget(dialog)
    dialog.set_folder(str(out))
    dialog.kind.setCurrentIndex(dialog.kind.findData("ollama"))
    _export(qtbot, dialog)
    assert "not written by Lathe" in dialog.status.text()
    assert not dialog.replace_button.isVisibleTo(dialog)
    assert (theirs / "notes.txt").read_text() == "my notes"
    from engine.export import ExportError
    from engine.export.destination import check_replace

    with pytest.raises(ExportError):  # what `export ollama --replace` checks in the worker
        check_replace("ollama", theirs)
    assert (theirs / "notes.txt").read_text() == "my notes"


def test_open_folder_without_a_file_manager_says_so(qtbot, monkeypatch, tmp_path):
    """Issue 17, item 12: "Open folder" did nothing visible where the platform has no file
    manager launcher (the error went only to the log)."""
    from PySide6.QtGui import QDesktopServices
    from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

    from app import reveal

    monkeypatch.setattr(reveal, "reveal_command", lambda path, platform=None: None)
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: False)
    parent = QWidget()
    qtbot.addWidget(parent)
    parent.show()
    assert reveal.reveal(tmp_path, parent) is False
    qtbot.waitUntil(
        lambda: isinstance(QApplication.activeModalWidget(), QMessageBox), timeout=5_000
    )
    box = QApplication.activeModalWidget()
    assert str(tmp_path) in box.informativeText()
    box.close()


@pytest.mark.slow
def test_an_export_worker_that_dies_leaves_the_dialog_usable(qtbot, run_dir, tmp_path):
    """Issue 19: the export ran MLX on a thread of the window's process, so an abort while fusing
    took the window down. Now the worker dies alone and the dialog says what happened."""
    from app.export_dialog import ExportDialog

    dialog = ExportDialog(run_dir)
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.set_folder(str(tmp_path))
    dialog.kind.setCurrentIndex(dialog.kind.findData("fuse"))
    with qtbot.waitSignal(dialog.job.sig_progress, timeout=60_000):
        dialog.export_button.click()
    with qtbot.waitSignal(dialog.job.sig_ended, timeout=30_000):
        dialog.job.process.kill()  # what a Metal abort or the OOM killer does to the worker
    text = dialog.status.text()
    assert "The export failed: The export worker stopped unexpectedly" in text, text
    assert "signal 9" in text
    assert dialog.export_button.isEnabled() and dialog.kind.isEnabled() and not dialog.busy
