"""Models page: recommended models (size, training memory, download with progress and cancel) and
the local library (size, quantization, chat template; import a folder, quantize, delete)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.jobs import JobController
from app.tasks import Task

GB = 1024**3


def _size(n: int) -> str:
    if n >= GB:
        return f"{n / GB:.1f} GB"
    if n >= 1024**2:
        return f"{n / 1024**2:.0f} MB"
    return f"{n / 1024:.0f} KB"


class DownloadCellWidget(QWidget):
    """A Download button that turns into a progress bar with Cancel."""

    sig_download = Signal(str)
    sig_cancel = Signal(str)

    def __init__(self, repo_id: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.repo_id = repo_id
        self.button = QPushButton("Download")
        self.button.clicked.connect(lambda: self.sig_download.emit(self.repo_id))
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setFixedHeight(10)
        self.cancel = QPushButton("Cancel")
        self.cancel.clicked.connect(lambda: self.sig_cancel.emit(self.repo_id))
        self.button.setMinimumWidth(120)
        for b in (self.button, self.cancel):
            b.setObjectName("cellButton")  # compact: the bezel fits a table row
        self.button.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Fixed)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 8, 2)
        layout.addStretch(1)
        layout.addWidget(self.button)
        layout.addWidget(self.bar, 1)
        layout.addWidget(self.cancel)
        self.set_idle("Download")

    def set_idle(self, label: str) -> None:
        self.button.setText(label)
        self.button.setVisible(True)
        self.bar.setVisible(False)
        self.cancel.setVisible(False)

    def set_progress(self, fraction: float | None) -> None:
        self.button.setVisible(False)
        self.bar.setVisible(True)
        self.cancel.setVisible(True)
        if fraction is None:
            self.bar.setRange(0, 0)
        else:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(fraction * 1000))


class ModelsPage(QWidget):
    sig_use_for_training = Signal(str)
    sig_library_changed = Signal()
    sig_message = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.library: list = []
        self.recommended: list = []
        self.downloads: dict[str, Task] = {}
        self.cells: dict[str, DownloadCellWidget] = {}
        self._tasks: list[Task] = []
        self._quantizing = ""
        self.quantize_job = JobController("quantization", self)  # MLX in a worker process
        self.quantize_job.sig_progress.connect(self._on_quantize_progress)
        self.quantize_job.sig_finished.connect(self._on_quantized)
        self.quantize_job.sig_failed.connect(self._on_quantize_failed)
        title = QLabel("Models")
        title.setObjectName("pageTitle")
        self.status = QLabel("")
        self.status.setObjectName("muted")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        rec_title = QLabel("Recommended for this Mac")
        rec_title.setObjectName("sectionTitle")
        self.rec_table = QTreeWidget()
        self.rec_table.setHeaderLabels(
            ["Model", "Parameters", "Download", "Training memory", "Notes", ""]
        )
        self.rec_table.setRootIsDecorated(False)
        self.rec_table.setUniformRowHeights(True)
        h = self.rec_table.header()
        h.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        for i in (1, 2, 3):
            h.setSectionResizeMode(i, QHeaderView.ResizeMode.ResizeToContents)
        h.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        h.setSectionResizeMode(5, QHeaderView.ResizeMode.Fixed)
        h.resizeSection(5, 180)
        h.setStretchLastSection(False)

        lib_title = QLabel("On this Mac")
        lib_title.setObjectName("sectionTitle")
        self.lib_table = QTreeWidget()
        self.lib_table.setObjectName("libraryTable")
        self.lib_table.setHeaderLabels(
            ["Name", "Kind", "Size", "Quantization", "Chat template", "Path"]
        )
        self.lib_table.setRootIsDecorated(False)
        self.lib_table.setAlternatingRowColors(True)
        lh = self.lib_table.header()
        for i in range(5):
            lh.setSectionResizeMode(i, QHeaderView.ResizeMode.ResizeToContents)
        lh.setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        self.lib_table.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # paths keep both ends
        self.lib_table.itemSelectionChanged.connect(self._update_buttons)
        self.lib_empty = QLabel(
            "No models yet: download a recommended one, or import a folder "
            "(drag it onto the window)."
        )
        self.lib_empty.setObjectName("muted")

        self.import_button = QPushButton("Import Folder…")
        self.import_button.clicked.connect(self.import_folder_dialog)
        self.use_button = QPushButton("Use for Training")
        self.use_button.setObjectName("primary")
        self.use_button.clicked.connect(self._on_use_clicked)
        self.quantize_button = QPushButton("Quantize…")
        self.quantize_button.clicked.connect(self._on_quantize_clicked)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setObjectName("destructive")
        self.delete_button.clicked.connect(self._on_delete_clicked)
        self.busy = QProgressBar()
        self.busy.setRange(0, 0)
        self.busy.setFixedWidth(120)
        self.busy.setVisible(False)
        actions = QHBoxLayout()
        actions.addWidget(self.use_button)
        actions.addWidget(self.import_button)
        actions.addWidget(self.quantize_button)
        actions.addWidget(self.busy)
        actions.addStretch(1)
        actions.addWidget(self.delete_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addWidget(title)
        layout.addWidget(rec_title)
        layout.addWidget(self.rec_table, 3)
        layout.addWidget(lib_title)
        layout.addWidget(self.lib_table, 2)
        layout.addWidget(self.lib_empty)
        layout.addLayout(actions)
        layout.addWidget(self.status)
        self._update_buttons()

    # -- loading ------------------------------------------------------------------------------
    def refresh(self) -> None:
        from app.services import library_rows, recommended_rows

        if not self.recommended:
            t = Task(recommended_rows)
            t.sig_done.connect(self._on_recommended_loaded)
            t.sig_failed.connect(
                lambda m, h: self.status.setText(f"The recommended list cannot be read: {m}")
            )
            self._keep(t)
        t = Task(library_rows)
        t.sig_done.connect(self._on_library_loaded)
        t.sig_failed.connect(
            lambda m, h: self.status.setText(f"The library cannot be read: {m} {h}")
        )
        self._keep(t)

    def _keep(self, task: Task) -> Task:
        self._tasks = [t for t in self._tasks if not t.finished]
        self._tasks.append(task)
        return task.start(self)

    def _on_recommended_loaded(self, recs) -> None:
        self.recommended = recs
        self.rec_table.clear()
        self.cells.clear()
        for r in recs:
            item = QTreeWidgetItem(
                [
                    r.name,
                    f"{r.params_b:g} B",
                    f"{r.download_gb:g} GB",
                    f"{r.train_gb:g} GB",
                    r.notes,
                    "",
                ]
            )
            item.setToolTip(0, r.repo_id)
            item.setToolTip(
                3,
                "Peak memory of LoRA training at batch 2, 512 tokens, rank 8, 16 "
                "layers; the Train page re-estimates for your settings.",
            )
            item.setToolTip(4, r.notes)
            self.rec_table.addTopLevelItem(item)
            cell = DownloadCellWidget(r.repo_id)
            cell.sig_download.connect(self.download)
            cell.sig_cancel.connect(self.cancel_download)
            self.cells[r.repo_id] = cell
            self.rec_table.setItemWidget(item, 5, cell)
        self._mark_downloaded()

    def _on_library_loaded(self, rows) -> None:
        self.library = rows
        self.lib_table.clear()
        for r in rows:
            item = QTreeWidgetItem(
                [
                    r.name,
                    r.kind,
                    _size(r.size_bytes),
                    r.quantization or "—",
                    r.chat_template or "—",
                    r.path,
                ]
            )
            if r.problem:
                item.setToolTip(0, r.problem)
                item.setText(3, "⚠ " + r.problem[:40])
            item.setData(0, Qt.ItemDataRole.UserRole, r.name)
            item.setToolTip(5, r.path)
            self.lib_table.addTopLevelItem(item)
        self.lib_empty.setVisible(not rows)
        if rows and not self.lib_table.selectedItems():
            self.lib_table.topLevelItem(0).setSelected(True)  # Use for Training is one click away
        self._mark_downloaded()
        self._update_buttons()

    def _mark_downloaded(self) -> None:
        have = {r.name for r in self.library}
        for repo_id, cell in self.cells.items():
            if repo_id not in self.downloads:
                cell.set_idle("Downloaded ✓" if repo_id in have else "Download")
                cell.button.setEnabled(repo_id not in have)

    def selected(self):
        items = self.lib_table.selectedItems()
        if not items:
            return None
        name = items[0].data(0, Qt.ItemDataRole.UserRole)
        return next((r for r in self.library if r.name == name), None)

    def select_model(self, ref: str) -> None:
        for i in range(self.lib_table.topLevelItemCount()):
            item = self.lib_table.topLevelItem(i)
            row = next(
                (r for r in self.library if r.name == item.data(0, Qt.ItemDataRole.UserRole)), None
            )
            item.setSelected(row is not None and (row.path == ref or row.name == ref))
        if self.selected() is not None:
            self.status.setText(
                "Quantizing to 4 bits makes the model about 4× smaller in memory: press Quantize…"
            )

    def _update_buttons(self) -> None:
        row = self.selected()
        self.use_button.setEnabled(row is not None and row.available)
        self.quantize_button.setEnabled(
            row is not None and row.available and "group size" not in row.quantization
        )
        self.delete_button.setEnabled(row is not None and row.kind != "cached")

    # -- downloads ----------------------------------------------------------------------------
    def download(self, repo_id: str) -> None:
        from app.services import download_model

        if repo_id in self.downloads:
            return
        cell = self.cells.get(repo_id)
        task = Task(download_model, repo_id)
        self.downloads[repo_id] = task
        if cell:
            cell.set_progress(None)
        task.sig_progress.connect(
            lambda p, c=cell: c and c.set_progress(getattr(p, "fraction", None))
        )
        task.sig_done.connect(lambda _e, r=repo_id: self._on_download_ended(r, f"{r} downloaded."))
        task.sig_failed.connect(
            lambda m, h, r=repo_id: self._on_download_ended(r, f"{m} {h}".strip())
        )
        task.sig_cancelled.connect(
            lambda r=repo_id: self._on_download_ended(
                r, f"Download of {r} cancelled; the bytes so far are kept for next time."
            )
        )
        task.start(self)

    def cancel_download(self, repo_id: str) -> None:
        task = self.downloads.get(repo_id)
        if task is not None:
            task.cancel()

    def _on_download_ended(self, repo_id: str, message: str) -> None:
        self.downloads.pop(repo_id, None)
        self.status.setText(message)
        self.refresh()
        self.sig_library_changed.emit()

    # -- library actions ----------------------------------------------------------------------
    def import_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a model folder", str(Path.home()))
        if folder:
            self.import_folder(folder)

    def import_folder(self, folder: str | Path) -> None:
        from app.services import import_model

        self.status.setText(f"Checking {Path(folder).name}…")
        self._run_library_task(
            Task(import_model, str(folder)),
            lambda e: (
                f"Imported {e.name} ("
                + (
                    "the folder stays where it is)."
                    if e.kind == "imported"
                    else "converted from GGUF)."
                )
            ),
        )

    def _on_quantize_clicked(self) -> None:
        row = self.selected()
        if row is None:
            return
        bits, ok = QInputDialog.getItem(
            self,
            "Quantize",
            f"Write a quantized copy of {row.name}:",
            ["4-bit (smallest)", "8-bit (closest to the original)"],
            0,
            False,
        )
        if not ok:
            return
        self.quantize(row.path, 4 if bits.startswith("4") else 8, row.name)

    def quantize(self, path: str, bits: int, name: str | None = None) -> None:
        """Write a quantized copy of a model (`lathe-engine models quantize`) in a worker process."""
        if self.quantize_job.running:
            self.status.setText("A quantization is running already; wait for it to finish.")
            return
        self._quantizing = f"Quantizing {name or Path(path).name} to {bits} bits"
        self.status.setText(f"{self._quantizing}…")
        self.busy.setVisible(True)
        self.quantize_job.start("models", "quantize", path, f"--bits={bits}", "--progress")

    def _on_quantize_progress(self, p: dict) -> None:
        fraction = p.get("fraction")
        done = f" ({int(fraction * 100)}% written)" if p.get("stage") == "writing" else ""
        self.status.setText(f"{self._quantizing}: {p.get('stage', '')}{done}…")

    def _on_quantized(self, entry: dict) -> None:
        self.busy.setVisible(False)
        self.status.setText(f"Wrote {entry['name']} ({_size(int(entry['size_bytes']))}).")
        self.refresh()
        self.sig_library_changed.emit()

    def _on_quantize_failed(self, message: str, hint: str) -> None:
        self.busy.setVisible(False)
        self.status.setText(f"{message} {hint}".strip())

    def _on_delete_clicked(self) -> None:
        row = self.selected()
        if row is None:
            return
        what = {
            "imported": "Lathe forgets it; your folder is not touched.",
            "converted": "Its folder is deleted from the workspace.",
            "downloaded": "Its files are removed from the Hugging Face cache if Lathe downloaded them.",
        }
        answer = QMessageBox.question(
            self,
            "Delete model?",
            f"Delete {row.name}?\n\n{what.get(row.kind, '')}",
            QMessageBox.StandardButton.Cancel | QMessageBox.StandardButton.Yes,
            QMessageBox.StandardButton.Cancel,
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_model(row.name)

    def delete_model(self, name: str) -> None:
        from app.services import delete_model

        self._run_library_task(
            Task(delete_model, name),
            lambda d: (
                f"Deleted {d['name']}"
                + (f", freed {_size(d['freed_bytes'])}." if d.get("freed_bytes") else ".")
            ),
        )

    def _run_library_task(self, task: Task, done_text) -> None:
        self.busy.setVisible(True)

        def done(result):
            self.busy.setVisible(False)
            self.status.setText(done_text(result))
            self.refresh()
            self.sig_library_changed.emit()

        def failed(message, hint):
            self.busy.setVisible(False)
            self.status.setText(f"{message} {hint}".strip())

        task.sig_done.connect(done)
        task.sig_failed.connect(failed)
        self._keep(task)

    def _on_use_clicked(self) -> None:
        row = self.selected()
        if row is not None:
            self.sig_use_for_training.emit(row.path)
