"""The Chat page, driven like a user: real models (stories260K, a tiny chat model), real adapters."""

from __future__ import annotations

import json
import threading
import time

import pytest
from PySide6.QtCore import Qt

from engine import workspace
from tests.helpers import make_chat_run


@pytest.fixture(scope="module")
def stories_chat_run(stories_path, tmp_path_factory):
    return make_chat_run(
        stories_path, tmp_path_factory.mktemp("chatruns") / "20260101-000000-chat-ab12", steps=(10,)
    )


@pytest.fixture
def page(qtbot):
    from app.pages.chat import ChatPage

    p = ChatPage()
    qtbot.addWidget(p)
    p.resize(1100, 700)
    p.show()
    yield p
    p.controller.stop()
    qtbot.waitUntil(lambda: not p.controller.busy, timeout=20_000)
    p.controller.shutdown()
    from app.tasks import wait_all

    wait_all(20_000)


def load(qtbot, page, model, adapter=None):
    page.model.setEditText(str(model))
    if adapter is not None:
        page.run.addItem("test run", str(adapter))
        page.runs.append(_chat_run(adapter, model))
        page.run.setCurrentIndex(page.run.count() - 1)
        page.model.setEditText(str(model))
    with qtbot.waitSignal(page.controller.sig_loaded, timeout=60_000):
        page.load()


def _chat_run(path, model):
    from app.pages.chat import ChatRun
    from engine.chat import checkpoint_steps

    return ChatRun(path.name, str(path), path.name, str(model), checkpoint_steps(path), True)


def greedy(page, max_tokens=40):
    page.temperature.setValue(0.0)
    page.max_tokens.setValue(max_tokens)


def test_streaming_arrives_in_order_and_ends_as_the_engines_reply(qtbot, page, stories_path):
    from engine.chat import ChatModel, ChatSession, ChatSettings

    load(qtbot, page, stories_path)
    greedy(page)
    pieces, main = [], threading.main_thread()
    on_gui = []
    page.controller.sig_text.connect(
        lambda side, t: (pieces.append(t), on_gui.append(threading.current_thread() is main))
    )
    page.input.setPlainText("Tell me a story.")
    with qtbot.waitSignal(page.controller.sig_reply_done, timeout=30_000) as done:
        qtbot.keyClick(page.input, Qt.Key.Key_Return)
    reply = done.args[1]
    assert len(pieces) > 5 and "".join(pieces) == reply.text
    assert all(on_gui)  # slots run on the GUI thread; generation ran on a worker
    assert page.input.toPlainText() == ""
    # The same prompt through the engine alone gives the same greedy text.
    alone = ChatModel.load(stories_path)
    try:
        expected = ChatSession(alone, settings=ChatSettings(temperature=0.0, max_tokens=40)).reply(
            "Tell me a story."
        )
    finally:
        alone.close()
    assert reply.text == expected.text
    assert page.last_reply_text() == reply.text
    html = page.view.toPlainText()
    assert reply.text.split()[0] in html and "tokens/s" in html and reply.label in html
    # Shift-Enter breaks the line instead of sending.
    qtbot.waitUntil(lambda: not page.controller.busy, timeout=10_000)
    page.input.setPlainText("one")
    page.input.moveCursor(page.input.textCursor().MoveOperation.End)
    qtbot.keyClick(page.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    assert page.input.toPlainText() == "one\n" and not page.controller.busy


def test_stop_cancels_within_one_token(qtbot, page, stories_path):
    load(qtbot, page, stories_path)
    greedy(page, max_tokens=400)
    seen: list[tuple[float, str]] = []
    stopped_at: list[float] = []

    def on_text(_side, text):
        seen.append((time.perf_counter(), text))
        if len(seen) == 3:
            page.stop_button.click()
            stopped_at.append(time.perf_counter())

    page.controller.sig_text.connect(on_text)
    with qtbot.waitSignal(page.controller.sig_reply_done, timeout=30_000) as done:
        page.send("Tell me a very long story.")
    reply = done.args[1]
    after = [t for when, t in seen if when > stopped_at[0]]
    assert reply.stats.stop_reason == "cancelled"
    # Tokens already queued to the GUI thread may still arrive; the engine made at most one more.
    assert reply.stats.tokens <= len(seen[:3]) + 2 + len(after)
    assert reply.stats.tokens < 20
    qtbot.waitUntil(lambda: not page.controller.busy, timeout=10_000)
    assert "stopped by you" in page.view.toPlainText()
    assert page.regenerate_button.isEnabled()


def test_compare_mode_labels_base_left_and_tuned_right(qtbot, page, stories_path, stories_chat_run):
    load(qtbot, page, stories_path, stories_chat_run)
    assert page.compare_box.isEnabled()
    page.compare_box.setChecked(True)
    greedy(page, max_tokens=12)
    done = []
    page.controller.sig_reply_done.connect(lambda side, r: done.append((side, r)))
    page.send("Once upon a time")
    qtbot.waitUntil(lambda: len(done) == 2 and not page.controller.busy, timeout=30_000)
    (side_a, base), (side_b, tuned) = done
    assert (side_a, side_b) == ("base", "tuned")
    assert base.label == "stories260K (base)" and not base.adapter
    assert (
        tuned.adapter
        and tuned.label == f"stories260K + run {stories_chat_run.name} · final adapter"
    )
    # The window names the run without its workspace stamp (issue 17, item 8).
    from app.names import humanize_ids

    shown = humanize_ids(tuned.label)
    assert page.base_view.header == base.label and page.tuned_view.header == shown
    assert base.label in page.base_view.toPlainText() and shown in page.tuned_view.toPlainText()
    assert tuned.label not in page.base_view.toPlainText()
    # Regenerate replaces both sides' last replies; the conversation keeps one exchange per side.
    done.clear()
    page.regenerate_button.click()
    qtbot.waitUntil(lambda: len(done) == 2 and not page.controller.busy, timeout=30_000)
    assert len(page.controller.compare.tuned.history) == 2
    # A checkpoint is labelled with its step.
    page.checkpoint.setCurrentIndex(page.checkpoint.findData(10))
    with qtbot.waitSignal(page.controller.sig_loaded, timeout=30_000):
        page.load_button.click()
    assert page.tuned_view.header == humanize_ids(
        f"stories260K + run {stories_chat_run.name} · step 10"
    )
    assert page.tuned_view.header.endswith(" · step 10")


def test_add_to_dataset_writes_a_valid_example(qtbot, page, tiny_chat_model, monkeypatch):
    from mlx_lm import load as mlx_load

    from app.chat_view import AddToDatasetDialog
    from engine.chat import validate_example
    from engine.encode import Encoder

    folder = workspace.datasets_dir() / "support"
    folder.mkdir(parents=True)
    load(qtbot, page, tiny_chat_model)
    greedy(page, max_tokens=8)
    page.system_prompt.setPlainText("Be brief.")
    with qtbot.waitSignal(page.controller.sig_reply_done, timeout=30_000):
        page.send("What is the fee?")
    qtbot.waitUntil(lambda: page.add_button.isEnabled(), timeout=5_000)

    def accept(dialog):
        assert dialog.reply_text() == page.last_reply_text()
        dialog.dataset.setEditText(str(folder))
        dialog.reply.setPlainText("The fee is 5 euros.")
        return AddToDatasetDialog.DialogCode.Accepted

    monkeypatch.setattr(AddToDatasetDialog, "exec", accept)
    with qtbot.waitSignal(page.sig_example_added, timeout=10_000) as added:
        page.add_button.click()
    lines = (folder / "train.jsonl").read_text().splitlines()
    assert added.args[0] == str((folder / "train.jsonl").resolve()) and len(lines) == 1
    record = json.loads(lines[0])
    assert record == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the fee?"},
            {"role": "assistant", "content": "The fee is 5 euros."},
        ]
    }
    assert validate_example(record) == record
    _, tokenizer = mlx_load(str(tiny_chat_model))
    assert Encoder(tokenizer).encode(record).trained_tokens > 0


def test_open_in_chat_selects_the_run_and_its_model(
    qtbot, page, stories_path, stories_chat_run, monkeypatch
):
    import shutil

    run = workspace.runs_dir() / stories_chat_run.name
    shutil.copytree(stories_chat_run, run)
    with qtbot.waitSignal(page.controller.sig_loaded, timeout=60_000) as loaded:
        page.set_run(str(run))
    assert page.run.currentData() == str(run) and page.model.currentText() == str(stories_path)
    assert loaded.args[0]["tuned_label"] == f"stories260K + run {run.name} · final adapter"
    assert page.compare_box.isEnabled() and page.send_button.isEnabled()


def test_the_tools_field_gives_the_chat_its_tool_definitions(qtbot, page, tmp_path):
    """Issue 20 item 7: a tools file named on the Chat page becomes the chat's tool definitions
    (the sessions made when a model loads take them from the controller); a bad file says why.
    The engine's test_data_semantics checks that they reach the rendered prompt."""
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([tool]), encoding="utf-8")
    assert not page.tools_note.isVisibleTo(page)
    page.tools_file.setText(str(tools_file))
    page.tools_file.editingFinished.emit()
    assert page.tools_note.text() == "The model sees: get_weather"
    assert page.controller.tools == [tool]
    page.tools_file.setText(str(tmp_path / "nope.json"))
    page.tools_file.editingFinished.emit()
    assert "does not exist" in page.tools_note.text() and page.tools_note.isVisibleTo(page)
    assert page.controller.tools is None


def _turns(session):
    return [m["content"] for m in session.history if m["role"] == "user"]


def test_stop_during_compare_regenerate_settles_both_panes(
    qtbot, page, stories_path, stories_chat_run
):
    """Issue 17, item 3: Stop during Regenerate in compare mode left the tuned pane at "waiting
    for the tuned model's reply..." for good, and the next message left the two histories
    differing (the tuned side never took the stopped turn)."""
    load(qtbot, page, stories_path, stories_chat_run)
    page.compare_box.setChecked(True)
    greedy(page, max_tokens=8)
    page.send("Once upon a time")
    qtbot.waitUntil(lambda: not page.controller.busy, timeout=30_000)
    greedy(page, max_tokens=400)
    seen = []

    def on_text(side, _text):
        seen.append(side)
        if len(seen) == 2:
            page.stop_button.click()

    page.controller.sig_text.connect(on_text)
    page.regenerate_button.click()
    qtbot.waitUntil(lambda: not page.controller.busy, timeout=30_000)
    page.controller.sig_text.disconnect(on_text)
    base, tuned = page.controller.compare.base, page.controller.compare.tuned
    assert [m["role"] for m in base.history] == [m["role"] for m in tuned.history]
    assert tuned.replies[-1].stats.stop_reason == "cancelled"
    assert "waiting for" not in page.tuned_view.toPlainText()
    assert "waiting for" not in page.base_view.toPlainText()
    greedy(page, max_tokens=6)
    page.send("The end")
    qtbot.waitUntil(lambda: not page.controller.busy, timeout=30_000)
    assert _turns(base) == _turns(tuned) == ["Once upon a time", "The end"]
    assert [m["role"] for m in base.history] == [m["role"] for m in tuned.history]


def test_toggling_compare_asks_before_the_conversation_goes(
    qtbot, page, stories_path, stories_chat_run
):
    """Issue 17, item 3: ticking Compare replaced the conversation on screen without asking."""
    load(qtbot, page, stories_path, stories_chat_run)
    greedy(page, max_tokens=6)
    page.send("Once upon a time")
    qtbot.waitUntil(lambda: not page.controller.busy, timeout=30_000)
    asked = []
    page.confirm_compare_switch = lambda on: asked.append(on) or False
    page.compare_box.click()
    assert asked == [True] and not page.compare_box.isChecked()
    assert "Once upon a time" in page.view.toPlainText() and page.views.currentIndex() == 0
    page.confirm_compare_switch = lambda on: asked.append(on) or True
    page.compare_box.click()
    assert page.compare_box.isChecked() and page.views.currentIndex() == 1
    page.compare_box.click()  # the comparison is empty: nothing to lose, no question
    assert asked == [True, True] and not page.compare_box.isChecked()
    assert "Once upon a time" in page.view.toPlainText()  # the conversation was kept


def test_escape_ends_the_editing_hint(qtbot, page, stories_path):
    """Issue 17, item 3: "Editing your last message" stayed in the status line after Escape."""
    load(qtbot, page, stories_path)
    greedy(page, max_tokens=6)
    page.send("Once upon a time")
    qtbot.waitUntil(lambda: not page.controller.busy, timeout=30_000)
    before = page.status.text()
    page.edit_button.click()
    assert page.status.text().startswith("Editing your last message")
    qtbot.keyClick(page.input, Qt.Key.Key_Escape)
    assert page.status.text() == before and page.send_button.text() == "Send"


def test_sampling_labels_carry_their_fields_tooltips(page):
    """Issue 17, item 12: tooltips appeared over the fields but not over their labels."""
    from PySide6.QtWidgets import QLabel

    labels = {lab.text(): lab for lab in page.findChildren(QLabel)}
    for text, field in (("Temperature", page.temperature), ("Seed", page.seed)):
        assert field.toolTip() and labels[text].toolTip() == field.toolTip()


def test_showing_the_chat_page_puts_the_cursor_in_the_message_box(qtbot, window):
    """Issue 17 (item 8, found in the real window's screenshots): arriving on Chat gave keyboard
    focus to the model field, the first in the focus chain, which then showed a left-cut raw path
    ("dels/stories260K") instead of the model's name."""
    from PySide6.QtWidgets import QApplication

    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    window.show_page("train")
    window.show_page("chat")
    qtbot.waitUntil(lambda: QApplication.focusWidget() is window.chat.input, timeout=5000)
    assert not window.chat.model.lineEdit().hasFocus()
