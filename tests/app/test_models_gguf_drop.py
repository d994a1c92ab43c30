"""A GGUF file dropped on the window is converted into the library (issue 18, item 1)."""

from __future__ import annotations

from tests.engine.gguf_files import write_gguf
from tests.helpers import drop


def test_dropping_a_gguf_file_imports_it_on_the_models_page(
    window, qtbot, tiny_chat_model, tmp_path
):
    """Issue 18 item 1: a dropped .gguf goes to the Models page (not the Data page), is converted
    on a worker thread, and its row is a trainable converted model with its chat template."""
    gguf_file = write_gguf(tiny_chat_model, tmp_path / "dropped-tiny.gguf")
    with qtbot.waitSignal(window.models.sig_library_changed, timeout=60_000):
        drop(window, gguf_file)
    assert window.current_page() == "models"
    qtbot.waitUntil(
        lambda: any(r.name == "dropped-tiny" for r in window.models.library), timeout=30_000
    )
    row = next(r for r in window.models.library if r.name == "dropped-tiny")
    assert row.kind == "converted" and row.chat_template == "yes" and not row.problem
    assert "converted from GGUF" in window.models.status.text()
