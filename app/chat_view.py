"""Widgets of the chat page: the conversation view (Markdown, streamed replies, stats under each
reply), the message box (Enter sends, Shift-Enter breaks the line) and the "Add to dataset" dialog.

The conversation view re-renders on a timer, never per token: text that arrives goes into a buffer
and the document is rebuilt at most ~20 times a second (less often when rendering itself is slow),
so a long reply streams smoothly and a flood of tokens never stalls the window.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QTextDocument
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPlainTextEdit,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.names import humanize_ids

RENDER_INTERVAL_MS = 50  # at most ~20 renders a second
_BODY = re.compile(r"<body[^>]*>(.*)</body>", re.S)


@lru_cache(maxsize=512)
def markdown_html(text: str) -> str:
    """Markdown (code blocks, lists, emphasis) as an HTML fragment, by Qt's own Markdown reader."""
    doc = QTextDocument()
    doc.setMarkdown(text)
    match = _BODY.search(doc.toHtml())
    return match.group(1) if match else html.escape(text)


def format_stats(reply) -> str:
    """One line under a reply: time to first token, speed, tokens, why it stopped, what made it."""
    s = reply.stats
    stop = {
        "eos": "end of reply",
        "stop_string": "stop string",
        "length": "max tokens",
        "cancelled": "stopped by you",
    }.get(s.stop_reason, s.stop_reason or "?")
    parts = [
        f"first token {s.time_to_first_token:.2f} s",
        f"{s.tokens_per_second:.1f} tokens/s",
        f"{s.tokens} tokens",
        stop,
    ]
    if s.trimmed_messages:
        parts.append(f"{s.trimmed_messages} old messages left out")
    return " · ".join(parts)


@dataclass
class Turn:
    role: str  # user | assistant
    text: str
    label: str = ""
    stats: str = ""
    notices: list[str] = field(default_factory=list)


class ConversationWidget(QTextBrowser):
    """One conversation: committed turns, a message waiting for its reply, and the reply streaming."""

    def __init__(self, placeholder: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("conversation")
        self.setOpenExternalLinks(True)
        self.placeholder = placeholder
        self.header = ""  # what produces this column's replies (compare mode)
        self.turns: list[Turn] = []
        self.pending_user: str | None = None
        self.streaming: Turn | None = None
        self.waiting = ""  # shown while the reply has not started (e.g. the other side first)
        self.render_count = 0
        self.last_render_seconds = 0.0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.render_now)
        self.render_now()

    # -- content ------------------------------------------------------------------------------
    def sync(self, session) -> None:
        """Show exactly the session's history (each reply with its label and stats)."""
        self.turns = turns_of(session) if session is not None else []
        self.pending_user = None
        self.streaming = None
        self.waiting = ""
        self.schedule(now=True)

    def clear_conversation(self) -> None:
        self.turns, self.pending_user, self.streaming, self.waiting = [], None, None, ""
        self.schedule(now=True)

    def add_user(self, text: str, waiting: str = "") -> None:
        self.pending_user = text
        self.waiting = waiting
        self.schedule(now=True)

    def drop_last_reply(self) -> None:
        """Regenerate: the last reply goes; its user message waits for the new one."""
        while self.turns and self.turns[-1].role == "assistant":
            self.turns.pop()
        if self.turns and self.turns[-1].role == "user":
            self.pending_user = self.turns.pop().text
        self.schedule(now=True)

    def truncate(self, index: int) -> None:
        """Edit and resend: forget the message at `index` and everything after it."""
        del self.turns[index:]
        self.schedule(now=True)

    def begin_reply(self, label: str) -> None:
        self.waiting = ""
        self.streaming = Turn("assistant", "", label=label)
        self.schedule(now=True)

    def append_text(self, text: str) -> None:
        if self.streaming is None:
            self.streaming = Turn("assistant", "")
        self.streaming.text += text
        self.schedule()

    def add_notice(self, text: str) -> None:
        if self.streaming is None:
            self.streaming = Turn("assistant", "")
        self.streaming.notices.append(text)
        self.schedule()

    def streamed_text(self) -> str:
        return self.streaming.text if self.streaming is not None else ""

    # -- rendering ----------------------------------------------------------------------------
    def schedule(self, now: bool = False) -> None:
        if now:
            self._timer.stop()
            self.render_now()
        elif not self._timer.isActive():
            # Rendering is throttled to ~20 a second, and slowed further when it is itself slow,
            # so the GUI thread always has most of its time for the user.
            interval = max(RENDER_INTERVAL_MS, int(self.last_render_seconds * 4000))
            self._timer.start(interval)

    def render_now(self) -> None:
        t0 = time.perf_counter()
        bar = self.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        position = bar.value()
        self.setHtml(self.to_html())
        bar.setValue(bar.maximum() if at_end else position)
        self.render_count += 1
        self.last_render_seconds = time.perf_counter() - t0

    def to_html(self) -> str:
        muted = "color:#8a8a8e;"
        out = []
        if self.header:
            out.append(f"<p style='{muted}font-weight:600;'>{html.escape(self.header)}</p>")
        shown = list(self.turns)
        if self.pending_user is not None:
            shown.append(Turn("user", self.pending_user))
        if self.streaming is not None:
            shown.append(self.streaming)
        if not shown and self.placeholder:
            out.append(f"<p style='{muted}'>{html.escape(self.placeholder)}</p>")
        for turn in shown:
            if turn.role == "user":
                out.append("<p style='font-weight:600;margin-top:14px;'>You</p>")
                out.append(markdown_html(turn.text) if turn.text.strip() else "")
                continue
            who = html.escape(humanize_ids(turn.label) or "Model")
            out.append(f"<p style='font-weight:600;color:#2f7de1;margin-top:14px;'>{who}</p>")
            for notice in turn.notices:
                out.append(f"<p style='{muted}font-style:italic;'>{html.escape(notice)}</p>")
            if turn is self.streaming:
                # While streaming: Markdown too (an open code fence renders as a code block).
                out.append(markdown_html(turn.text + "▍"))
            else:
                out.append(
                    markdown_html(turn.text)
                    if turn.text
                    else f"<p style='{muted}'>(empty reply)</p>"
                )
            if turn.stats:
                out.append(f"<p style='{muted}font-size:11px;'>{html.escape(turn.stats)}</p>")
        if self.waiting and self.streaming is None:
            out.append(f"<p style='{muted}font-style:italic;'>{html.escape(self.waiting)}</p>")
        return "".join(out)


def turns_of(session) -> list[Turn]:
    out, replies = [], list(session.replies)
    k = 0
    for message in session.history:
        if message["role"] == "assistant":
            reply = replies[k] if k < len(replies) else None
            k += 1
            out.append(
                Turn(
                    "assistant",
                    message["content"],
                    label=reply.label if reply else "",
                    stats=format_stats(reply) if reply else "",
                    notices=list(reply.notices) if reply else [],
                )
            )
        else:
            out.append(Turn(message["role"], message["content"]))
    return out


class ChatInputWidget(QPlainTextEdit):
    """The message box: Enter sends, Shift-Enter inserts a line break, Escape cancels an edit."""

    sig_submit = Signal(str)
    sig_escape = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setPlaceholderText("Message the model  (Enter sends, Shift-Enter for a new line)")
        self.setTabChangesFocus(True)

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self.insertPlainText("\n")
            else:
                self.sig_submit.emit(self.toPlainText())
            event.accept()
            return
        if event.key() == Qt.Key.Key_Escape:
            self.sig_escape.emit()
        super().keyPressEvent(event)


class AddToDatasetDialog(QDialog):
    """The last exchange as a training example: pick a dataset, edit the reply if it needs it."""

    def __init__(
        self,
        datasets: list[tuple[str, str]],
        messages: list[dict],
        reply: str,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.setWindowTitle("Add to dataset")
        self.resize(560, 420)
        self.dataset = QComboBox()
        self.dataset.setEditable(True)
        for label, value in datasets:
            self.dataset.addItem(label, value)
        self.dataset.lineEdit().setPlaceholderText("a dataset, or a new name")
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        question = QLabel(last_user)
        question.setWordWrap(True)
        question.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reply = QPlainTextEdit(reply)
        note = QLabel(
            f"The example keeps the whole conversation ({len(messages)} messages, the system "
            "prompt included); edit the reply into the one the model should learn."
        )
        note.setObjectName("muted")
        note.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Dataset", self.dataset)
        form.addRow("Question", question)
        form.addRow("Reply", self.reply)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Add Example")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def target(self) -> str:
        """The chosen dataset's folder, or the typed name of a new one."""
        text = self.dataset.currentText().strip()
        index = self.dataset.findText(text)
        if index >= 0 and self.dataset.itemData(index):
            return str(self.dataset.itemData(index))
        return text

    def reply_text(self) -> str:
        return self.reply.toPlainText()
