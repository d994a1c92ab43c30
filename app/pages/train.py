"""Train page: settings with presets and a memory-fit banner; live loss chart, progress and log."""

from __future__ import annotations

from html import escape as _esc  # for text shown as Qt rich text
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.chart import LossChartPanelWidget
from app.controller import IDLE, INTERRUPTED, STOPPING, TrainingController, describe_crash
from app.names import id_name, run_title
from app.settings_form import FitBannerWidget, TrainSettingsWidget
from app.tasks import Task, describe_error
from app.theme import ElidedLabel
from app.wording import window_words

STATS_MS = 100  # the numbers under the chart refresh at 10 Hz, whatever the event rate
FIT_DEBOUNCE_MS = 250


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    seconds = int(round(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


class TrainPage(QWidget):
    """Start, watch and stop one training run. The controller owns the worker process."""

    sig_chat_requested = Signal(str)  # run folder
    sig_export_requested = Signal(str)
    sig_show_runs = Signal()
    sig_run_ended = Signal(str, str)  # final state, one-line summary (for the notification)
    sig_quantize_requested = Signal(str)  # model

    def __init__(self, controller: TrainingController, parent: QWidget | None = None):
        super().__init__(parent)
        self.controller = controller
        self.fit_budget_bytes: int | None = None  # None: the machine's budget
        self.fit_report = None
        self._fit_task: Task | None = None
        self._fit_generation = 0
        self._pending_log: list[str] = []
        self.final_state: str | None = None
        self.final_details: dict = {}
        self.final_numbers = None  # engine.runs.RunNumbers of the run that ended
        self.start_problem = False  # the result box shows why Start failed (cleared on edits)

        # -- left: settings --
        self.settings = TrainSettingsWidget()
        self.fit_banner = FitBannerWidget()
        self.start_button = QPushButton("Start training")
        self.start_button.setObjectName("primary")
        self.start_button.setToolTip("Start training (⌘R)")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop at the next step and keep a checkpoint (⌘.)")
        self.stop_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button, 1)
        buttons.addWidget(self.stop_button)
        # Why Start is unavailable, with the way out as a link ("Choose a model").
        self.start_reason = QLabel("")
        self.start_reason.setObjectName("muted")
        self.start_reason.setWordWrap(True)
        self.start_reason.setTextFormat(Qt.TextFormat.RichText)
        self.start_reason.linkActivated.connect(self._on_start_reason_link_activated)
        self.start_reason.setVisible(False)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.settings)
        left = QVBoxLayout()
        title = QLabel("Settings")
        title.setObjectName("sectionTitle")
        left.addWidget(title)
        left.addWidget(scroll, 1)
        left.addWidget(self.fit_banner)
        left.addLayout(buttons)
        left.addWidget(self.start_reason)
        left_box = QWidget()
        left_box.setLayout(left)
        self.left_box = left_box  # its width follows the page's (resizeEvent)

        # -- right: live view --
        self.header = ElidedLabel("Train", mode=Qt.TextElideMode.ElideRight)
        self.header.setObjectName("pageTitle")
        self.chart_panel = LossChartPanelWidget()
        self.chart_panel.chart.placeholder = (
            "Choose a model and a dataset on the left, then press Start training:\n"
            "the loss curve appears here as the model learns."
        )
        self.chart_panel.setMinimumHeight(240)  # the x-axis stays visible at 1024x640
        self.chart = self.chart_panel.chart
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.progress.setVisible(False)  # shown once a run starts (an empty bar reads as a field)
        self.eta = QLabel("")
        self.eta.setMinimumWidth(self.eta.fontMetrics().horizontalAdvance("ETA 00 h 00 min") + 12)
        self.eta.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.eta)
        self.stats = QLabel("")
        self.stats.setObjectName("muted")
        self.stats.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.result = QFrame()
        self.result.setObjectName("resultBox")
        self.result_text = QLabel()
        self.result_text.setWordWrap(True)
        self.result_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.chat_button = QPushButton("Chat with it")
        self.export_button = QPushButton("Export…")
        self.resume_button = QPushButton("Resume")
        self.force_button = QPushButton("Start anyway")
        self.force_button.setToolTip(
            "Start this run although the memory estimate says it will not fit; "
            "it saves a checkpoint and stops if memory runs short."
        )
        self.runs_button = QPushButton("Show in Runs")
        self.fix_button = QPushButton()  # the one-click fix of a start problem
        self.fix_button.clicked.connect(self._on_fix_clicked)
        self.problem_fix = None
        result_buttons = QHBoxLayout()
        for b in (
            self.fix_button,
            self.chat_button,
            self.export_button,
            self.resume_button,
            self.force_button,
            self.runs_button,
        ):
            result_buttons.addWidget(b)
        result_buttons.addStretch(1)
        rl = QVBoxLayout(self.result)
        rl.addWidget(self.result_text)
        rl.addLayout(result_buttons)
        self.result.setVisible(False)

        self.log_toggle = QToolButton()
        self.log_toggle.setText("Log")
        self.log_toggle.setCheckable(True)
        self.log_toggle.setAutoRaise(True)
        self.log_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.log_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.log_toggle.toggled.connect(self._on_log_toggle_toggled)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(3000)
        self.log.setObjectName("log")
        self.log.setVisible(False)
        self.log.setMinimumHeight(120)

        right = QVBoxLayout()
        right.addWidget(self.header)
        right.addWidget(self.chart_panel, 1)
        right.addLayout(progress_row)
        right.addWidget(self.stats)
        right.addWidget(self.result)
        right.addWidget(self.log_toggle)
        right.addWidget(self.log)

        layout = QHBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.setSpacing(20)
        layout.addWidget(left_box)
        layout.addLayout(right, 1)

        # -- wiring --
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.chat_button.clicked.connect(self._on_chat_clicked)
        self.export_button.clicked.connect(self._on_export_clicked)
        self.resume_button.clicked.connect(self.resume)
        self.force_button.clicked.connect(self._on_force_clicked)
        self.runs_button.clicked.connect(self.sig_show_runs)
        self.settings.sig_changed.connect(self._on_settings_changed)
        self.fit_banner.sig_apply.connect(self._on_fit_apply)
        self.fit_banner.sig_focus.connect(self.focus_field)
        c = controller
        c.sig_state_changed.connect(self._on_controller_state_changed)
        c.sig_started.connect(self._on_controller_started)
        c.sig_progress.connect(self._on_controller_progress)
        c.sig_eval.connect(self._on_controller_eval)
        c.sig_checkpoint.connect(self._on_controller_checkpoint)
        c.sig_log.connect(self._on_controller_log)
        c.sig_error.connect(self._on_controller_error)
        c.sig_finished.connect(self._on_controller_finished)
        self._fit_timer = QTimer(self)
        self._fit_timer.setSingleShot(True)
        self._fit_timer.setInterval(FIT_DEBOUNCE_MS)
        self._fit_timer.timeout.connect(self._on_fit_timer_timeout)
        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(STATS_MS)
        self._stats_timer.timeout.connect(self._on_stats_timer_timeout)
        self._stats_timer.start()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        # Settings take about a third of the page, 320 to 380 px: the chart keeps the rest, so
        # at 1024 px its steps and the run's name still fit.
        self.left_box.setFixedWidth(max(320, min(380, int(self.width() * 0.36))))
        super().resizeEvent(event)

    # -- actions ------------------------------------------------------------------------------
    def start(self) -> bool:
        """Create the run folder and start the worker; a bad setting is shown, not raised."""
        from engine.config import ConfigError

        if self.controller.active:
            return False
        try:
            cfg = self.settings.config(validate=True)
            hosts = self.settings.hosts.distributed_hosts()
            if hosts is not None and len(hosts) < 2:
                raise ConfigError(
                    "Train on several Macs needs at least two Macs in the host list.",
                    "List every Mac that takes part, this one included, or turn the "
                    "option off to train on this Mac alone.",
                )
            if self.fit_banner.verdict == "will not fit" and not cfg.training.ignore_fit_check:
                if not self.confirm_start_anyway():
                    return False
                cfg.training.ignore_fit_check = True
            self._reset_view(run_title(cfg.name, "", cfg.data.path, cfg.model.path))
            self.controller.start_config(cfg, hosts=hosts)
            if hosts:
                self._append_log(
                    f"Training across {len(hosts)} Macs: " + ", ".join(h.ssh for h in hosts) + "."
                )
        except Exception as exc:  # noqa: BLE001 - ConfigError, RunError, OSError: shown to the user
            message, hint = describe_error(exc)
            fix = window_words(str(exc.args[0]) if exc.args else "").fix
            self._show_result(
                "problem",
                f"<b>Cannot start yet.</b> {_esc(message)}" + (f"<br>{_esc(hint)}" if hint else ""),
                buttons=("fix",) if fix else (),
                fix=fix,
            )
            self.start_problem = True
            return False
        return True

    # -- why Start is unavailable, and the fixes ------------------------------------------------
    def start_blocker(self) -> tuple[str, str] | None:
        """(reason, field to choose) when the form cannot start a run yet, else None."""
        if not self.settings.model.currentText().strip():
            return "Choose a model to start training.", "model"
        if not self.settings.data.currentText().strip():
            return "Choose a dataset to start training.", "data"
        return None

    def _update_start_button(self) -> None:
        blocker = self.start_blocker()
        running = self.controller.active
        self.start_button.setEnabled(not running and blocker is None)
        if blocker is not None and not running:
            reason, field = blocker
            what = "a model" if field == "model" else "a dataset"
            self.start_reason.setText(f"{_esc(reason)} <a href='{field}'>Choose {what}…</a>")
            self.start_button.setToolTip(reason)
        else:
            self.start_button.setToolTip("Start training (⌘R)")
        self.start_reason.setVisible(blocker is not None and not running)

    def _on_start_reason_link_activated(self, field: str) -> None:
        self.focus_field(field)

    def focus_field(self, field: str) -> None:
        """Put the keyboard focus on a picker and open its list ("Choose a model")."""
        combo = {"model": self.settings.model, "data": self.settings.data}.get(field)
        if combo is None:
            widget = self.settings.fields.get(field)
            if widget is not None:
                widget.setFocus(Qt.FocusReason.OtherFocusReason)
            return
        combo.setFocus(Qt.FocusReason.OtherFocusReason)
        if combo.count():
            combo.showPopup()

    def _on_fix_clicked(self) -> None:
        fix = self.problem_fix
        if fix is None:
            return
        if fix.values:
            self.settings.set_values(dict(fix.values))
        if fix.focus:
            self.focus_field(fix.focus)

    def confirm_start_anyway(self) -> bool:
        """Ask before starting a run the memory estimate says will not fit."""
        report = self.fit_report
        gb = 1024**3
        numbers = (
            (
                f"It needs about {report.training_peak_bytes / gb:.1f} GB of memory and this Mac "
                f"offers {report.budget_bytes / gb:.1f} GB. "
            )
            if report is not None
            else ""
        )
        fix = (
            f"\n\nTo make it fit: {report.suggestion.description}."
            if report is not None and report.suggestion is not None
            else ""
        )
        box = QMessageBox(
            QMessageBox.Icon.Warning,
            "Start a run that will not fit?",
            "This run is predicted not to fit in memory.",
            parent=self,
        )
        box.setInformativeText(
            f"{numbers}Training may slow the Mac down badly; if memory runs short the run saves a "
            f"checkpoint and stops.{fix}"
        )
        start = box.addButton("Start anyway", QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        self.fit_confirm = box
        try:
            box.exec()
            return box.clickedButton() is start
        finally:
            self.fit_confirm = None
            box.deleteLater()

    def start_with(self, cfg, notes: list[str] | None = None) -> bool:
        self.settings.set_config(cfg)
        ok = self.start()
        for n in notes or []:
            self._append_log(f"note: {n}")
        return ok

    def stop(self) -> None:
        if self.controller.active and self.controller.state != STOPPING:
            self._append_log("Stopping: the run finishes its step and saves a checkpoint…")
            self.controller.stop()

    def resume(self) -> None:
        run_dir = self.final_details.get("run_dir")
        if not run_dir or self.controller.active:
            return
        self.resume_run(Path(run_dir))

    def _on_force_clicked(self) -> None:
        run_dir = self.final_details.get("run_dir")
        if run_dir and not self.controller.active:
            self.resume_run(Path(run_dir), force=True)

    def resume_run(self, run_dir: Path, force: bool = False) -> None:
        if self.controller.active:
            return
        self._reset_view(f"Resuming {id_name(run_dir.name)}")
        try:
            self.controller.resume(run_dir, force=force)
        except RuntimeError as exc:
            self._show_result("problem", _esc(str(exc)), buttons=())
            return
        # Keep the curve so far: the resumed run continues it. Its events.jsonl (a long run's
        # is large) is read and turned into curves on a worker thread, never on this one.
        from app.services import run_curves

        task = Task(run_curves, run_dir, self.chart.smoothing)
        task.sig_done.connect(lambda history, d=run_dir: self._on_history_loaded(d, history))
        self._history_task = task.start(self)

    def _on_history_loaded(self, run_dir: Path, history) -> None:
        if self.controller.run_dir is None or Path(self.controller.run_dir) != Path(run_dir):
            return  # another run is on the page by now
        self.chart.merge_history(history)

    def _reset_view(self, title: str) -> None:
        self.start_problem = False
        self.final_state = None
        self.final_details = {}
        self.chart.clear()
        self.chart.placeholder = "Loading the model…"
        self.chart.update()
        self.result.setVisible(False)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)  # busy until the first progress event
        self.progress.setFormat("")
        self.eta.setText("starting…")
        self.stats.setText("")
        self.header.set_full_text(title)
        self.log.clear()
        self._pending_log.clear()

    # -- controller signals -------------------------------------------------------------------
    def _on_controller_state_changed(self, state: str) -> None:
        running = state != IDLE
        self._update_start_button()
        self.stop_button.setEnabled(running and state != STOPPING)
        self.settings.setEnabled(not running)
        if state == STOPPING:
            self.eta.setText("stopping…")

    def _on_controller_started(self, e: dict) -> None:
        cfg = e.get("config", {}) or {}
        total = int(e.get("total_steps") or 0)
        self.chart.total_steps = total
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(int(e.get("resumed_from") or 0))
        run_id = str(e.get("run_id") or "")
        # The run id is `<stamp>-<the run's name>-<hex>`: its name part is the name to show.
        title = run_title(
            id_name(run_id), run_id, str(cfg.get("data", "")), str(cfg.get("model", ""))
        )
        self.header.set_full_text(f"Training {title}", tooltip=str(e.get("run_dir") or run_id))
        self.chart.placeholder = "Waiting for the first step…"
        self._append_log(
            f"Run {e.get('run_id')} started: {total} steps, "
            f"{cfg.get('train_examples', '?')} training examples."
        )
        self.settings.show_batch_note(str(cfg.get("batch_note") or ""))
        if cfg.get("batch_note"):
            self._append_log(str(cfg["batch_note"]))

    def _on_controller_progress(self, e: dict) -> None:
        # Cheap on purpose: append to the chart's buffer; labels refresh on the stats timer.
        self.chart.add_train(e.get("step", 0), e.get("train_loss"))

    def _on_controller_eval(self, e: dict) -> None:
        self.chart.add_valid(e.get("step", 0), e.get("val_loss"))
        self._append_log(
            f"step {e.get('step')}: validation loss {e.get('val_loss', float('nan')):.4f}"
        )

    def _on_controller_checkpoint(self, e: dict) -> None:
        self._append_log(f"checkpoint saved at step {e.get('step')}")

    def _on_controller_log(self, level: str, message: str) -> None:
        self._append_log(message if level in ("info", "output") else f"{level}: {message}")

    def _on_controller_error(self, e: dict) -> None:
        self._append_log(
            f"error: {e.get('message')}" + (f" ({e.get('hint')})" if e.get("hint") else "")
        )

    def _on_controller_finished(self, state: str, details: dict) -> None:
        self.final_state = state
        self.final_details = details
        self.final_numbers = None
        self._on_stats_timer_timeout()
        self._flush_log()
        run_dir = details.get("run_dir")
        if not run_dir:
            self._show_finished(state, details, None)
            return
        # The run's numbers (steps reached, active time, best validation loss) come from the
        # engine, read off the GUI thread: the same numbers the Runs page shows.
        from engine.runs import run_numbers

        task = Task(run_numbers, Path(run_dir))
        task.sig_done.connect(lambda numbers: self._show_finished(state, details, numbers))
        task.sig_failed.connect(lambda *_: self._show_finished(state, details, None))
        self._numbers_task = task.start(self)

    def _show_finished(self, state: str, details: dict, numbers) -> None:
        if details is not self.final_details:
            return  # another run started meanwhile
        self.final_numbers = numbers
        fin = details.get("finished") or {}
        summary = fin.get("summary") or {}
        total = (numbers.total_steps if numbers else 0) or self.controller.total_steps or 1
        self.progress.setRange(0, max(1, total))
        ck = details.get("last_checkpoint") or {}
        last = details.get("last_progress") or {}
        step = (
            numbers.step
            if numbers is not None
            else int(summary.get("steps") or ck.get("step") or last.get("step") or 0)
        )
        self.progress.setValue(min(step, self.progress.maximum()))
        self.progress.setFormat(f"step {step} of {total}")
        best = numbers.best_val_loss if numbers is not None else None
        seconds = numbers.active_seconds if numbers is not None else summary.get("wall_seconds")
        run_name = id_name(str(details.get("run_id") or "")) or "the run"
        if state == "completed":
            self.progress.setValue(self.progress.maximum())
            text = f"<b>Training completed.</b> {step} steps in {format_eta(seconds)}"
            if best is not None:
                text += f", best validation loss {best:.4f}"
            text += f".<br>Adapter: {_esc(str(fin.get('adapter_path') or ''))}"
            self._show_result("completed", text, ("chat", "export", "runs"))
            self.eta.setText("done")
            note = f"{run_name} completed" + (
                f", validation loss {best:.3f}" if best is not None else ""
            )
        elif state == "stopped":
            text = (
                f"<b>Training stopped</b> at step {step}; "
                f"the checkpoint is kept, so you can resume later."
            )
            self._show_result("stopped", text, ("resume", "chat", "export", "runs"))
            self.eta.setText("stopped")
            note = f"{run_name} stopped at step {step}"
        elif failure_summary(details.get("error")) is not None:
            error = details["error"]
            headline, body = failure_summary(error)
            refused = bool(error.get("fit")) and not details.get("last_progress")
            can_resume = bool(details.get("last_checkpoint")) or _has_checkpoint(
                details.get("run_dir")
            )
            verb = (
                "Not started"
                if refused
                else ("Training interrupted" if state == INTERRUPTED else "Training stopped")
            )
            text = f"<b>{verb}: {_esc(headline)}</b><br>{body}"
            if refused:
                text += (
                    "<br>Start anyway ignores the estimate; the run still saves a checkpoint and "
                    "stops if memory runs short."
                )
            elif can_resume:
                text += "<br>Resume continues from the last checkpoint."
            self._show_result("problem", text, ("force", "runs") if refused else ("resume", "runs"))
            self.eta.setText(state)
            note = f"{run_name} stopped: {headline}"
        else:
            message = (
                describe_crash(details)
                if state == INTERRUPTED
                else (
                    (details.get("error") or {}).get("message")
                    or str(summary.get("reason") or "The run failed.")
                )
            )
            hint = (details.get("error") or {}).get("hint") if state != INTERRUPTED else ""
            can_resume = bool(details.get("last_checkpoint")) or _has_checkpoint(
                details.get("run_dir")
            )
            text = (
                f"<b>Training {'interrupted' if state == INTERRUPTED else 'failed'}.</b><br>"
                + _esc(message).replace("\n", "<br>")
            )
            if hint:
                text += f"<br>What to do: {_esc(hint)}"
            if state == INTERRUPTED and details.get("exit_code") not in (None, -1):
                text += f"<br>Exit code {details['exit_code']}."
            text += (
                "<br>Resume continues from the last checkpoint."
                if can_resume
                else "<br>No checkpoint was saved yet; Resume starts the run again."
            )
            self._show_result("problem", text, ("resume", "runs"))
            self.eta.setText(state)
            note = f"{run_name} {'interrupted' if state == INTERRUPTED else 'failed'}"
        self.sig_run_ended.emit(state, note)

    def _show_result(self, kind: str, html: str, buttons: tuple[str, ...], fix=None) -> None:
        self.start_problem = False
        self.problem_fix = fix
        if fix is not None:
            self.fix_button.setText(fix.label)
        self.fix_button.setVisible("fix" in buttons and fix is not None)
        self.result.setProperty("kind", kind)
        self.result.style().unpolish(self.result)
        self.result.style().polish(self.result)
        self.result_text.setText(html)
        self.chat_button.setVisible("chat" in buttons)
        self.export_button.setVisible("export" in buttons)
        self.resume_button.setVisible("resume" in buttons)
        self.force_button.setVisible("force" in buttons)
        self.runs_button.setVisible("runs" in buttons)
        self.result.setVisible(True)
        if kind == "problem" and self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.eta.setText("")

    def _on_chat_clicked(self) -> None:
        if self.final_details.get("run_dir"):
            self.sig_chat_requested.emit(self.final_details["run_dir"])

    def _on_export_clicked(self) -> None:
        if self.final_details.get("run_dir"):
            self.sig_export_requested.emit(self.final_details["run_dir"])

    # -- stats and log, throttled -------------------------------------------------------------
    def _on_stats_timer_timeout(self) -> None:
        self._flush_log()
        e = self.controller.last_progress if self.controller.active or self.final_state else None
        if not e:
            return
        if (
            self.controller.active
        ):  # a finished run's bar shows the step it reached (_show_finished)
            total = int(e.get("total") or 0)
            if self.progress.maximum() != max(1, total):
                self.progress.setRange(0, max(1, total))
            self.progress.setValue(int(e.get("step", 0)))
            self.progress.setFormat(f"step {e.get('step', 0)} of {total}")
        if self.controller.active and self.controller.state != STOPPING:
            self.eta.setText(f"ETA {format_eta(e.get('eta_seconds'))}")
        self.stats.setText(
            f"{e.get('tokens_per_second') or 0:,.0f} tok/s  ·  peak {e.get('peak_memory_gb') or 0:.2f} GB  ·  "
            f"lr {e.get('learning_rate') or 0:.2e}  ·  loss {e.get('train_loss') or float('nan'):.4f}"
        )

    def _append_log(self, line: str) -> None:
        self._pending_log.append(line)

    def _flush_log(self) -> None:
        if self._pending_log:
            self.log.appendPlainText("\n".join(self._pending_log[-3000:]))
            self._pending_log.clear()

    def _on_log_toggle_toggled(self, on: bool) -> None:
        self.log.setVisible(on)
        self.log_toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    # -- memory fit ---------------------------------------------------------------------------
    def _on_settings_changed(self) -> None:
        self._update_start_button()
        if self.start_problem and not self.controller.active:
            # The problem was about these settings: it goes once they change (Start re-checks).
            self.start_problem = False
            self.result.setVisible(False)
        self.fit_banner.show_pending()
        self._fit_timer.start()

    def refresh_fit(self) -> None:
        self._fit_timer.start(0)

    def _on_fit_timer_timeout(self) -> None:
        from app.services import fit_estimate

        self._fit_generation += 1
        generation = self._fit_generation
        cfg = self.settings.config()
        task = Task(fit_estimate, cfg.model.path, cfg, self.fit_budget_bytes)
        task.sig_done.connect(lambda report, g=generation: self._on_fit_done(g, report))
        task.sig_failed.connect(lambda message, hint, g=generation: self._on_fit_failed(g, message))
        self._fit_task = task.start(self)

    def _on_fit_done(self, generation: int, report) -> None:
        if generation != self._fit_generation:
            return  # settings changed meanwhile; a newer estimate is on its way
        self.fit_report = report
        self.fit_banner.show_report(report)
        self.settings.show_automatic(report.automatic)

    def _on_fit_failed(self, generation: int, message: str) -> None:
        if generation == self._fit_generation:
            self.fit_report = None
            self.fit_banner.show_problem(message)
            self.settings.show_automatic({})

    def _on_fit_apply(self, changes: dict) -> None:
        quantize = changes.pop("model.quantize", None)
        if changes:
            self.settings.set_values(changes)
        if quantize:
            self.sig_quantize_requested.emit(self.settings.model.currentText())


def failure_summary(error: dict | None) -> tuple[str, str] | None:
    """(headline, HTML body) for the error kinds that get their own summary: `memory` (a refused
    run carries the fit estimate in `fit`, a run stopped while training its memory plan in
    `memory`) and `disk_full`. None for every other error."""
    if not error or error.get("kind") not in ("memory", "disk_full"):
        return None
    message = _esc(str(error.get("message") or ""))
    hint = str(error.get("hint") or "")
    if error["kind"] == "disk_full":
        body = message + (f"<br>What to do: {_esc(hint)}" if hint else "")
        return "the disk is full.", body
    fit = error.get("fit")
    if isinstance(fit, dict):
        gb = 1024**3
        need = fit.get("training_peak_gb") or (fit.get("training_peak_bytes") or 0) / gb
        have = fit.get("budget_gb") or (fit.get("budget_bytes") or 0) / gb
        body = (
            f"Training needs about <b>{need:.1f} GB</b>; this Mac offers <b>{have:.1f} GB</b>"
            + (f" ({_esc(str(fit['budget_source']))})" if fit.get("budget_source") else "")
            + "."
        )
        suggestion = fit.get("suggestion") or {}
        if suggestion.get("description"):
            body += f"<br>To make it fit: {_esc(str(suggestion['description']))}"
            if suggestion.get("training_peak_gb"):
                body += f" (about {suggestion['training_peak_gb']:.1f} GB)"
            body += "."
        return "it will not fit in memory.", body
    body = message
    plan = error.get("memory")
    if isinstance(plan, dict) and plan.get("stop_bytes"):
        body += f"<br>Memory limit for training: {plan['stop_bytes'] / 1024**3:.1f} GB."
    if hint:
        body += f"<br>What to do: {_esc(hint)}"
    return "memory ran short.", body


def _has_checkpoint(run_dir) -> bool:
    if not run_dir:
        return False
    root = Path(run_dir) / "checkpoints"
    return root.is_dir() and any(p.name.isdigit() for p in root.iterdir())
