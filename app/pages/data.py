"""Data page: drop or open a dataset; its import report (format and why, counts, token length
histogram with the max-sequence-length line, problems with file and line, the record behind a
problem); format override, CSV column mapping, and a token view of any example."""

from __future__ import annotations

import html
import json
from pathlib import Path

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPalette, QPen
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.jobs import JobController
from app.names import id_name, id_time
from app.tasks import Task
from app.theme import fit_popup

FORMAT_CHOICES = [
    (None, "Detect automatically"),
    ("chat", "OpenAI chat (messages)"),
    ("completion", "prompt/completion"),
    ("alpaca", "Alpaca (instruction/input/output)"),
    ("sharegpt", "ShareGPT (conversations)"),
    ("preference", "preference pairs (chosen/rejected)"),
    ("text", "plain text"),
]
MAP_TARGETS = ["prompt", "completion", "system", "text"]


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class HistogramWidget(QWidget):
    """Token lengths of the training examples, with the max-sequence-length line."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.edges: list[int] = []
        self.counts: list[int] = []
        self.limit = 0
        self.setMinimumHeight(150)

    def set_data(self, histogram: dict, limit: int) -> None:
        self.edges = list(histogram.get("edges") or [])
        self.counts = list(histogram.get("counts") or [])
        self.limit = int(limit or 0)
        self.update()

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.Text)
        muted = QColor(text)
        muted.setAlpha(140)
        p.fillRect(self.rect(), pal.color(QPalette.ColorRole.Base))
        if not self.counts:
            p.setPen(muted)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No token lengths yet.")
            return
        rect = QRectF(40, 10, self.width() - 56, self.height() - 40)
        lo = self.edges[0]
        hi = max(
            self.edges[-1],
            int(self.limit * 1.05) if self.limit and self.limit < self.edges[-1] * 3 else 0,
        )
        top = max(self.counts) or 1
        span = max(1, hi - lo)
        bar = QColor(10, 132, 255, 190)
        over = QColor(255, 69, 58, 200)
        for i, c in enumerate(self.counts):
            x0 = rect.left() + (self.edges[i] - lo) / span * rect.width()
            x1 = rect.left() + (self.edges[i + 1] - lo) / span * rect.width()
            h = c / top * rect.height()
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(over if self.limit and self.edges[i] >= self.limit else bar)
            p.drawRect(QRectF(x0 + 0.5, rect.bottom() - h, max(1.0, x1 - x0 - 1), h))
        p.setPen(muted)
        p.drawText(
            QRectF(0, rect.bottom() + 4, rect.left() + 30, 16), Qt.AlignmentFlag.AlignLeft, str(lo)
        )
        p.drawText(
            QRectF(rect.right() - 80, rect.bottom() + 4, 80, 16),
            Qt.AlignmentFlag.AlignRight,
            str(hi),
        )
        p.drawText(
            QRectF(rect.left(), rect.bottom() + 4, rect.width(), 16),
            Qt.AlignmentFlag.AlignCenter,
            "tokens per example",
        )
        p.drawText(
            QRectF(0, rect.top() - 2, rect.left() - 4, 14), Qt.AlignmentFlag.AlignRight, str(top)
        )
        if self.limit:
            if self.limit <= hi:
                x = rect.left() + (self.limit - lo) / span * rect.width()
                label = f"max {self.limit}"
            else:
                x = rect.right()
                label = f"max {self.limit} →"
            p.setPen(QPen(QColor(255, 69, 58), 1.5, Qt.PenStyle.DashLine))
            p.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))
            p.setPen(QColor(255, 69, 58))
            p.drawText(
                QRectF(x - 104, rect.top(), 100, 16),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                label,
            )
        p.end()


def token_html(view) -> str:
    """Tokens as coloured spans: trained tokens highlighted, masked (prompt) tokens dimmed."""
    parts = []
    for piece in view.pieces:
        text = html.escape(piece.text).replace("\n", "↵<br>")
        if not text:
            continue
        if piece.trained:
            parts.append(f'<span style="background-color: rgba(52,199,89,0.35);">{text}</span>')
        else:
            parts.append(f'<span style="color: rgba(128,128,128,0.95);">{text}</span>')
    return (
        '<div style="font-family: Menlo, monospace; white-space: pre-wrap;">'
        + "".join(parts)
        + "</div>"
    )


class ColumnMapDialog(QDialog):
    """Map CSV columns to prompt / completion / system / text."""

    def __init__(self, columns: list[str], mapping: dict, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Map columns")
        self.combos: dict[str, QComboBox] = {}
        form = QFormLayout()
        for target in MAP_TARGETS:
            combo = QComboBox()
            combo.addItem("(none)", "")
            for c in columns:
                combo.addItem(c, c)
            if mapping.get(target) in columns:
                combo.setCurrentIndex(columns.index(mapping[target]) + 1)
            self.combos[target] = combo
            form.addRow(target.capitalize(), combo)
        note = QLabel(
            "Prompt + completion make a question/answer pair; text alone trains on "
            "plain text. System is optional."
        )
        note.setWordWrap(True)
        note.setObjectName("muted")
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def mapping(self) -> dict:
        return {t: c.currentData() for t, c in self.combos.items() if c.currentData()}


def choose_dataset_file(parent) -> str:
    """The dataset file the user picks in the Open dialog ("" when cancelled); the window's File >
    Open and the Data page's Open… share it."""
    path, _ = QFileDialog.getOpenFileName(
        parent,
        "Open a dataset",
        str(Path.home()),
        "Datasets (*.jsonl *.json *.csv *.tsv *.txt *.md *.parquet *.zip);;All files (*)",
    )
    return path


class FillPlaceholdersDialog(QDialog):
    """A value for each `{{word}}` placeholder the report found (empty leaves it as it is)."""

    def __init__(self, words: list[str], fill: dict, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Fill placeholders")
        self.edits: dict[str, QLineEdit] = {}
        form = QFormLayout()
        for word in words:
            edit = QLineEdit(fill.get(word, ""))
            edit.setPlaceholderText("leave {{" + word + "}} as it is")
            self.edits[word] = edit
            form.addRow("{{" + word + "}}", edit)
        note = QLabel("Each placeholder is replaced by its value in every example at import.")
        note.setWordWrap(True)
        note.setObjectName("muted")
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(buttons)

    def fill(self) -> dict:
        return {w: e.text() for w, e in self.edits.items() if e.text()}


class DataPage(QWidget):
    sig_report_ready = Signal(object)
    sig_import_failed = Signal(str)
    sig_use_for_training = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.path: Path | None = None
        self.report = None
        self.model_dir: Path | None = None
        self.mapping: dict = {}
        self.fill: dict = {}  # {{word}} placeholder -> value, filled at import
        self.preferred_model: str | None = None  # the Train page's model (set by the window)
        self.max_seq_length = 2048
        # The import and the token view run in worker processes (app.data_import): one job each;
        # a newer import replaces the running one, whose late signals are then ignored.
        self.job: JobController | None = None
        self.view_job: JobController | None = None
        self.last_error = ""

        title = QLabel("Data")
        title.setObjectName("pageTitle")
        self.open_button = QPushButton("Open…")
        self.open_button.clicked.connect(self.open_dialog)
        self.open_folder_button = QPushButton("Open Folder…")
        self.open_folder_button.setToolTip(
            "A folder of split files (train.jsonl, valid.jsonl, …), like the bundled sample."
        )
        self.open_folder_button.clicked.connect(self.open_folder_dialog)
        self.format = QComboBox()
        for key, label in FORMAT_CHOICES:
            self.format.addItem(label, key)
        self.format.setToolTip("Override the detected format and read the file again.")
        self.format.activated.connect(self._on_format_activated)
        self.map_button = QPushButton("Columns…")
        self.map_button.setToolTip("Choose which CSV columns hold the prompt and the answer.")
        self.map_button.clicked.connect(self._on_map_clicked)
        self.map_button.setVisible(False)
        self.fill_button = QPushButton("Fill placeholders…")
        self.fill_button.setToolTip("Give values for {{word}} placeholders found in the examples.")
        self.fill_button.clicked.connect(self._on_fill_clicked)
        self.fill_button.setVisible(False)
        # Datasets imported before (the workspace's), to pick one again.
        self.imported = QComboBox()
        self.imported.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.imported.setMinimumContentsLength(18)
        self.imported.setToolTip("Show the report of a dataset you imported before.")
        self.imported.activated.connect(self._on_imported_activated)
        self.imported.setVisible(False)
        top = QHBoxLayout()
        top.addWidget(title)
        top.addStretch(1)
        top.addWidget(self.imported)
        top.addSpacing(12)
        top.addWidget(QLabel("Format"))
        top.addWidget(self.format)
        top.addWidget(self.map_button)
        top.addWidget(self.fill_button)
        top.addWidget(self.open_button)
        top.addWidget(self.open_folder_button)

        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress_label = QLabel("")
        self.progress_label.setObjectName("muted")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        prog = QHBoxLayout()
        prog.addWidget(self.progress, 1)
        prog.addWidget(self.progress_label)
        prog.addWidget(self.cancel_button)
        self.progress_row = QWidget()
        self.progress_row.setLayout(prog)
        self.progress_row.setVisible(False)

        # empty state: a drop zone
        self.drop_zone = QLabel(
            "Drop a dataset here — or anywhere on the window\n\n"
            "JSONL, JSON, CSV, TSV, TXT, Markdown, Parquet, a folder or a zip.\n"
            "Chat (messages), prompt/completion, Alpaca, ShareGPT and plain "
            "text are recognised."
        )
        self.drop_zone.setObjectName("dropZone")
        self.drop_zone.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.drop_zone.setWordWrap(True)
        self.error = QLabel("")
        self.error.setObjectName("errorText")
        self.error.setWordWrap(True)
        self.error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error.setVisible(False)

        # report
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.histogram = HistogramWidget()
        self.token_stats = QLabel()
        self.token_stats.setObjectName("muted")
        self.token_stats.setWordWrap(True)
        self.use_button = QPushButton("Use for training")
        self.use_button.setObjectName("primary")
        self.use_button.clicked.connect(self._on_use_clicked)

        self.problems = QListWidget()
        self.problems.currentItemChanged.connect(self._on_problem_selected)
        self.record = QPlainTextEdit()
        self.record.setReadOnly(True)
        self.record.setObjectName("log")
        self.record.setPlaceholderText("Click a problem to see its record.")
        psplit = QSplitter(Qt.Orientation.Vertical)
        psplit.addWidget(self.problems)
        psplit.addWidget(self.record)

        self.example_index = QSpinBox()
        self.example_index.setRange(0, 0)
        self.example_index.setPrefix("example ")
        self.show_tokens = QPushButton("Show tokens")
        self.show_tokens.clicked.connect(self.load_token_view)
        legend = QLabel(
            '<span style="background-color: rgba(52,199,89,0.35);">&nbsp;trained&nbsp;</span>'
            '&nbsp;&nbsp;<span style="color: gray;">masked (prompt, template)</span>'
        )
        trow = QHBoxLayout()
        trow.addWidget(self.example_index)
        trow.addWidget(self.show_tokens)
        trow.addSpacing(12)
        trow.addWidget(legend)
        trow.addStretch(1)
        self.tokens = QTextBrowser()
        self.tokens.setOpenLinks(False)
        self.token_info = QLabel("")
        self.token_info.setObjectName("muted")
        self.token_info.setWordWrap(True)
        tokens_tab = QWidget()
        tl = QVBoxLayout(tokens_tab)
        tl.addLayout(trow)
        tl.addWidget(self.tokens, 1)
        tl.addWidget(self.token_info)

        self.tabs = QTabWidget()
        self.tabs.addTab(psplit, "Problems")
        self.tabs.addTab(tokens_tab, "Token view")

        left = QVBoxLayout()
        left.addWidget(self.summary)
        left.addStretch(1)
        left.addWidget(self.use_button, 0, Qt.AlignmentFlag.AlignLeft)
        right = QVBoxLayout()
        hist_title = QLabel("Token lengths (training examples)")
        hist_title.setObjectName("sectionTitle")
        right.addWidget(hist_title)
        right.addWidget(self.histogram, 1)
        right.addWidget(self.token_stats)
        grid = QGridLayout()
        grid.addLayout(left, 0, 0)
        grid.addLayout(right, 0, 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        report_box = QWidget()
        rl = QVBoxLayout(report_box)
        rl.setContentsMargins(0, 0, 0, 0)
        upper = QFrame()
        upper.setObjectName("card")
        upper.setLayout(grid)
        rl.addWidget(upper, 2)
        rl.addWidget(self.tabs, 3)

        # Empty state: the drop zone, and the two ways in that need no file at hand.
        self.sample_button = QPushButton("Use the Sample Dataset")
        self.sample_button.setToolTip("Import the bundled bank-support sample (288 chat examples).")
        self.sample_button.clicked.connect(self._on_sample_clicked)
        empty_open = QPushButton("Open…")
        empty_open.clicked.connect(self.open_dialog)
        empty_row = QHBoxLayout()
        empty_row.addStretch(1)
        empty_row.addWidget(self.sample_button)
        empty_row.addWidget(empty_open)
        empty_row.addStretch(1)
        empty = QWidget()
        el = QVBoxLayout(empty)
        el.setContentsMargins(0, 0, 0, 0)
        el.setSpacing(12)
        el.addWidget(self.drop_zone, 1)
        el.addLayout(empty_row)

        self.body = QStackedWidget()
        self.body.addWidget(empty)
        self.body.addWidget(report_box)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addLayout(top)
        layout.addWidget(self.progress_row)
        layout.addWidget(self.error)
        layout.addWidget(self.body, 1)

    # -- opening ------------------------------------------------------------------------------
    def open_dialog(self) -> None:
        path = choose_dataset_file(self)
        if path:
            self.open_path(path)

    def open_folder_dialog(self) -> None:
        """A dataset that is a folder (train/valid/test files): a file dialog cannot choose one."""
        path = QFileDialog.getExistingDirectory(self, "Open a dataset folder", str(Path.home()))
        if path:
            self.open_path(path)

    def clear_report(self) -> None:
        """Forget the shown report: after a failed or cancelled import it would describe a file
        that is no longer the one on screen (and offer "Use for training" for it)."""
        self.report = None
        self.use_button.setEnabled(False)
        self.body.setCurrentIndex(0)

    def open_path(
        self, path: str | Path, fmt: str | None = None, mapping: dict | None = None
    ) -> None:
        """Import a dataset in a worker process (a running import is cancelled first)."""
        from app.data_import import csv_columns, import_args

        if self.busy:
            self.job.cancel()
        new_file = self.path is None or Path(path) != self.path
        self.path = Path(path)
        if new_file:
            self.mapping = dict(mapping or {})
            self.fill = {}
            if fmt is None:
                self.format.setCurrentIndex(0)
        self.map_button.setVisible(bool(csv_columns(self.path)))
        self.error.setVisible(False)
        self.use_button.setEnabled(False)  # until this import has a report
        self.progress_row.setVisible(True)
        self.progress.setRange(0, 0)
        self.progress_label.setText(f"Reading {self.path.name}…")
        job = JobController("import", self)
        job.sig_progress.connect(lambda p, j=job: self._on_import_progress(j, p))
        job.sig_finished.connect(lambda res, j=job: self._on_import_done(j, res))
        job.sig_failed.connect(lambda m, h, j=job: self._on_import_failed(j, m, h))
        job.sig_cancelled.connect(lambda j=job: self._on_import_cancelled(j))
        job.sig_ended.connect(lambda j=job: self._retire(j))
        self._retire(self.job, replaced=True)
        self.job = job
        job.start(
            *import_args(
                self.path,
                fmt or self.format.currentData(),
                self.mapping or None,
                self.preferred_model,
                self.max_seq_length,
                fill=dict(self.fill),
            )
        )

    def cancel(self) -> None:
        if self.busy:
            self.job.cancel()
            self.progress_label.setText("Cancelling…")

    def shutdown(self) -> None:
        """End the import and token-view workers now (the window is closing)."""
        for job in (self.job, self.view_job):
            if job is not None and job.running:
                job.kill()

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def _retire(self, job: JobController | None, replaced: bool = False) -> None:
        """Free a job that has ended and is no longer the page's current one."""
        if job is None or job.running:
            return
        if replaced or job not in (self.job, self.view_job):
            job.deleteLater()

    def _on_import_progress(self, job: JobController, p: dict) -> None:
        if job is not self.job:
            return
        fraction = p.get("fraction")
        if fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(float(fraction) * 1000))
        n = int(p.get("examples") or 0)
        stage = str(p.get("stage") or "")
        self.progress_label.setText(f"{stage} {n:,} examples" if n else stage)

    def _on_import_done(self, job: JobController, result) -> None:
        from app.data_import import report_from_json

        if job is not self.job:
            return
        self.progress_row.setVisible(False)
        try:
            report = report_from_json(result)
        except (TypeError, ValueError, AttributeError) as exc:
            self._on_import_failed(job, f"The import's report could not be read ({exc}).", "")
            return
        tokens = report.tokens
        self.model_dir = Path(tokens.model) if tokens is not None else None
        self.show_report(report)
        self.refresh_datasets()

    # -- datasets imported before ---------------------------------------------------------------
    def refresh_datasets(self) -> None:
        """List the workspace's datasets (worker thread) in the "Imported" picker."""
        from app.services import imported_datasets

        task = Task(imported_datasets)
        task.sig_done.connect(self._on_datasets_listed)
        self._list_task = task.start(self)

    def _on_datasets_listed(self, datasets) -> None:
        self.imported.clear()
        self.imported.addItem(f"Imported datasets ({len(datasets)})", None)
        for d in datasets:
            when = id_time(d.id)
            label = f"{d.name or id_name(d.id)}  ·  {d.splits.get('train', 0)} train examples"
            self.imported.addItem(label + (f"  ·  {when}" if when else ""), str(d.path))
            self.imported.setItemData(
                self.imported.count() - 1, str(d.path), Qt.ItemDataRole.ToolTipRole
            )
        self.imported.setCurrentIndex(0)
        self.imported.setVisible(bool(datasets))
        fit_popup(self.imported)

    def _on_imported_activated(self, index: int) -> None:
        path = self.imported.itemData(index)
        self.imported.setCurrentIndex(0)
        if path:
            self.open_path(path)

    def _on_import_failed(self, job: JobController, message: str, hint: str) -> None:
        if job is not self.job:
            return
        self.progress_row.setVisible(False)
        self.clear_report()
        self.last_error = message
        self.error.setText(
            f"<b>{html.escape(self.path.name if self.path else 'This file')} "
            f"cannot be used.</b> {html.escape(message)}"
            + (f"<br>{html.escape(hint)}" if hint else "")
        )
        self.error.setVisible(True)
        self.sig_import_failed.emit(message)

    def _on_import_cancelled(self, job: JobController) -> None:
        if job is not self.job:
            return
        self.progress_row.setVisible(False)
        self.clear_report()
        self.error.setText("Import cancelled; nothing was added to the workspace.")
        self.error.setVisible(True)

    # -- report -------------------------------------------------------------------------------
    def show_report(self, report) -> None:
        self.report = report
        self.body.setCurrentIndex(1)
        splits = report.splits
        lines = [
            f"<b style='font-size: 15px'>{html.escape(report.name)}</b> &nbsp; "
            f"<span style='color: gray'>{_size(report.size_bytes)}, {html.escape(report.container)}</span>",
            f"<b>Format:</b> {html.escape(report.format_label)}",
        ]
        if report.format_reason:
            lines.append(
                f"<span style='color: gray'>because {html.escape(report.format_reason)}</span>"
            )
        if report.mapping:
            lines.append(
                "<b>Columns:</b> "
                + ", ".join(
                    f"{html.escape(t)} ← {html.escape(c)}" for t, c in report.mapping.items()
                )
            )
        lines.append(
            f"<b>Examples:</b> {report.kept:,} of {report.rows:,} records kept — train "
            f"{splits.get('train', 0):,}, validation {splits.get('valid', 0):,}, test "
            f"{splits.get('test', 0):,}"
        )
        for n in report.split_notes:
            lines.append(f"<span style='color: gray'>{html.escape(n)}</span>")
        if report.summary:
            lines.append(f"<span style='color: #d70'>{html.escape(report.summary)}</span>")
        for n in report.notes:
            lines.append(f"<span style='color: gray'>Note: {html.escape(n)}</span>")
        if report.dataset_id:
            verb = "Already imported as" if report.reused else "Imported as"
            lines.append(
                f"<span style='color: gray' title='{html.escape(str(report.dataset_path))}'>"
                f"{verb} {html.escape(id_name(report.dataset_id))}"
                + (
                    f", {html.escape(id_time(report.dataset_id))}"
                    if id_time(report.dataset_id)
                    else ""
                )
                + "</span>"
            )
        self.summary.setText("<br>".join(lines))
        self.use_button.setEnabled(bool(report.dataset_path))
        self.fill_button.setVisible(bool(report.placeholders or self.fill))

        t = report.tokens
        if t is not None:
            self.histogram.set_data(t.histogram, t.max_seq_length)
            train = t.splits.get("train")
            src = {
                "model": "the model's own",
                "default": "Lathe's default (the model has none)",
                "config": "the one given",
            }.get(t.template_source, t.template_source)
            text = f"Measured with {Path(t.model).name} ({src} chat template)."
            if train:
                text = (
                    f"Median {train.median:.0f}, 95% under {train.p95:.0f}, longest {train.max} tokens; "
                    f"{train.trained_tokens:,} trained tokens. "
                ) + text
                over = sum(s.over_max for s in t.splits.values())
                if over:
                    text += f" {over} example(s) exceed {t.max_seq_length} tokens and will be truncated."
                text += f" About {t.steps_per_epoch} steps per epoch at batch size {t.batch_size}."
            self.token_stats.setText(text)
        else:
            self.histogram.set_data({}, 0)
            self.token_stats.setText("")

        self.problems.clear()
        for prob in report.problems:
            item = QListWidgetItem(
                ("⚠ " if prob.get("severity") == "warning" else "✕ ") + prob.get("text", "")
            )
            item.setData(Qt.ItemDataRole.UserRole, prob)
            item.setToolTip(prob.get("hint", ""))
            self.problems.addItem(item)
        total = report.skipped + sum(report.warning_counts.values())
        if not report.problems:
            self.problems.addItem("No problems found.")
        elif total > len(report.problems):
            self.problems.addItem(f"… and {total - len(report.problems)} more of the same kinds.")
        self.tabs.setTabText(0, f"Problems ({total})" if total else "Problems")
        self.record.setVisible(bool(report.problems))  # no empty record pane under "No problems"
        self.record.clear()
        self.example_index.setRange(
            0, max(0, splits.get("train", 0) + splits.get("valid", 0) + splits.get("test", 0) - 1)
        )
        self.tokens.clear()
        self.token_info.setText("")
        self.sig_report_ready.emit(report)

    def _on_problem_selected(self, item, _previous=None) -> None:
        from app.data_import import problem_record

        prob = item.data(Qt.ItemDataRole.UserRole) if item is not None else None
        if not prob or self.report is None:
            return
        raw = problem_record(self.report, prob)
        try:
            raw = json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
        except (json.JSONDecodeError, TypeError):
            pass
        self.record.setPlainText(
            f"{prob.get('where', '')}\n{prob.get('message', '')}\n"
            + (f"What to do: {prob['hint']}\n" if prob.get("hint") else "")
            + "\n"
            + raw
        )

    def load_token_view(self) -> None:
        """One example token by token (`data show`, in a worker process: it loads the tokenizer)."""
        from app.data_import import token_view_args

        if self.report is None or not self.report.dataset_path or self.model_dir is None:
            return
        if self.view_job is not None and self.view_job.running:
            self.view_job.cancel()
        self.token_info.setText("Tokenizing…")
        job = JobController("token view", self)
        job.sig_finished.connect(lambda res, j=job: self._on_token_view_done(j, res))
        job.sig_failed.connect(
            lambda m, h, j=job: j is self.view_job and self.token_info.setText(f"{m} {h}".strip())
        )
        job.sig_ended.connect(lambda j=job: self._retire(j))
        self._retire(self.view_job, replaced=True)
        self.view_job = job
        job.start(
            *token_view_args(
                self.report.dataset_path,
                self.model_dir,
                self.example_index.value(),
                self.max_seq_length,
            )
        )

    def _on_token_view_done(self, job: JobController, result) -> None:
        from app.data_import import token_view_from_json

        if job is not self.view_job:
            return
        view = token_view_from_json(result)
        self.tokens.setHtml(token_html(view))
        self.token_info.setText(
            f"{view.where}: {view.length} tokens, {view.trained_tokens} trained"
            + (f", truncated to {view.max_seq_length}" if view.truncated else "")
            + "."
        )

    def _on_format_activated(self, _index: int) -> None:
        if self.path is not None:
            self.open_path(self.path, fmt=self.format.currentData())

    def _on_map_clicked(self) -> None:
        from app.data_import import csv_columns

        if self.path is None:
            return
        current = dict(self.mapping or (self.report.mapping if self.report else {}))
        dialog = ColumnMapDialog(csv_columns(self.path), current, self)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.mapping = dialog.mapping()
            self.open_path(self.path, fmt=self.format.currentData(), mapping=self.mapping)

    def _on_fill_clicked(self) -> None:
        if self.path is None or self.report is None:
            return
        words = list(dict.fromkeys([*self.report.placeholders, *self.fill]))
        dialog = FillPlaceholdersDialog(words, self.fill, self)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.fill = dialog.fill()
            self.open_path(self.path, fmt=self.format.currentData())

    def _on_sample_clicked(self) -> None:
        from app.services import sample_dataset

        self.open_path(sample_dataset())

    def _on_use_clicked(self) -> None:
        if self.report is not None and self.report.dataset_path:
            self.sig_use_for_training.emit(self.report.dataset_path)
