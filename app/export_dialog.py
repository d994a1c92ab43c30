"""Export a run's adapter (engine.export): fused MLX folder, GGUF or an Ollama folder, into a
folder the user chooses, in a worker process (app.jobs) with progress and Cancel. An earlier export of the
same kind in that folder can be replaced (only one Lathe wrote); after success the result can be
revealed in the file manager or its path copied."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
)

from app.jobs import JobController
from app.tasks import Task

KINDS = [
    ("fuse", "Fused MLX model folder (for mlx-lm and Lathe)"),
    ("gguf", "GGUF file (llama.cpp, LM Studio)"),
    ("ollama", "Ollama folder (GGUF + Modelfile)"),
]


class ExportDialog(QDialog):
    """Choose an export and where it goes, run it, show where the result went."""

    def __init__(self, run_dir: str | Path, parent=None):
        super().__init__(parent)
        self.run_dir = Path(run_dir)
        self.task: Task | None = None
        self.result = None
        self.result_path: Path | None = None
        self.folder: str | None = None  # None: the run's exports folder
        self.target = None  # engine.export.destination.ExportTarget of the last check
        self.job = JobController("export", self)  # the export itself, in a worker process
        self.job.sig_progress.connect(self._on_task_progress)
        self.job.sig_finished.connect(self._on_task_done)
        self.job.sig_failed.connect(self._on_task_failed)
        self.job.sig_cancelled.connect(self._on_task_cancelled)
        self.setWindowTitle(f"Export {self.run_dir.name}")
        self.setMinimumWidth(560)
        self.kind = QComboBox()
        for key, label in KINDS:
            self.kind.addItem(label, key)
        self.kind.currentIndexChanged.connect(self._on_choice_changed)
        self.where = QLabel("the run's exports folder")
        self.where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.where.setWordWrap(True)
        self.choose_button = QPushButton("Choose…")
        self.choose_button.clicked.connect(self.choose_folder)
        where_row = QHBoxLayout()
        where_row.addWidget(self.where, 1)
        where_row.addWidget(self.choose_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status = QLabel("The export runs in the background; you can cancel it.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.reveal_button = QPushButton("Reveal")
        self.reveal_button.clicked.connect(self._on_reveal_clicked)
        self.copy_button = QPushButton("Copy Path")
        self.copy_button.clicked.connect(self._on_copy_clicked)
        self.replace_button = QPushButton("Replace")
        self.replace_button.setToolTip("Write the export again in place of the earlier one.")
        self.replace_button.clicked.connect(self.replace)
        after = QHBoxLayout()
        for b in (self.replace_button, self.reveal_button, self.copy_button):
            after.addWidget(b)
            b.setVisible(False)
        after.addStretch(1)
        self.buttons = QDialogButtonBox()
        self.export_button = self.buttons.addButton(
            "Export", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.export_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self._on_cancel_clicked)
        form = QFormLayout()
        form.addRow("Export as", self.kind)
        form.addRow("Save in", where_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(after)
        layout.addWidget(self.buttons)
        self._show_folder()

    @property
    def busy(self) -> bool:
        """The destination check or the export is running."""
        return self.task is not None or self.job.running

    # -- destination --------------------------------------------------------------------------
    def choose_folder(self) -> None:
        start = self.folder or str(self.result_path.parent if self.result_path else Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Export into", start)
        if folder:
            self.set_folder(folder)

    def set_folder(self, folder: str | None) -> None:
        self.folder = folder or None
        self._show_folder()
        self._on_choice_changed()

    def _show_folder(self) -> None:
        text = self.folder or "the run's exports folder"
        self.where.setText(text)
        self.where.setToolTip(self.folder or str(self.run_dir / "exports"))

    def _on_choice_changed(self, *_args) -> None:
        self.replace_button.setVisible(False)
        self.export_button.setEnabled(not self.busy)

    # -- running ------------------------------------------------------------------------------
    def start(self) -> None:
        """Check the destination (off the GUI thread), then export, or offer Replace."""
        from app.services import export_target

        if self.busy:
            return
        self._set_running(True)
        self.status.setText("Checking the destination…")
        task = Task(export_target, self.kind.currentData(), str(self.run_dir), self.folder)
        task.sig_done.connect(self._on_target_checked)
        task.sig_failed.connect(self._on_task_failed)
        self.task = task.start(self)

    def _on_target_checked(self, target) -> None:
        self.task = None
        self.target = target
        if not target.exists:
            self._run_export(replace=False)
            return
        self._set_running(False)
        if target.replaceable:
            self._set_status(
                f"{target.path.name} is already in {target.path.parent}. Replace it with a new "
                "export, or choose another folder."
            )
            self.replace_button.setVisible(True)
        else:
            self._set_status(
                f"{target.path} already exists and was not written by Lathe, so it is left "
                "alone. Choose another folder."
            )

    def replace(self) -> None:
        if not self.busy and self.target is not None and self.target.replaceable:
            self._run_export(replace=True)

    def _run_export(self, replace: bool) -> None:
        """`lathe-engine export KIND RUN --out PATH` in a worker process (app.jobs); with
        `replace`, the engine overwrites only an export that Lathe wrote there."""
        self._set_running(True)
        self.replace_button.setVisible(False)
        self.reveal_button.setVisible(False)
        self.copy_button.setVisible(False)
        self.status.setText("Starting…")
        self.progress.setRange(0, 0)
        args = ["export", self.kind.currentData(), str(self.run_dir)]
        args += ["--out", str(self.target.path), "--progress"]
        self.job.start(*args, *(["--replace"] if replace else []))

    def _on_task_progress(self, p: dict) -> None:
        self._set_status(str(p.get("message", "")))
        fraction = p.get("fraction")
        if fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 100)
            self.progress.setValue(int(fraction * 100))

    def _on_task_done(self, result: dict) -> None:
        self.result = result
        self.progress.setRange(0, 100)
        self.progress.setValue(100)
        d = result if isinstance(result, dict) else {}
        where = d.get("path") or d.get("out") or d.get("out_dir") or d.get("gguf_path") or ""
        self.result_path = Path(str(where)) if where else None
        text = f"Done. {where}".strip()
        if d.get("choice"):  # which fuse of a quantized base was written, and why
            text += "\n" + d["choice"]
        rt = d.get("round_trip") or {}
        if rt and not rt.get("all_agree"):
            text += "\nThe fused model does not answer exactly like base + adapter."
        self._set_status(text)
        self.reveal_button.setVisible(self.result_path is not None)
        self.copy_button.setVisible(self.result_path is not None)
        self._finish()

    def _on_task_failed(self, message: str, hint: str) -> None:
        self.task = None
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self._set_status(f"The export failed: {message}" + (f"\n{hint}" if hint else ""))
        self._finish()

    def _on_task_cancelled(self) -> None:
        self._set_status("Cancelled; nothing was left half-written.")
        self._finish()

    def _set_running(self, running: bool) -> None:
        self.kind.setEnabled(not running)
        self.choose_button.setEnabled(not running)
        self.export_button.setEnabled(not running)

    def _finish(self) -> None:
        self._set_running(False)
        self.cancel_button.setText("Close")

    def _set_status(self, text: str) -> None:
        """Status text, with the dialog grown to show all of it (a wrapped label is otherwise cut)."""
        self.status.setText(text)
        QTimer.singleShot(0, self._fit_status)

    def _fit_status(self) -> None:
        layout = self.layout()
        if layout is None:
            return
        need = (
            layout.totalHeightForWidth(self.width())
            if layout.hasHeightForWidth()
            else layout.totalSizeHint().height()
        )
        if need > self.height():
            self.resize(self.width(), need)

    # -- after success ------------------------------------------------------------------------
    def _on_reveal_clicked(self) -> None:
        from app.reveal import reveal

        if self.result_path is not None:
            reveal(self.result_path, self)

    def _on_copy_clicked(self) -> None:
        if self.result_path is not None:
            QGuiApplication.clipboard().setText(str(self.result_path))

    def _on_cancel_clicked(self) -> None:
        if self.job.running:
            self.job.cancel()
            self._set_status("Cancelling…")
        elif self.task is None:  # the destination check is short: it is not cancelled
            self.reject()

    def reject(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.job.cancel()
        super().reject()
