"""Evaluation results for one run: base against tuned, side by side, and the golden prompt timeline.

    view = EvalResultsWidget(parent)
    view.set_run(run_id_or_folder)          # shows the latest evaluation and the golden timeline
    view.evaluate()                          # runs `lathe-engine eval run` in a worker process
    view.sig_use_checkpoint.connect(lambda run_id, step: ...)   # open RUN:STEP in chat or export

The widget never blocks the GUI thread, and MLX never runs in the window's process: evaluation
(model load, loss, generation) runs in a worker process (app.jobs) and reports back through
signals. It knows the engine only through `engine.evaluate` (results dicts, `run_history`),
`engine.chat.checkpoint_steps` and the `eval run` command line.
"""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QAbstractTextDocumentLayout, QColor, QPalette, QTextDocument
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.jobs import JobController
from app.names import run_label
from app.theme import ElidedLabel

INS_STYLE = "background-color:#ccffd8;color:#055d20;"
DEL_STYLE = "background-color:#ffd7d5;color:#82071e;"
HTML_ROLE = Qt.UserRole + 1


# -- the worker's command line -----------------------------------------------------------------


def eval_arguments(spec: str, **options) -> list[str]:
    """`lathe-engine eval run` arguments for `spec` and the keyword arguments of
    `engine.evaluate.evaluate_run` (prompts, metrics, max_tokens, stop, limit, loss)."""
    args = ["eval", "run", spec, "--progress"]
    for key, value in options.items():
        if value is None:
            continue
        if key == "prompts":
            args.append(f"--prompts={value}")
        elif key == "metrics":
            args += [f"--metric={m}" for m in value]
        elif key == "max_tokens":
            args.append(f"--max-tokens={int(value)}")
        elif key == "stop":
            args += [f"--stop={s}" for s in value]
        elif key == "limit":
            args.append(f"--limit={int(value)}")
        elif key == "loss":
            if not value:
                args.append("--no-loss")
        else:
            raise TypeError(f"unknown evaluation option {key!r}")
    return args


def load_run_view(run: str | Path) -> tuple[Path, object, dict | None]:
    """(run folder, RunHistory, latest results or None): what the widget shows, read off the GUI thread."""
    from engine.evaluate import latest_results, run_history
    from engine.runs import find_run

    run_dir = find_run(run)
    try:
        results = latest_results(run_dir)
    except Exception:  # noqa: BLE001 - an unreadable old result must not hide the run
        results = None
    return run_dir, run_history(run_dir), results


# -- rich text cells ---------------------------------------------------------------------------


class _HtmlDelegate(QStyledItemDelegate):
    """Paints cells whose HTML_ROLE holds rich text (diff highlighting), wrapped to the column."""

    def _document(self, option: QStyleOptionViewItem, text: str, width: int) -> QTextDocument:
        doc = QTextDocument()
        doc.setDefaultFont(option.font)
        doc.setDocumentMargin(6)
        doc.setHtml(text)
        doc.setTextWidth(max(width, 40))
        return doc

    def paint(self, painter, option, index) -> None:
        text = index.data(HTML_ROLE)
        if text is None:
            return super().paint(painter, option, index)
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        opt.text = ""
        style = opt.widget.style() if opt.widget else None
        if style:
            style.drawControl(QStyle.CE_ItemViewItem, opt, painter, opt.widget)
        doc = self._document(opt, text, opt.rect.width())
        ctx = QAbstractTextDocumentLayout.PaintContext()
        if opt.state & QStyle.State_Selected:
            ctx.palette.setColor(QPalette.Text, opt.palette.color(QPalette.HighlightedText))
        painter.save()
        painter.translate(opt.rect.topLeft())
        painter.setClipRect(opt.rect.translated(-opt.rect.topLeft()))
        doc.documentLayout().draw(painter, ctx)
        painter.restore()

    def sizeHint(self, option, index) -> QSize:
        text = index.data(HTML_ROLE)
        if text is None:
            return super().sizeHint(option, index)
        table = option.widget
        width = (
            table.columnWidth(index.column())
            if isinstance(table, QTableWidget)
            else option.rect.width()
        )
        doc = self._document(option, text, width)
        return QSize(int(doc.idealWidth()), min(int(doc.size().height()) + 2, 400))


def diff_cells(a: str, b: str) -> tuple[str, str]:
    """Rich text for two answers, what only `a` says struck out in red, what only `b` says in green."""
    from engine.evaluate import diff_spans

    left, right = diff_spans(a, b)

    def render(spans):
        out = []
        for kind, text in spans:
            t = html.escape(text).replace("\n", "<br>")
            style = {"insert": INS_STYLE, "delete": DEL_STYLE}.get(kind)
            out.append(f"<span style='{style}'>{t}</span>" if style else t)
        return "".join(out)

    return render(left), render(right)


# -- the widget --------------------------------------------------------------------------------


class EvalResultsWidget(QWidget):
    """Metrics base vs tuned, answers side by side, the golden timeline, and "use this checkpoint".

    Evaluating runs `lathe-engine eval run` in a worker process (`self.job`, app.jobs)."""

    sig_use_checkpoint = Signal(str, int)  # run id, checkpoint step
    sig_evaluation_started = Signal()
    sig_evaluation_finished = Signal(object)  # the results dict
    sig_evaluation_failed = Signal(str, str)  # message, hint

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.job = JobController("evaluation", self)
        self.job.sig_progress.connect(self._on_job_progress)
        self.job.sig_finished.connect(self._on_job_done)
        self.job.sig_failed.connect(self._on_job_failed)
        self.job.sig_cancelled.connect(self._on_job_cancelled)
        self.run_dir: Path | None = None
        self.results: dict | None = None
        self.history = None
        self._final_step: int | None = None
        self.eval_options: dict = {}
        self._build()
        self._show_empty()

    # -- public API ------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        return self.run_dir.name if self.run_dir else None

    @property
    def busy(self) -> bool:
        return self.job.running

    def set_run(self, run: str | Path) -> None:
        """Show `run` (an id or folder): its checkpoints, golden timeline and latest evaluation.

        Reads the run's events.jsonl here; for a long run, call `load_run_view` on a worker thread
        and pass its result to `show_run` instead.
        """
        self.show_run(*load_run_view(run))

    def show_run(self, run_dir: Path, history, results: dict | None) -> None:
        """Show what `load_run_view` read (cheap: no file access but the checkpoint list)."""
        self.run_dir = Path(run_dir)
        self.history = history
        self.results = None
        self._fill_checkpoints()
        self._fill_golden()
        if results:
            self.set_results(results)
        else:
            self._show_empty()
        self._title.set_full_text(
            f"Evaluate · {run_label('', self.run_dir.name)}", tooltip=str(self.run_dir)
        )
        self._update_buttons()

    def set_evaluation_options(self, **options) -> None:
        """Defaults for `evaluate()`: prompts, metrics, max_tokens, stop, limit, loss."""
        self.eval_options = dict(options)

    def evaluate(self, step: int | None = None, **options) -> None:
        """Evaluate the chosen checkpoint (or `step`) against the base model, in a worker process."""
        if self.run_dir is None or self.busy:
            return
        if step is None:
            step = self._checkpoint_combo.currentData()
        spec = f"{self.run_dir}:{step}" if step is not None else str(self.run_dir)
        self.job.start(*eval_arguments(spec, **{**self.eval_options, **options}))
        self._status.setText("Loading the model…")
        self._progress.setRange(0, 0)
        self._progress.show()
        self._update_buttons()
        self.sig_evaluation_started.emit()

    def cancel(self) -> None:
        if self.busy:
            self.job.cancel()
            self._status.setText("Stopping…")

    def set_results(self, results: dict) -> None:
        """Show an evaluation's results (a dict from `evaluate_run` or a results.json)."""
        self.results = results
        self._fill_metrics(results)
        self._fill_answers(results)
        adapter = results.get("adapter") or {}
        n = len(results.get("examples", []))
        self._status.setText(f"{adapter.get('label', '')} · {n} prompt(s) · greedy")

    def selected_step(self) -> int | None:
        """The checkpoint that "Use this checkpoint" means: a selected golden row, else the picker."""
        if self._tabs.currentWidget() is self._golden_table:
            rows = self._golden_table.selectionModel().selectedRows()
            if rows:
                step = self._golden_table.item(rows[0].row(), 0).data(Qt.UserRole)
                if step in self._checkpoints():
                    return step
        step = self._checkpoint_combo.currentData()
        return step if step is not None else self._final_step

    # -- building --------------------------------------------------------------------------
    def _build(self) -> None:
        self._title = ElidedLabel("Evaluate")
        self._title.setObjectName("sectionTitle")
        self._checkpoint_combo = QComboBox()
        self._checkpoint_combo.setToolTip(
            "Which adapter to evaluate and to use: the final one or a checkpoint."
        )
        self._checkpoint_combo.setMinimumContentsLength(12)
        self._checkpoint_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self._evaluate_button = QPushButton("Evaluate")
        self._evaluate_button.setToolTip(
            "Answer the held-out prompts with the base and the tuned model, "
            "and compare their loss on the test split."
        )
        self._evaluate_button.clicked.connect(lambda: self.evaluate())
        self._cancel_button = QPushButton("Cancel")
        self._cancel_button.clicked.connect(self.cancel)
        self._use_button = QPushButton("Use this checkpoint")
        self._use_button.setToolTip("Open this checkpoint (RUN:STEP) in chat or export.")
        self._use_button.clicked.connect(self._on_use_clicked)
        self._status = QLabel()
        self._status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self._progress = QProgressBar()
        self._progress.setMaximumWidth(160)
        self._progress.setTextVisible(False)
        self._progress.hide()
        # The forgetting check (engine.evaluate.general): one line, red when the run is flagged.
        self._forgetting = QLabel()
        self._forgetting.setWordWrap(True)
        self._forgetting.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self._forgetting.hide()

        top = QHBoxLayout()
        top.addWidget(self._title, 1)
        top.addWidget(QLabel("Adapter:"))
        top.addWidget(self._checkpoint_combo)
        top.addWidget(self._evaluate_button)
        top.addWidget(self._cancel_button)
        top.addWidget(self._use_button)
        status = QHBoxLayout()
        status.addWidget(self._status, 1)
        status.addWidget(self._progress)

        self._metrics_table = self._table(["Metric", "Base", "Tuned", "Change"])
        self._answers_table = self._table(["Prompt", "Reference", "Base", "Tuned"])
        self._golden_table = self._table(["Step", "Val loss"])
        self._golden_table.itemSelectionChanged.connect(self._update_buttons)
        self._tabs = QTabWidget()
        self._tabs.addTab(self._metrics_table, "Metrics")
        self._tabs.addTab(self._answers_table, "Answers side by side")
        self._tabs.addTab(self._golden_table, "Golden prompts")
        self._tabs.currentChanged.connect(self._update_buttons)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(status)
        layout.addWidget(self._forgetting)
        layout.addWidget(self._tabs, 1)

    def _table(self, headers: list[str]) -> QTableWidget:
        table = QTableWidget(0, len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.verticalHeader().hide()
        table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        table.setSelectionBehavior(QAbstractItemView.SelectRows)
        table.setSelectionMode(QAbstractItemView.SingleSelection)
        table.setWordWrap(True)
        table.setItemDelegate(_HtmlDelegate(table))
        table.setVerticalScrollMode(QAbstractItemView.ScrollPerPixel)
        table.horizontalHeader().sectionResized.connect(lambda *_: table.resizeRowsToContents())
        return table

    # -- filling ---------------------------------------------------------------------------
    def _checkpoints(self) -> list[int]:
        from engine.chat import checkpoint_steps

        return checkpoint_steps(self.run_dir) if self.run_dir else []

    def _fill_checkpoints(self) -> None:
        steps = self._checkpoints()
        self._final_step = steps[-1] if steps else None
        best = self.history.best_val_step if self.history else None
        combo = self._checkpoint_combo
        combo.clear()
        if (self.run_dir / "adapters" / "adapters.safetensors").exists():
            combo.addItem("Final adapter", None)
        for step in reversed(steps):
            val = self.history.val_loss_at(step) if self.history else None
            text = (
                f"Step {step}"
                + (f" · val {val:.3f}" if val is not None else "")
                + (" ★" if step == best else "")
            )
            combo.addItem(text, step)

    def _show_empty(self) -> None:
        for table in (self._metrics_table, self._answers_table):
            table.setRowCount(0)
        self._forgetting.hide()
        self._status.setText(
            "No evaluation yet. Press Evaluate to compare the tuned model with its base."
            if self.run_dir
            else "Pick a run to evaluate."
        )

    def _fill_metrics(self, results: dict) -> None:
        rows = []
        loss = results.get("loss")
        if loss:
            for key, label in (("loss", "Loss"), ("perplexity", "Perplexity")):
                b, t = loss["base"][key], loss["tuned"][key]
                rows.append(
                    (
                        f"{label} ({loss['split']} split, {loss['tokens']} tokens)",
                        f"{b:.4f}",
                        f"{t:.4f}",
                        f"{t - b:+.4f}",
                        None if abs(t - b) < 1e-12 else t < b,
                    )
                )
        for m in results.get("metrics", []):
            b, t, rate = m.get("base"), m.get("tuned"), m.get("rate", True)

            def fmt(v, rate=rate):
                return "–" if v is None else (f"{v * 100:.1f}%" if rate else f"{v:.1f}")

            if b is None or t is None:
                change, better = "–", None
            else:
                change = f"{(t - b) * 100:+.1f} pts" if rate else f"{t - b:+.1f}"
                better = (t > b) if rate and abs(t - b) > 1e-12 else None
            rows.append((f"{m['label']}  [{m['spec']}]", fmt(b), fmt(t), change, better))
        f = results.get("forgetting") or {}
        if f.get("checked"):
            value = f.get("forgetting")
            rows.append(
                (
                    "General prompts (forgetting check)",
                    f"{f['base']['passed']}/{f['base']['total']}",
                    f"{f['tuned']['passed']}/{f['tuned']['total']}",
                    "–" if value is None else f"forgets {value:.0%}",
                    None if value is None else not f.get("flagged"),
                )
            )
        self._show_forgetting(f)
        table = self._metrics_table
        table.setRowCount(len(rows))
        for r, (label, b, t, change, better) in enumerate(rows):
            for c, text in enumerate((label, b, t, change)):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if c == 3 and better is not None:
                    item.setForeground(QColor("#1a7f37") if better else QColor("#c62828"))
                table.setItem(r, c, item)
        header = table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.Stretch)
        for c in (1, 2, 3):
            header.setSectionResizeMode(c, QHeaderView.ResizeToContents)
        table.resizeRowsToContents()
        notes = results.get("notes") or []
        table.setToolTip("\n".join(notes))

    def _show_forgetting(self, f: dict) -> None:
        from engine.evaluate.general import summary_line

        label = self._forgetting
        if not f.get("checked"):
            label.setText(html.escape(f.get("note") or ""))
            label.setStyleSheet("")
            label.setVisible(bool(f.get("note")))
            return
        text = html.escape(f.get("warning") or summary_line(f))
        label.setText(text)
        label.setStyleSheet("color:#c62828;" if f.get("flagged") else "")
        label.show()

    def _fill_answers(self, results: dict) -> None:
        table = self._answers_table
        examples = results.get("examples", [])
        specs = [(m["spec"], m.get("rate", True)) for m in results.get("metrics", [])]
        table.setRowCount(len(examples))
        for r, ex in enumerate(examples):
            base, tuned = ex.get("base", {}), ex.get("tuned", {})
            b_html, t_html = diff_cells(base.get("output", ""), tuned.get("output", ""))
            cells = [
                html.escape(ex.get("prompt", "")),
                html.escape(ex.get("reference") or "–"),
                b_html + _badges(base, specs),
                t_html + _badges(tuned, specs),
            ]
            plain = [
                ex.get("prompt", ""),
                ex.get("reference") or "",
                base.get("output", ""),
                tuned.get("output", ""),
            ]
            for c, (rich, text) in enumerate(zip(cells, plain)):
                item = QTableWidgetItem(text)
                item.setData(HTML_ROLE, rich)
                item.setToolTip(text)
                table.setItem(r, c, item)
        header = table.horizontalHeader()
        for c in range(4):
            header.setSectionResizeMode(c, QHeaderView.Stretch)
        table.resizeRowsToContents()

    def _fill_golden(self) -> None:
        from engine.evaluate.general import FORGETTING_WARN

        table = self._golden_table
        h = self.history
        prompts = h.golden_prompts if h else []
        entries = h.golden if h else []
        general = h.general if h else {}
        fixed = ["Step", "Val loss"] + (["General"] if general else [])
        table.clear()
        table.setColumnCount(len(fixed) + len(prompts))
        table.setHorizontalHeaderLabels(fixed + prompts)
        table.setRowCount(len(entries))
        previous: dict[str, str] = {}
        saved = set(self._checkpoints())
        for r, entry in enumerate(entries):
            step = entry["step"]
            val = h.val_loss_at(step)
            mark = " ★" if step == h.best_val_step else ""
            step_item = QTableWidgetItem(f"{step}{mark}")
            step_item.setData(Qt.UserRole, step)
            if step not in saved:
                step_item.setToolTip(
                    "No checkpoint was kept at this step." if step else "The model before training."
                )
            table.setItem(r, 0, step_item)
            table.setItem(r, 1, QTableWidgetItem("–" if val is None else f"{val:.4f}"))
            if general:
                g = general.get(step)
                item = QTableWidgetItem("–" if g is None else f"{g['passed']}/{g['total']}")
                if g is not None and g.get("forgetting") is not None:
                    item.setToolTip(f"Forgets {g['forgetting']:.0%} of what the base got right.")
                    if g["forgetting"] >= FORGETTING_WARN:
                        item.setForeground(QColor("#c62828"))
                table.setItem(r, 2, item)
            answers = {a.get("prompt"): a.get("answer", "") for a in entry["answers"]}
            for c, prompt in enumerate(prompts, len(fixed)):
                answer = answers.get(prompt)
                item = QTableWidgetItem(answer or "")
                if answer is not None:
                    rich = (
                        diff_cells(previous[prompt], answer)[1]
                        if prompt in previous
                        else html.escape(answer)
                    )
                    item.setData(HTML_ROLE, rich)
                    previous[prompt] = answer
                table.setItem(r, c, item)
        header = table.horizontalHeader()
        for c in range(len(fixed)):
            header.setSectionResizeMode(c, QHeaderView.ResizeToContents)
        for c in range(len(fixed), len(fixed) + len(prompts)):
            header.setSectionResizeMode(c, QHeaderView.Stretch)
        table.resizeRowsToContents()
        self._tabs.setTabText(
            2, f"Golden prompts ({len(entries)})" if entries else "Golden prompts"
        )

    def _update_buttons(self) -> None:
        has_run = self.run_dir is not None
        self._evaluate_button.setEnabled(has_run and not self.busy)
        self._cancel_button.setVisible(self.busy)
        self._checkpoint_combo.setEnabled(not self.busy)
        self._use_button.setEnabled(has_run and self.selected_step() is not None)

    # -- slots -----------------------------------------------------------------------------
    def _on_use_clicked(self) -> None:
        step = self.selected_step()
        if self.run_id is not None and step is not None:
            self.sig_use_checkpoint.emit(self.run_id, int(step))

    def _on_job_progress(self, p: dict) -> None:
        stage = p.get("stage")
        if stage == "generate":
            self._progress.setRange(0, p["total"])
            self._progress.setValue(p["done"])
            self._status.setText(f"Answering: {p['done']} of {p['total']} ({p['side']})")
        elif stage in ("load", "loss", "general"):
            self._status.setText(p.get("message", stage) + "…")

    def _end_job(self) -> None:
        self._progress.hide()
        self._update_buttons()

    def _on_job_done(self, results: dict) -> None:
        self._end_job()
        self.set_results(results)
        self._tabs.setCurrentWidget(self._metrics_table)
        self.sig_evaluation_finished.emit(results)

    def _on_job_failed(self, message: str, hint: str) -> None:
        self._end_job()
        self._status.setText(
            f"<span style='color:#c62828'>{html.escape(message)}</span> {html.escape(hint)}"
        )
        self.sig_evaluation_failed.emit(message, hint)

    def _on_job_cancelled(self) -> None:
        self._end_job()
        self._status.setText("Evaluation cancelled.")


def _badges(side: dict, specs) -> str:
    bits = []
    for spec, rate in specs:
        score = (side.get("scores") or {}).get(spec)
        if score is None or not rate:
            continue
        ok = score["value"] >= 1
        color = "#1a7f37" if ok else "#c62828"
        bits.append(f"<span style='color:{color}'>{'✓' if ok else '✗'} {html.escape(spec)}</span>")
    return f"<br><small>{' · '.join(bits)}</small>" if bits else ""
