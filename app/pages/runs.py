"""Runs page: every run with status, model, dataset, steps, best validation loss and duration;
the selected run's curves, config and evaluation; resume, chat, export, reveal, delete.

Chat and export take a run folder, or `RUN:STEP` for one checkpoint ("Use this checkpoint" on the
Evaluate tab)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.chart import LossChartWidget
from app.eval_widget import EvalResultsWidget, load_run_view
from app.names import run_label
from app.reveal import reveal
from app.tasks import Task

COLUMNS = ["Run", "Status", "Model", "Dataset", "Steps", "Best val loss", "Duration", "Created"]
STATE_LABELS = {
    "completed": "✓ completed",
    "stopped": "■ stopped",
    "failed": "✕ failed",
    "interrupted": "⚠ interrupted",
    "running": "● running",
    "created": "○ created",
}


def format_duration(seconds: float | None) -> str:
    """A run's training time, written as the Train page writes it ("1 min 06 s")."""
    from app.pages.train import format_eta

    return "" if seconds is None else format_eta(seconds)


class RunsPage(QWidget):
    sig_resume_requested = Signal(str)
    sig_chat_requested = Signal(str)
    sig_export_requested = Signal(str)
    sig_refreshed = Signal()

    def __init__(self, controller, parent: QWidget | None = None):
        super().__init__(parent)
        self.controller = controller
        self.rows = []
        self._task: Task | None = None
        self._detail_task: Task | None = None
        self._eval_task: Task | None = None
        self.checkpoint_menu: QMenu | None = None
        self.title = QLabel("Runs")
        self.title.setObjectName("pageTitle")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh)
        top = QHBoxLayout()
        top.addWidget(self.title)
        top.addStretch(1)
        top.addWidget(self.refresh_button)

        self.table = QTreeWidget()
        self.table.setObjectName("runsTable")
        self.table.setHeaderLabels(COLUMNS)
        self.table.setRootIsDecorated(False)
        self.table.setAlternatingRowColors(True)
        self.table.setUniformRowHeights(True)
        self.table.setSortingEnabled(False)
        header = self.table.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for i in range(1, len(COLUMNS)):
            header.setSectionResizeMode(i, QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._on_table_selection_changed)
        self.empty = QLabel(
            "No runs yet. Start one on the Train page, or try the demo from the "
            "Welcome view (Help ▸ Welcome)."
        )
        self.empty.setObjectName("muted")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)

        self.detail_title = QLabel("")
        self.detail_title.setObjectName("sectionTitle")
        self.detail_title.setWordWrap(True)
        self.chart = LossChartWidget()
        self.chart.placeholder = "Select a run to see its curves."
        self.config_view = QPlainTextEdit()
        self.config_view.setReadOnly(True)
        self.config_view.setObjectName("log")
        self.eval_view = EvalResultsWidget()
        self.eval_view.sig_use_checkpoint.connect(self._on_eval_view_use_checkpoint)
        self.tabs = tabs = QTabWidget()
        tabs.addTab(self.chart, "Curves")
        tabs.addTab(self.config_view, "Config")
        tabs.addTab(self.eval_view, "Evaluate")
        self.resume_button = QPushButton("Resume")
        self.chat_button = QPushButton("Open in Chat")
        self.export_button = QPushButton("Export…")
        self.reveal_button = QPushButton(
            "Reveal in Finder" if sys.platform == "darwin" else "Open folder"
        )
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setObjectName("destructive")
        actions = QHBoxLayout()
        for b in (self.resume_button, self.chat_button, self.export_button, self.reveal_button):
            actions.addWidget(b)
        actions.addStretch(1)
        actions.addWidget(self.delete_button)
        self.resume_button.clicked.connect(self._on_resume_clicked)
        self.chat_button.clicked.connect(lambda: self._emit_selected(self.sig_chat_requested))
        self.export_button.clicked.connect(lambda: self._emit_selected(self.sig_export_requested))
        self.reveal_button.clicked.connect(self._on_reveal_clicked)
        self.delete_button.clicked.connect(self._on_delete_clicked)
        detail = QWidget()
        dl = QVBoxLayout(detail)
        dl.setContentsMargins(0, 8, 0, 0)
        dl.addWidget(self.detail_title)
        dl.addWidget(tabs, 1)
        dl.addLayout(actions)

        split = QSplitter(Qt.Orientation.Vertical)
        upper = QWidget()
        ul = QVBoxLayout(upper)
        ul.setContentsMargins(0, 0, 0, 0)
        ul.addWidget(self.table)
        ul.addWidget(self.empty)
        split.addWidget(upper)
        split.addWidget(detail)
        self.detail = detail
        split.setSizes([260, 420])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addLayout(top)
        layout.addWidget(split, 1)
        self._update_buttons()
        controller.sig_finished.connect(lambda *_: self.refresh())
        controller.sig_started.connect(lambda *_: self.refresh())

    # -- data ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        from app.services import run_rows

        if self._task is not None and self._task.running:
            self._task.sig_ended.connect(self.refresh, Qt.ConnectionType.SingleShotConnection)
            return
        self._task = Task(run_rows)
        self._task.sig_done.connect(self._on_rows_loaded)
        self._task.sig_failed.connect(
            lambda m, h: self.empty.setText(f"Runs cannot be listed: {m}")
        )
        self._task.start(self)

    def _on_rows_loaded(self, rows) -> None:
        selected = self.selected_row()
        self.rows = rows
        self.table.blockSignals(True)
        self.table.clear()
        for row in rows:
            steps = f"{row.step}/{row.total_steps}" if row.total_steps else str(row.step or "")
            item = QTreeWidgetItem(
                [
                    row.name if row.name != row.id else row.id,
                    STATE_LABELS.get(row.state, row.state),
                    row.model,
                    row.dataset,
                    steps,
                    "" if row.best_val_loss is None else f"{row.best_val_loss:.4f}",
                    format_duration(row.duration),
                    time.strftime("%d %b %H:%M", time.localtime(row.created))
                    if row.created
                    else "",
                ]
            )
            item.setToolTip(0, str(row.path))
            item.setToolTip(2, row.model_path or row.model)
            item.setToolTip(3, row.dataset_path or row.dataset)
            if row.reason:
                item.setToolTip(1, row.reason)
            item.setData(0, Qt.ItemDataRole.UserRole, str(row.path))
            self.table.addTopLevelItem(item)
            if selected is not None and row.path == selected.path:
                item.setSelected(True)
        self.table.blockSignals(False)
        self.empty.setVisible(not rows)
        self.detail.setVisible(bool(rows))  # no empty tabs and dead buttons without a run
        self.table.setVisible(bool(rows))
        if self.table.selectedItems():
            self._on_table_selection_changed()
        elif rows:
            self.table.topLevelItem(0).setSelected(True)
        else:
            self._update_buttons()
        self.sig_refreshed.emit()

    def selected_row(self):
        items = self.table.selectedItems()
        if not items:
            return None
        path = items[0].data(0, Qt.ItemDataRole.UserRole)
        return next((r for r in self.rows if str(r.path) == path), None)

    def select_run(self, run_dir: str | Path) -> None:
        for i in range(self.table.topLevelItemCount()):
            item = self.table.topLevelItem(i)
            item.setSelected(item.data(0, Qt.ItemDataRole.UserRole) == str(run_dir))

    def _on_table_selection_changed(self) -> None:
        from app.services import run_details

        row = self.selected_row()
        self._update_buttons()
        if row is None:
            self.detail_title.setText("")
            self.chart.clear()
            self.config_view.clear()
            return
        title = f"{run_label(row.name, row.id)} · {STATE_LABELS.get(row.state, row.state)}"
        if row.reason and row.state in ("failed", "interrupted", "stopped"):
            title += f" · {row.reason}"
        self.detail_title.setText(title)
        self._detail_task = Task(run_details, row.path, self.chart.smoothing)
        self._detail_task.sig_done.connect(lambda res, p=row.path: self._on_details_loaded(p, res))
        self._detail_task.start(self)
        if self.eval_view.busy:
            return  # an evaluation is running for the shown run; it keeps the tab until it ends
        self._eval_task = Task(load_run_view, row.path)
        self._eval_task.sig_done.connect(lambda res, p=row.path: self._on_eval_view_loaded(p, res))
        self._eval_task.start(self)

    def _on_eval_view_loaded(self, path, result) -> None:
        row = self.selected_row()
        if row is None or row.path != path or self.eval_view.busy:
            return
        self.eval_view.show_run(*result)

    def _on_details_loaded(self, path, result) -> None:
        row = self.selected_row()
        if row is None or row.path != path:
            return
        text, curves = result
        self.config_view.setPlainText(text)
        self.chart.clear()
        self.chart.merge_history(curves)  # built on the worker thread from events.jsonl
        self.chart.update()
        if not self.chart.point_count:
            self.chart.placeholder = "This run has no recorded steps."

    def _update_buttons(self) -> None:
        row = self.selected_row()
        busy = (
            row is not None
            and self.controller.active
            and self.controller.run_dir is not None
            and Path(self.controller.run_dir) == Path(row.path)
        )
        has = row is not None
        self.resume_button.setEnabled(
            has
            and row.state in ("stopped", "failed", "interrupted", "created")
            and not self.controller.active
        )
        self.chat_button.setEnabled(has and row.has_adapter)
        self.export_button.setEnabled(has and row.has_adapter and not busy)
        self.reveal_button.setEnabled(has)
        self.delete_button.setEnabled(has and not busy and row.state != "running")

    # -- actions ------------------------------------------------------------------------------
    def _emit_selected(self, signal) -> None:
        row = self.selected_row()
        if row is not None:
            signal.emit(str(row.path))

    def _on_eval_view_use_checkpoint(self, run_id: str, step: int) -> None:
        """ "Use this checkpoint": offer it (RUN:STEP) to chat and to export."""
        run_dir = self.eval_view.run_dir
        if run_dir is None or run_dir.name != run_id:
            return
        spec = f"{run_dir}:{step}"
        menu = QMenu(self)
        chat = menu.addAction(f"Open step {step} in Chat")
        chat.triggered.connect(lambda: self.sig_chat_requested.emit(spec))
        export = menu.addAction(f"Export step {step}…")
        export.triggered.connect(lambda: self.sig_export_requested.emit(spec))
        if self.checkpoint_menu is not None:
            self.checkpoint_menu.deleteLater()
        self.checkpoint_menu = menu
        menu.popup(QCursor.pos())

    def _on_resume_clicked(self) -> None:
        self._emit_selected(self.sig_resume_requested)

    def _on_reveal_clicked(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        reveal(row.path, self)  # says so visibly where there is no file manager to ask

    def _on_delete_clicked(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        answer = QMessageBox.question(
            self,
            "Delete run?",
            f"Delete the run {run_label(row.name, row.id)}?\n\nIts adapter, checkpoints and curves are removed from "
            "disk. This cannot be undone.",
            QMessageBox.StandardButton.Cancel | QMessageBox.StandardButton.Yes,
            QMessageBox.StandardButton.Cancel,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        self.delete_run(row.path)

    def delete_run(self, path: Path) -> None:
        from app.services import delete_run

        task = Task(delete_run, path)
        task.sig_done.connect(lambda _: self.refresh())
        task.sig_failed.connect(
            lambda m, h: QMessageBox.warning(self, "Cannot delete", f"{m}\n{h}".strip())
        )
        self._delete_task = task.start(self)
