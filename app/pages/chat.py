"""Chat page: a placeholder until the Chat issue lands. It says so plainly and shows what works
today (the engine's chat command) for the run the user picked."""

from __future__ import annotations

import shlex

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QPlainTextEdit, QVBoxLayout, QWidget


class ChatPage(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.run_dir: str | None = None
        title = QLabel("Chat")
        title.setObjectName("pageTitle")
        body = QLabel(
            "Chatting with a tuned model beside its base model is coming in a later version of "
            "this window.\n\nUntil then, the engine can already do it from Terminal:")
        body.setWordWrap(True)
        self.command = QPlainTextEdit()
        self.command.setReadOnly(True)
        self.command.setObjectName("log")
        self.command.setMaximumHeight(90)
        self.run_label = QLabel()
        self.run_label.setObjectName("muted")
        self.run_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(40, 30, 40, 30)
        layout.addWidget(title)
        layout.addWidget(body)
        layout.addWidget(self.command)
        layout.addWidget(self.run_label)
        layout.addStretch(1)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.set_run(None)

    def set_run(self, run_dir: str | None) -> None:
        self.run_dir = run_dir
        if run_dir:
            self.command.setPlainText(
                f"python -m engine chat --adapter {shlex.quote(str(run_dir))}\n"
                f"python -m engine chat --adapter {shlex.quote(str(run_dir))} --compare")
            self.run_label.setText(f"Selected run: {run_dir}")
        else:
            self.command.setPlainText("python -m engine chat --adapter RUN_ID\n"
                                      "python -m engine chat --adapter RUN_ID --compare")
            self.run_label.setText("Pick a finished run (Runs page ▸ Open in Chat) to fill in its id.")
