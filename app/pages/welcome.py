"""Welcome view (first launch): what Lathe does, the sample dataset, a recommended model, and one
button that starts a demo run with the engine's demo settings."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)


def _card(title: str, body: QLabel, *buttons: QPushButton) -> QFrame:
    frame = QFrame()
    frame.setObjectName("card")
    layout = QVBoxLayout(frame)
    layout.setContentsMargins(16, 14, 16, 14)
    t = QLabel(title)
    t.setObjectName("sectionTitle")
    layout.addWidget(t)
    body.setWordWrap(True)
    body.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
    layout.addWidget(body, 1)
    if buttons:
        row = QHBoxLayout()
        row.setSpacing(8)
        for button in buttons:
            row.addWidget(button)
        row.addStretch(1)
        layout.addLayout(row)
    return frame


class WelcomePage(QWidget):
    sig_demo_requested = Signal()
    sig_use_sample = Signal()
    sig_open_dataset = Signal()
    sig_show_models = Signal()
    sig_dismissed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        from app.services import demo_model_note, recommended_note

        title = QLabel("Welcome to Lathe")
        title.setObjectName("heroTitle")
        lead = QLabel(
            "Lathe teaches an open language model your own examples — support answers, "
            "a writing style, a task — right on this Mac.\nNothing leaves the machine: "
            "drop a dataset, pick a model, watch it learn, then chat with the result."
        )
        lead.setObjectName("lead")
        lead.setWordWrap(True)

        self.sample = QLabel(
            "bank-support: 288 chat examples of a bank's support assistant "
            "answering customers (fees, cards, transfers), plus 24 for validation."
        )
        self.sample_button = QPushButton("Use the Sample Dataset")
        self.sample_button.setToolTip(
            "Import the bundled sample and show its report on the Data page."
        )
        self.sample_button.clicked.connect(self.sig_use_sample)
        open_button = QPushButton("Open Your Own…")
        open_button.setToolTip(
            "Open a dataset file or folder (or drop one anywhere on the window)."
        )
        open_button.clicked.connect(self.sig_open_dataset)
        self.model = QLabel(recommended_note())
        models_button = QPushButton("Models…")
        models_button.clicked.connect(self.sig_show_models)
        self.demo_note = QLabel(demo_model_note())
        self.demo_button = QPushButton("Start the demo run")
        self.demo_button.setObjectName("primary")
        self.demo_button.clicked.connect(self._on_demo_clicked)
        self.status = QLabel("")
        self.status.setObjectName("muted")
        self.status.setWordWrap(True)

        grid = QGridLayout()
        grid.setSpacing(14)
        grid.addWidget(
            _card("The sample dataset", self.sample, self.sample_button, open_button), 0, 0
        )
        grid.addWidget(_card("A recommended model", self.model, models_button), 0, 1)
        demo_card = _card("Try it now: a demo run", self.demo_note, self.demo_button)
        grid.addWidget(demo_card, 1, 0, 1, 2)
        skip = QPushButton("Go to the app")
        skip.setFlat(True)
        skip.clicked.connect(self.sig_dismissed)

        inner = QVBoxLayout()
        inner.setSpacing(14)
        inner.addWidget(title)
        inner.addWidget(lead)
        inner.addSpacing(8)
        inner.addLayout(grid)
        inner.addWidget(self.status)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(skip)
        inner.addLayout(row)
        inner.addStretch(1)
        box = QWidget()
        box.setLayout(inner)
        box.setMaximumWidth(820)
        outer = QHBoxLayout(self)
        outer.setContentsMargins(40, 36, 40, 24)
        outer.addWidget(box, 0, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)

    def _on_demo_clicked(self) -> None:
        self.demo_button.setEnabled(False)
        self.status.setText("Preparing the demo model and the sample data…")
        self.sig_demo_requested.emit()

    def demo_ready(self, ok: bool, message: str = "") -> None:
        self.demo_button.setEnabled(True)
        self.status.setText(message)
