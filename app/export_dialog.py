"""Export a run's adapter (engine.export): fused MLX folder, GGUF or an Ollama folder, on a worker
thread with progress and Cancel."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QProgressBar,
    QVBoxLayout,
)

from app.tasks import Task

KINDS = [
    ("fuse", "Fused MLX model folder (for mlx-lm and Lathe)"),
    ("gguf", "GGUF file (llama.cpp, LM Studio)"),
    ("ollama", "Ollama folder (GGUF + Modelfile)"),
]


class ExportDialog(QDialog):
    """Choose an export, run it, show where the result went."""

    def __init__(self, run_dir: str | Path, parent=None):
        super().__init__(parent)
        self.run_dir = Path(run_dir)
        self.task: Task | None = None
        self.result = None
        self.setWindowTitle(f"Export {self.run_dir.name}")
        self.setMinimumWidth(520)
        self.kind = QComboBox()
        for key, label in KINDS:
            self.kind.addItem(label, key)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status = QLabel("The export runs in the background; you can cancel it.")
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox()
        self.export_button = self.buttons.addButton(
            "Export", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.export_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self._on_cancel_clicked)
        form = QFormLayout()
        form.addRow("Export as", self.kind)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)

    def start(self) -> None:
        from app.services import export_run

        if self.task is not None:
            return
        kind = self.kind.currentData()
        self.kind.setEnabled(False)
        self.export_button.setEnabled(False)
        self.status.setText("Starting…")
        self.task = Task(export_run, kind, str(self.run_dir))
        self.task.sig_progress.connect(self._on_task_progress)
        self.task.sig_done.connect(self._on_task_done)
        self.task.sig_failed.connect(self._on_task_failed)
        self.task.sig_cancelled.connect(self._on_task_cancelled)
        self.task.start(self)

    def _on_task_progress(self, p) -> None:
        self.status.setText(getattr(p, "message", str(p)))
        fraction = getattr(p, "fraction", None)
        if fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 100)
            self.progress.setValue(int(fraction * 100))

    def _on_task_done(self, result) -> None:
        self.task = None
        self.result = result
        self.progress.setRange(0, 100)
        self.progress.setValue(100)
        d = result.to_dict() if hasattr(result, "to_dict") else {}
        where = d.get("path") or d.get("out") or d.get("out_dir") or d.get("gguf_path") or ""
        text = f"Done. {where}".strip()
        if d.get("choice"):  # which fuse of a quantized base was written, and why
            text += "\n" + d["choice"]
        rt = d.get("round_trip") or {}
        if rt and not rt.get("all_agree"):
            text += "\nThe fused model does not answer exactly like base + adapter."
        self.status.setText(text)
        self._finish()

    def _on_task_failed(self, message: str, hint: str) -> None:
        self.task = None
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status.setText(f"The export failed: {message}" + (f"\n{hint}" if hint else ""))
        self._finish()

    def _on_task_cancelled(self) -> None:
        self.task = None
        self.status.setText("Cancelled; nothing was left half-written.")
        self._finish()

    def _finish(self) -> None:
        self.kind.setEnabled(True)
        self.export_button.setEnabled(True)
        self.cancel_button.setText("Close")

    def _on_cancel_clicked(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.status.setText("Cancelling…")
        else:
            self.reject()

    def reject(self) -> None:
        if self.task is not None:
            self.task.cancel()
        super().reject()
