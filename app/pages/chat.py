"""Chat page: talk to a base model or a tuned one (any run, any checkpoint), or to both side by side.

The page is a view on `ChatController` (app/chat_controller.py), which loads the model and streams
replies on worker threads; the page shows the conversation, the sampling controls, and turns a good
(or corrected) reply into a training example with "Add to dataset".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.chat_controller import ChatController
from app.chat_view import AddToDatasetDialog, ChatInputWidget, ConversationWidget
from app.names import humanize_ids, model_name, run_label, run_name
from app.tasks import Task
from app.theme import fit_popup, show_names

FINAL = "final"
EDITING_HINT = "Editing your last message: Enter resends it, Escape cancels."


@dataclass
class ChatRun:
    id: str
    path: str
    name: str
    model: str
    steps: list[int]
    has_final: bool


def chat_runs() -> list[ChatRun]:
    """Runs that have an adapter to chat with (a final adapter or a checkpoint), newest first."""
    from engine.chat import checkpoint_steps
    from engine.runs import list_runs

    out = []
    for info in list_runs():
        steps = checkpoint_steps(info.path)
        has_final = (
            info.path / "adapters" / "adapter_config.json"
        ).is_file() and info.adapter_path is not None
        if steps or has_final:
            out.append(
                ChatRun(
                    info.id,
                    str(info.path),
                    info.config.name or info.id,
                    info.config.model.path,
                    steps,
                    has_final,
                )
            )
    return out


def workspace_datasets() -> list[tuple[str, str]]:
    """(label, folder) of Lathe's own datasets: the only files "Add to dataset" may change."""
    from engine.data import list_datasets

    return [
        (f"{d.name}  ({d.splits.get('train', 0)} train examples)", str(d.path))
        for d in list_datasets()
    ]


class ChatPage(QWidget):
    sig_example_added = Signal(str)  # the dataset file that grew

    def __init__(self, parent: QWidget | None = None, controller: ChatController | None = None):
        super().__init__(parent)
        self.controller = controller or ChatController(self)
        self.run_dir: str | None = None
        self.runs: list[ChatRun] = []
        self._editing_index: int | None = None
        self._status_before_edit = ""
        self.compare_question: QMessageBox | None = None  # open while asking (tests answer it)
        self._model_auto = True  # the model field follows the run until the user types another
        self._tasks: list[Task] = []
        self._build()
        self._wire()
        self._update_buttons()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        """Arriving on Chat puts the cursor in the message box, as Messages does: otherwise the
        first field in the focus chain (the model's path) took focus and showed the raw path."""
        super().showEvent(event)
        if self.input.isEnabled() and self.window().isActiveWindow():
            self.input.setFocus(Qt.FocusReason.OtherFocusReason)

    # -- layout -------------------------------------------------------------------------------
    def _build(self) -> None:
        title = QLabel("Chat")
        title.setObjectName("pageTitle")
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.setMinimumContentsLength(12)
        self.model.lineEdit().setPlaceholderText("model folder or repo id (default: the run's)")
        show_names(self.model, model_name)
        self.model.activated.connect(
            lambda i: self.model.setEditText(str(self.model.itemData(i) or self.model.itemText(i)))
        )
        self.run = QComboBox()
        self.run.setMinimumContentsLength(12)
        self.run.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.checkpoint = QComboBox()
        self.checkpoint.setMinimumContentsLength(8)
        self.checkpoint.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.load_button = QPushButton("Load")
        self.compare_box = QCheckBox("Compare")
        self.compare_box.setToolTip(
            "Compare with the base model: one prompt, two columns, the base model on the left, "
            "the tuned model on the right."
        )
        picker = QHBoxLayout()
        picker.addWidget(title)
        picker.addSpacing(12)
        for label, w in (("Model", self.model), ("Run", self.run), ("Checkpoint", self.checkpoint)):
            picker.addWidget(QLabel(label))
            picker.addWidget(w, 3 if w is self.run else 2 if w is self.model else 1)
        picker.addWidget(self.load_button)
        picker.addWidget(self.compare_box)
        self.status = QLabel("Pick a model, or a run to chat with its tuned model, and press Load.")
        self.status.setObjectName("muted")
        self.status.setWordWrap(True)
        self.error = QLabel()
        self.error.setObjectName("errorText")
        self.error.setWordWrap(True)
        self.error.hide()

        # Conversations: one view, or two columns in compare mode.
        self.view = ConversationWidget(
            "Say something to start. Replies stream in here, with what "
            "produced them and how fast under each one."
        )
        self.base_view = ConversationWidget("The base model's replies appear here.")
        self.tuned_view = ConversationWidget("The tuned model's replies appear here.")
        columns = QSplitter(Qt.Orientation.Horizontal)
        columns.addWidget(self.base_view)
        columns.addWidget(self.tuned_view)
        columns.setChildrenCollapsible(False)
        self.views = QStackedWidget()
        self.views.addWidget(self.view)
        self.views.addWidget(columns)

        self.input = ChatInputWidget()
        self.input.setMaximumHeight(84)
        self.send_button = QPushButton("Send")
        self.send_button.setObjectName("primary")
        self.stop_button = QPushButton("Stop")
        self.regenerate_button = QPushButton("Regenerate")
        self.edit_button = QPushButton("Edit")
        self.edit_button.setToolTip("Edit your last message and send it again.")
        self.copy_button = QPushButton("Copy")
        self.clear_button = QPushButton("Clear")
        self.add_button = QPushButton("Add to Dataset…")
        self.add_button.setToolTip(
            "Keep the last exchange (corrected if you like) as a training example."
        )
        buttons = QHBoxLayout()
        for b in (
            self.stop_button,
            self.regenerate_button,
            self.edit_button,
            self.copy_button,
            self.clear_button,
        ):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.send_button)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.views, 1)
        ll.addWidget(self.input)
        ll.addLayout(buttons)

        # Side panel: system prompt and sampling.
        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setPlaceholderText(
            "System prompt (optional), e.g. “You answer in one short paragraph.”"
        )
        self.system_prompt.setMaximumHeight(120)
        self.tools_file = QLineEdit()
        self.tools_file.setPlaceholderText("Tools file (JSON), optional")
        self.tools_file.setToolTip(
            "Tool definitions the model may call (a JSON list in OpenAI's shape), rendered through "
            "the chat template as in training."
        )
        self.tools_note = QLabel()
        self.tools_note.setObjectName("muted")
        self.tools_note.setWordWrap(True)
        self.tools_note.setVisible(False)
        self.temperature = _double(0.0, 2.0, 0.7, 0.05, "0 always picks the likeliest token.")
        self.top_p = _double(
            0.01,
            1.0,
            1.0,
            0.05,
            "Sample only from the likeliest tokens that together have this probability (1 is off).",
        )
        self.min_p = _double(
            0.0,
            0.99,
            0.0,
            0.01,
            "Drop tokens less likely than this fraction of the likeliest one (0 is off).",
        )
        self.repetition_penalty = _double(
            0.5, 2.0, 1.0, 0.05, "Above 1 discourages repeating recent tokens (1 is off)."
        )
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 32768)
        self.max_tokens.setValue(512)
        self.seed = QSpinBox()
        self.seed.setRange(-1, 2**31 - 1)
        self.seed.setValue(-1)
        self.seed.setSpecialValueText("random")
        self.seed.setToolTip("A fixed seed makes sampled replies repeatable.")
        side = QWidget()
        side.setMinimumWidth(210)
        side.setMaximumWidth(320)
        sl = QVBoxLayout(side)
        sl.setContentsMargins(10, 0, 0, 0)
        head = QLabel("System prompt")
        head.setObjectName("sectionTitle")
        sl.addWidget(head)
        sl.addWidget(self.system_prompt)
        head = QLabel("Tools")
        head.setObjectName("sectionTitle")
        sl.addWidget(head)
        sl.addWidget(self.tools_file)
        sl.addWidget(self.tools_note)
        head = QLabel("Sampling")
        head.setObjectName("sectionTitle")
        sl.addWidget(head)
        self.max_tokens.setToolTip("The longest reply, in tokens.")
        form = QFormLayout()
        for text, field in (
            ("Temperature", self.temperature),
            ("Top-p", self.top_p),
            ("Min-p", self.min_p),
            ("Repetition penalty", self.repetition_penalty),
            ("Max tokens", self.max_tokens),
            ("Seed", self.seed),
        ):
            label = QLabel(text)
            label.setToolTip(field.toolTip())  # the words are what users point at
            label.setBuddy(field)
            form.addRow(label, field)
        sl.addLayout(form)
        self.template_note = QLabel()
        self.template_note.setObjectName("muted")
        self.template_note.setWordWrap(True)
        sl.addWidget(self.template_note)
        sl.addStretch(1)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(side)
        split.setStretchFactor(0, 1)
        split.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addLayout(picker)
        layout.addWidget(self.status)
        layout.addWidget(self.error)
        layout.addWidget(split, 1)
        self._fill_runs([])

    def _wire(self) -> None:
        c = self.controller
        c.sig_loading.connect(self._on_controller_loading)
        c.sig_loaded.connect(self._on_controller_loaded)
        c.sig_load_failed.connect(self._on_controller_load_failed)
        c.sig_busy_changed.connect(self._on_controller_busy_changed)
        c.sig_reply_started.connect(self._on_controller_reply_started)
        c.sig_text.connect(self._on_controller_text)
        c.sig_notice.connect(self._on_controller_notice)
        c.sig_reply_done.connect(self._on_controller_reply_done)
        c.sig_failed.connect(self._on_controller_failed)
        self.load_button.clicked.connect(self.load)
        self.run.currentIndexChanged.connect(self._on_run_changed)
        self.model.lineEdit().textEdited.connect(self._on_model_edited)
        self.model.activated.connect(self._on_model_edited)
        self.compare_box.clicked.connect(self._on_compare_clicked)
        self.compare_box.toggled.connect(self._on_compare_toggled)
        self.input.sig_submit.connect(self.send)
        self.input.sig_escape.connect(self._cancel_edit)
        self.send_button.clicked.connect(lambda: self.send(self.input.toPlainText()))
        self.stop_button.clicked.connect(self.stop)
        self.regenerate_button.clicked.connect(self.regenerate)
        self.edit_button.clicked.connect(self.edit_last)
        self.copy_button.clicked.connect(self.copy_last)
        self.clear_button.clicked.connect(self.clear)
        self.add_button.clicked.connect(self.add_to_dataset)
        self.system_prompt.textChanged.connect(
            lambda: c.set_system_prompt(self.system_prompt.toPlainText())
        )
        self.tools_file.editingFinished.connect(self._on_tools_file_edited)
        QShortcut(QKeySequence("Ctrl+."), self, activated=self.stop)

    def _on_tools_file_edited(self) -> None:
        """Read the tools file (small JSON) and give its definitions to the chat."""
        from engine.chat import ChatError, load_tools

        path = self.tools_file.text().strip()
        tools = None
        if path:
            try:
                tools = load_tools(path)
            except ChatError as exc:
                self.tools_note.setText(f"{exc.args[0]} {exc.hint}".strip())
                self.tools_note.setVisible(True)
                self.controller.set_tools(None)
                return
        self.controller.set_tools(tools)
        names = ", ".join(t["function"].get("name", "?") for t in tools or [])
        self.tools_note.setText(f"The model sees: {names}" if names else "")
        self.tools_note.setVisible(bool(names))

    # -- runs and models ----------------------------------------------------------------------
    def refresh(self, then=None) -> None:
        """Reload the run and model lists on a worker thread."""
        from app.services import model_choices

        task = Task(lambda: (chat_runs(), model_choices()))

        def done(result):
            runs, models = result
            self._fill_models(models)
            self._fill_runs(runs)
            if then is not None:
                then()

        task.sig_done.connect(done)
        task.sig_failed.connect(self._show_error)
        self._keep(task)

    def _fill_models(self, models: list[tuple[str, str]]) -> None:
        text = self.model.currentText()
        self.model.blockSignals(True)
        self.model.clear()
        for label, value in models:
            self.model.addItem(label, value)
            self.model.setItemData(self.model.count() - 1, value, Qt.ItemDataRole.ToolTipRole)
        self.model.setEditText(text)
        self.model.blockSignals(False)
        fit_popup(self.model)

    def _fill_runs(self, runs: list[ChatRun]) -> None:
        current = self.run_dir
        self.runs = runs
        self.run.blockSignals(True)
        self.run.clear()
        self.run.addItem("none (base model only)", None)
        names = [run_name(r.name if r.name != r.id else "", r.id) for r in runs]
        for r, name in zip(runs, names, strict=True):
            # The start time only where two runs share a name.
            label = run_label(name, r.id) if names.count(name) > 1 else name
            self.run.addItem(label, r.path)
            self.run.setItemData(self.run.count() - 1, r.path, Qt.ItemDataRole.ToolTipRole)
        self.run.blockSignals(False)
        fit_popup(self.run)
        self._select_run(current)

    def _select_run(self, run_dir: str | None) -> None:
        index = 0
        if run_dir:
            want = _norm(run_dir)
            index = next(
                (i for i in range(1, self.run.count()) if _norm(self.run.itemData(i)) == want), 0
            )
        self.run.setCurrentIndex(index)
        self._on_run_changed(index)

    def _on_run_changed(self, index: int) -> None:
        path = self.run.itemData(index) if index >= 0 else None
        self.run_dir = path
        info = next((r for r in self.runs if r.path == path), None)
        self.checkpoint.clear()
        if info is not None:
            if info.has_final:
                self.checkpoint.addItem("final adapter", FINAL)
            for step in reversed(info.steps):
                self.checkpoint.addItem(f"step {step}", step)
            if self._model_auto or not self.model.currentText().strip():
                self.model.setEditText(info.model)
                self._model_auto = True
        self.checkpoint.setEnabled(info is not None)

    def _on_model_edited(self, *_args) -> None:
        self._model_auto = False

    def adapter_spec(self) -> str | None:
        if not self.run_dir:
            return None
        step = self.checkpoint.currentData()
        return self.run_dir if step in (None, FINAL) else f"{self.run_dir}:{step}"

    def set_run(self, run_dir: str | None) -> None:
        """Open Chat for a run (Runs ▸ Open in Chat, Train ▸ Chat with it): select it, its base
        model and its final adapter, and load them."""
        self.run_dir = str(run_dir) if run_dir else None
        if run_dir is None:
            self.refresh()
            return
        self._model_auto = True

        def select_and_load():
            self._select_run(self.run_dir)
            if self.run_dir is not None and self.run.currentIndex() > 0:
                self.load()
            else:
                self._show_error(
                    f"The run {self.run_dir} has no adapter to chat with yet.",
                    "Wait for its first checkpoint, or pick another run.",
                )

        self.refresh(then=select_and_load)

    # Other pages may call these names too.
    open_run = show_run = set_run

    def load(self) -> None:
        self._hide_error()
        model = self.model.currentText().strip() or None
        adapter = self.adapter_spec()
        if model is None and adapter is None:
            self._show_error("No model chosen.", "Pick a model or a run first.")
            return
        self.controller.load(model, adapter)

    def _on_controller_loading(self, text: str) -> None:
        self.status.setText(text)
        self._update_buttons()

    def _on_controller_loaded(self, state: dict) -> None:
        tuned = state.get("tuned_label")
        self.status.setText(
            f"Chatting with {humanize_ids(tuned or state['base_label'])}  ·  context "
            f"{state['context_length']} tokens"
        )
        source = {
            "run": "the run's chat template",
            "model": "the model's own chat template",
            "default": "Lathe's default chat template (the model has none)",
        }
        self.template_note.setText(
            "Prompts use " + source.get(state["template_source"], state["template_source"]) + "."
        )
        context = int(state["context_length"])
        if self.max_tokens.value() >= context:  # leave the conversation room in a small context
            self.max_tokens.setValue(max(1, context // 2))
        self.base_view.header = humanize_ids(state["base_label"])
        self.tuned_view.header = humanize_ids(tuned or "")
        if not tuned and self.compare_box.isChecked():
            self.compare_box.setChecked(False)
        self._resync()
        self._update_buttons()

    def _on_controller_load_failed(self, message: str, hint: str) -> None:
        self.status.setText("No model loaded.")
        self._show_error(message, hint)
        self._update_buttons()

    # -- conversation -------------------------------------------------------------------------
    @property
    def compare(self) -> bool:
        return self.compare_box.isChecked()

    def settings(self):
        from engine.chat import ChatSettings

        seed = self.seed.value()
        return ChatSettings(
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            min_p=self.min_p.value(),
            repetition_penalty=self.repetition_penalty.value(),
            max_tokens=self.max_tokens.value(),
            seed=None if seed < 0 else seed,
        )

    def _views(self) -> list[ConversationWidget]:
        return [self.base_view, self.tuned_view] if self.compare else [self.view]

    def _view(self, side: str) -> ConversationWidget:
        return {"single": self.view, "base": self.base_view, "tuned": self.tuned_view}[side]

    def send(self, text: str) -> None:
        if not text.strip() or self.controller.busy:
            return
        self._hide_error()
        if self.controller.model is None:
            self._show_error("No model is loaded yet.", "Pick a model or run and press Load.")
            return
        settings = self.settings()
        if self._editing_index is not None:
            index, self._editing_index = self._editing_index, None
            self._end_edit_hint()
            started = self.controller.edit_and_resend(index, text, settings, self.compare)
            if started:
                for v in self._views():
                    v.truncate(index)
        else:
            started = self.controller.send(text, settings, self.compare)
        if started:
            waiting = ["", "waiting for the base model's reply…"] if self.compare else [""]
            for v, w in zip(self._views(), waiting):
                v.add_user(text, w)
            self.input.clear()
        self._update_buttons()

    def regenerate(self) -> None:
        if self.controller.regenerate(self.settings(), self.compare):
            for v in self._views():
                v.drop_last_reply()
            if self.compare:
                self.tuned_view.waiting = "waiting for the base model's reply…"
        self._update_buttons()

    def edit_last(self) -> None:
        """Put the last message you sent back in the box; sending it replaces it and what followed."""
        session = self._main_session()
        if session is None:
            return
        index = next(
            (
                i
                for i in range(len(session.history) - 1, -1, -1)
                if session.history[i]["role"] == "user"
            ),
            None,
        )
        if index is None:
            return
        self._editing_index = index
        self.input.setPlainText(session.history[index]["content"])
        self.input.setFocus()
        self.send_button.setText("Resend")
        if self._status_before_edit == "":
            self._status_before_edit = self.status.text()
        self.status.setText(EDITING_HINT)

    def _cancel_edit(self) -> None:
        if self._editing_index is not None:
            self._editing_index = None
            self.input.clear()
            self.send_button.setText("Send")
        self._end_edit_hint()

    def _end_edit_hint(self) -> None:
        """The editing hint goes when the edit ends (Escape, Resend, another conversation)."""
        if self.status.text() == EDITING_HINT:
            self.status.setText(self._status_before_edit)
        self._status_before_edit = ""

    def stop(self) -> None:
        self.controller.stop()

    def copy_last(self) -> None:
        reply = self.last_reply_text()
        if reply is not None:
            QGuiApplication.clipboard().setText(reply)

    def last_reply_text(self) -> str | None:
        session = self._main_session()
        if session is None:
            return None
        return next(
            (m["content"] for m in reversed(session.history) if m["role"] == "assistant"), None
        )

    def clear(self) -> None:
        self.controller.stop()
        self.controller.reset(self.compare)
        self._cancel_edit()
        for v in self._views():
            v.clear_conversation()
        self._update_buttons()

    def _main_session(self):
        """The conversation the buttons act on: the tuned side in compare mode."""
        return self.controller.session("tuned" if self.compare else "single")

    def _on_compare_clicked(self, on: bool) -> None:
        """The user switched compare mode: ask first when the conversation on screen would go."""
        leaving = self.controller.session("tuned" if not on else "single")
        entering = self.controller.session("tuned" if on else "single")
        if leaving is None or not leaving.history or (entering is not None and entering.history):
            return
        if not self.confirm_compare_switch(on):
            self.compare_box.setChecked(not on)

    def confirm_compare_switch(self, on: bool) -> bool:
        """Ask before the conversation on screen makes way for the other mode's (it is kept)."""
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Compare with base")
        if on:
            box.setText("Start a side-by-side comparison?")
            box.setInformativeText(
                "Compare mode starts a new conversation with the base and the tuned model. "
                "This conversation is kept: turn Compare off to go back to it."
            )
            go = box.addButton("Compare", QMessageBox.ButtonRole.AcceptRole)
        else:
            box.setText("Leave the comparison?")
            box.setInformativeText(
                "The single conversation comes back. The comparison is kept: turn Compare on "
                "to go back to it."
            )
            go = box.addButton("Leave Compare", QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(go)
        self.compare_question = box
        try:
            box.exec()
            return box.clickedButton() is go
        finally:
            self.compare_question = None
            box.deleteLater()

    def _on_controller_busy_changed(self, busy: bool) -> None:
        if not busy:
            # Every pane shows its session as it ended: a reply stopped before it began (the
            # tuned side of a comparison) is settled, and no pane is left "waiting".
            self._resync()
        self._update_buttons()

    def _on_compare_toggled(self, on: bool) -> None:
        # Compare mode answers greedily by default (engine.commands.chat.COMPARE_TEMPERATURE), so
        # base and tuned answers are reproducible; a temperature the user chose is kept.
        from engine.commands.chat import CHAT_TEMPERATURE, COMPARE_TEMPERATURE

        value = self.temperature.value()
        if on and abs(value - CHAT_TEMPERATURE) < 1e-9:
            self.temperature.setValue(COMPARE_TEMPERATURE)
            self._compare_set_temperature = True
        elif not on and getattr(self, "_compare_set_temperature", False):
            if abs(value - COMPARE_TEMPERATURE) < 1e-9:
                self.temperature.setValue(CHAT_TEMPERATURE)
            self._compare_set_temperature = False
        self.views.setCurrentIndex(1 if on else 0)
        self._cancel_edit()
        self._resync()
        self._update_buttons()

    def _resync(self) -> None:
        if self.controller.busy:
            return
        self.view.sync(self.controller.session("single"))
        self.base_view.sync(self.controller.session("base"))
        self.tuned_view.sync(self.controller.session("tuned"))

    def _on_controller_reply_started(self, side: str, label: str) -> None:
        self._view(side).begin_reply(humanize_ids(label))

    def _on_controller_text(self, side: str, text: str) -> None:
        self._view(side).append_text(text)

    def _on_controller_notice(self, side: str, text: str) -> None:
        self._view(side).add_notice(text)

    def _on_controller_reply_done(self, side: str, _reply) -> None:
        self._view(side).sync(self.controller.session(side))
        if side == "base":
            self.tuned_view.waiting = "waiting for the tuned model's reply…"
            self.tuned_view.schedule(now=True)

    def _on_controller_failed(self, message: str, hint: str) -> None:
        self._show_error(message, hint)
        for side in ("single", "base", "tuned"):
            self._view(side).sync(self.controller.session(side))

    # -- add to dataset -----------------------------------------------------------------------
    def add_to_dataset(self) -> None:
        session = self._main_session()
        if session is None or not session.history or session.history[-1]["role"] != "assistant":
            self._show_error("There is no reply to add yet.", "Wait for the model to answer.")
            return
        messages = session.messages()
        task = Task(workspace_datasets)
        task.sig_done.connect(lambda datasets: self._ask_dataset(datasets, messages))
        task.sig_failed.connect(self._show_error)
        self._keep(task)

    def _ask_dataset(self, datasets, messages) -> None:
        dialog = AddToDatasetDialog(datasets, messages, messages[-1]["content"], self)
        self.dataset_dialog = dialog
        if dialog.exec() != AddToDatasetDialog.DialogCode.Accepted:
            return
        self.write_example(dialog.target(), messages, dialog.reply_text())

    def write_example(self, dataset: str, messages: list[dict], reply: str) -> None:
        """Append the exchange (with `reply` as its last reply) to `dataset`, on a worker thread."""
        from engine.chat import add_to_dataset

        task = Task(add_to_dataset, dataset, messages, reply=reply, create=True)
        task.sig_done.connect(self._on_example_added)
        task.sig_failed.connect(self._show_error)
        self._keep(task)

    def _on_example_added(self, path) -> None:
        self.status.setText(f"Added the example to {Path(path).parent.name} ({path}).")
        self.sig_example_added.emit(str(path))

    # -- helpers ------------------------------------------------------------------------------
    def _keep(self, task: Task) -> None:
        self._tasks = [t for t in self._tasks if not t.finished]
        self._tasks.append(task.start(self))

    def _show_error(self, message: str, hint: str = "") -> None:
        self.error.setText(f"{message} {hint}".strip())
        self.error.show()

    def _hide_error(self) -> None:
        self.error.hide()

    def _update_buttons(self) -> None:
        c = self.controller
        busy, ready = c.busy, c.model is not None and not c.loading
        session = self._main_session() if ready else None
        has_reply = bool(session and session.history and session.history[-1]["role"] == "assistant")
        has_user = bool(session and any(m["role"] == "user" for m in session.history))
        self.send_button.setEnabled(ready and not busy)
        self.stop_button.setEnabled(busy)
        self.regenerate_button.setEnabled(ready and not busy and has_user)
        self.edit_button.setEnabled(ready and not busy and has_user)
        self.copy_button.setEnabled(has_reply)
        self.add_button.setEnabled(has_reply and not busy)
        self.clear_button.setEnabled(ready and not busy)
        self.load_button.setEnabled(not c.loading)
        self.compare_box.setEnabled(not busy and (c.model is None or c.has_adapter))
        if not busy and self._editing_index is None:
            self.send_button.setText("Send")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.controller.close()
        super().closeEvent(event)


def _double(lo: float, hi: float, value: float, step: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setDecimals(2)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _norm(path) -> str:
    try:
        return str(Path(str(path)).expanduser().resolve())
    except (OSError, ValueError):
        return str(path)
