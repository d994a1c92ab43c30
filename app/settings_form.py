"""The Train page's settings: presets, the main fields, an Advanced section, the memory-fit banner.

The form chooses which settings it shows and in what order (MAIN_FIELDS, ADVANCED_FIELDS); each
widget is built from its config field's metadata in engine.config (issue 19): the field's type and
choices pick the widget, and its label, tooltip (the help text), range, step and special text
("All", "from epochs") come from the metadata, so no range, choice or help is typed here. The form
holds no training state: `config()` builds a RunConfig from the widgets, `set_config()` fills them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape as _esc  # for text shown as Qt rich text
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.names import dataset_name, model_name
from app.theme import fit_popup, show_names
from engine.config import (
    ConfigError,
    RunConfig,
    field_metadata,
    field_optional,
    field_type,
    read_yaml,
)


def resources_dir() -> Path:
    from engine.workspace import resources_dir as _rd

    return _rd()


@dataclass
class Preset:
    name: str
    description: str
    values: dict


def load_presets(path: Path | None = None) -> list[Preset]:
    """The presets of resources/presets.yaml (an unreadable file gives none, not a crash)."""
    path = path or resources_dir() / "presets.yaml"
    try:
        data = read_yaml(path.read_text(encoding="utf-8"), path) or {}
    except (OSError, UnicodeDecodeError, ConfigError):
        return []
    if not isinstance(data, dict):
        return []
    out = []
    for item in data.get("presets", []) or []:
        if isinstance(item, dict) and item.get("name"):
            out.append(
                Preset(
                    str(item["name"]),
                    str(item.get("description", "")),
                    dict(item.get("values") or {}),
                )
            )
    return out


def apply_values(cfg: RunConfig, values: dict) -> RunConfig:
    """Set `section.field` values on a config through its own parser (so "1e-4" works)."""
    data = cfg.to_dict()
    for key, value in values.items():
        section, name = key.split(".", 1)
        if section in data and isinstance(data[section], dict):
            data[section][name] = value
    return RunConfig.from_dict(data)


class _FloatEdit(QLineEdit):
    """A number field that accepts 1e-4 as well as 0.0001."""

    def __init__(self, fmt: str = "{:g}"):
        super().__init__()
        self.fmt = fmt
        self.setMaximumWidth(140)

    def value(self) -> float | None:
        try:
            v = float(self.text().strip())
        except ValueError:
            return None
        return v if math.isfinite(v) else None

    def setValue(self, v: float) -> None:  # noqa: N802 - Qt style
        self.setText(self.fmt.format(v))


class _WheelOnlyWhenFocused:
    """Mixin for value fields in a scrolling form: the wheel scrolls the form over a field, and
    changes the value only when the field has focus (clicked or tabbed into), as on the Mac. The
    wheel does not give focus either (Qt.StrongFocus, not WheelFocus)."""

    def _init_wheel(self) -> None:
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def wheelEvent(self, event) -> None:  # noqa: N802 - Qt API
        if not self.hasFocus():
            event.ignore()  # the scroll area behind the field gets it
            return
        super().wheelEvent(event)


class SpinBox(_WheelOnlyWhenFocused, QSpinBox):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._init_wheel()


class DoubleSpinBox(_WheelOnlyWhenFocused, QDoubleSpinBox):
    """Shows whole numbers without decimals: Epochs "2", not "2.0"; "1.5" stays "1.5"."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._init_wheel()

    def textFromValue(self, value: float) -> str:  # noqa: N802 - Qt API
        return f"{value:.{self.decimals()}f}".rstrip("0").rstrip(".") or "0"


class ComboBox(_WheelOnlyWhenFocused, QComboBox):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._init_wheel()


# The settings the form shows, in order ("section.field"); everything else comes from the field.
MAIN_FIELDS = [
    "training.epochs",
    "training.learning_rate",
    "lora.rank",
    "lora.num_layers",
    "training.batch_size",
    "data.max_seq_length",
]
ADVANCED_FIELDS = [
    "training.iters",
    "lora.fine_tune_type",
    "lora.scale",
    "lora.dropout",
    "training.optimizer",
    "training.grad_checkpoint",
    "training.auto_grad_checkpoint",
    "training.grad_accumulation_steps",
    "data.mask_prompt",
    "data.valid_fraction",
    "training.steps_per_report",
    "training.steps_per_eval",
    "training.save_every",
    "training.seed",
    "training.nan_retry",
]

SPIN_MAX = 2**31 - 1  # the largest value a QSpinBox holds (a C int); a wider range is cut to it


def field_label(key: str) -> str:
    """The label of a config field on the Train page (its metadata's `label`)."""
    label = field_metadata(key).get("label")
    if not label:
        raise ValueError(f"{key} has no label in engine.config's metadata; add label=... there.")
    return label


def spin_range(key: str) -> tuple[float, float]:
    """The lowest and highest value a spin box for `key` offers, from the field's range.

    A whole-number field runs from `at_least` (or one above `above`) to `at_most` (or one below
    `below`), within what a QSpinBox holds; a float field with a `step` does the same in units of
    its last shown decimal (`above=0` with step 0.5 starts at 0.1). An optional field (`int |
    None`) gets one value below the range, which means empty (None) and shows its `shown_as` text.
    """
    meta = field_metadata(key)
    unit = 1 if field_type(key) is int else 10 ** -spin_decimals(key)
    low = meta.get("at_least", meta["above"] + unit if "above" in meta else -SPIN_MAX)
    high = meta.get("at_most", meta["below"] - unit if "below" in meta else SPIN_MAX)
    if field_optional(key):
        low -= unit
    if field_type(key) is int:
        low, high = max(int(low), -SPIN_MAX), min(int(high), SPIN_MAX)
    return low, high


def spin_decimals(key: str) -> int:
    """Decimals a float spin box shows: as many as its step has (0.5: one)."""
    step = field_metadata(key).get("step", 1)
    text = f"{step:g}"
    return len(text.split(".", 1)[1]) if "." in text else 0


def special_text(key: str) -> str:
    """What the spin box shows at its lowest value: the field's `shown_as` text for that value."""
    shown = dict(field_metadata(key).get("shown_as") or {})
    if field_optional(key):
        if None not in shown:
            raise ValueError(f"{key} can be empty; say in shown_as what the form shows for None.")
        return shown[None]
    low = spin_range(key)[0]
    if shown and set(shown) != {low}:
        raise ValueError(f"{key}: shown_as names {set(shown)}; a spin box can name only {low}.")
    return shown.get(low, "")


class TrainSettingsWidget(QWidget):
    """Model, dataset, preset and every training setting, with help-text tooltips."""

    sig_changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.presets = load_presets()
        self.fields: dict[str, QWidget] = {}
        self._filling = False

        self.model = ComboBox()
        self.model.setEditable(True)
        self.model.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.model.setMinimumContentsLength(10)
        self.model.setToolTip(field_metadata("model.path")["help"])
        self.model.lineEdit().setPlaceholderText("model folder or Hugging Face repo id")
        self.data = ComboBox()
        self.data.setEditable(True)
        self.data.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.data.setMinimumContentsLength(10)
        self.data.setToolTip(field_metadata("data.path")["help"])
        self.data.lineEdit().setPlaceholderText("dataset file, folder or imported dataset")
        # The fields show names ("stories260K — /work/…/stories260K"), the form reads the path.
        show_names(self.model, model_name)
        show_names(self.data, dataset_name)
        self.name = QLineEdit()
        self.name.setPlaceholderText("optional")
        self.name.setToolTip(field_metadata("name")["help"])
        self.preset = ComboBox()
        self.preset.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.preset.addItems([p.name for p in self.presets] + ["Custom"])
        self.preset.setToolTip("\n".join(f"{p.name}: {p.description}" for p in self.presets))
        self.preset_note = QLabel()
        self.preset_note.setWordWrap(True)
        self.preset_note.setObjectName("muted")

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.labels: dict[QWidget, QLabel] = {}  # each field's label, with the field's tooltip
        self._row(form, field_label("model.path"), self.model)
        self._row(form, field_label("data.path"), self.data)
        self._row(form, "Preset", self.preset)
        form.addRow("", self.preset_note)
        for key in MAIN_FIELDS:
            self._row(form, field_label(key), self._make(key))
            if key == "training.batch_size":
                # What the batch size meant in the last run (examples per step, steps): the run
                # says so in its `started` event (see `show_batch_note`).
                self.batch_note = QLabel()
                self.batch_note.setObjectName("muted")
                self.batch_note.setWordWrap(True)
                self.batch_note.setVisible(False)
                form.addRow("", self.batch_note)

        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.setAutoRaise(True)
        self.advanced_toggle.toggled.connect(self._on_advanced_toggled)
        self.advanced = QWidget()
        adv = QFormLayout(self.advanced)
        adv.setContentsMargins(0, 0, 0, 0)
        self._row(adv, field_label("name"), self.name)
        for key in ADVANCED_FIELDS:
            self._row(adv, field_label(key), self._make(key))
        self.hosts = HostsWidget()
        adv.addRow(self.hosts)
        self.advanced.setVisible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)
        layout.addWidget(self.advanced_toggle)
        layout.addWidget(self.advanced)
        layout.addStretch(1)  # keep Advanced under the fields, not at the bottom of the scroll area

        self.model.currentTextChanged.connect(self._on_field_changed)
        self.data.currentTextChanged.connect(self._on_field_changed)
        self.name.textChanged.connect(self._on_field_changed)
        self.preset.currentIndexChanged.connect(self._on_preset_changed)
        self.set_config(RunConfig())
        default = next((i for i, p in enumerate(self.presets) if p.name == "Balanced"), 0)
        if self.presets:
            self.preset.setCurrentIndex(default)
            self._on_preset_changed(default)

    # -- building -----------------------------------------------------------------------------
    def _row(self, form: QFormLayout, text: str, field: QWidget) -> None:
        """A form row whose label shows the field's tooltip too (users point at the words)."""
        label = QLabel(text)
        label.setToolTip(field.toolTip())
        label.setBuddy(field)
        self.labels[field] = label
        form.addRow(label, field)

    def _make(self, key: str) -> QWidget:
        """The widget for config field `key`, from its metadata: choices give a drop-down, a bool a
        checkbox, a whole number a spin box, a float with a `step` a spin box and one without a
        text field that takes 1e-4; ranges, special text and the tooltip come from there too."""
        meta = field_metadata(key)
        tp = field_type(key)
        if meta.get("choices"):
            w = ComboBox()
            w.addItems([str(c) for c in meta["choices"]])
            w.setMaximumWidth(140)
            w.currentTextChanged.connect(self._on_field_changed)
        elif tp is bool:
            w = QCheckBox()
            w.toggled.connect(self._on_field_changed)
        elif tp is int or (tp is float and "step" in meta):
            if tp is int:
                w = SpinBox()
            else:
                w = DoubleSpinBox()
                w.setDecimals(spin_decimals(key))
                w.setSingleStep(meta["step"])
            w.setRange(*spin_range(key))
            w.setSpecialValueText(special_text(key))
            w.setMaximumWidth(140)
            w.valueChanged.connect(self._on_field_changed)
        elif tp is float:
            w = _FloatEdit()
            w.textChanged.connect(self._on_field_changed)
        else:
            w = QLineEdit()
            w.textChanged.connect(self._on_field_changed)
        w.setToolTip(meta.get("help", ""))
        w.setObjectName(key)
        self.fields[key] = w
        return w

    def _on_advanced_toggled(self, on: bool) -> None:
        self.advanced.setVisible(on)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    # -- values -------------------------------------------------------------------------------
    def set_config(self, cfg: RunConfig) -> None:
        self._filling = True
        try:
            self.model.setEditText(cfg.model.path)
            self.data.setEditText(cfg.data.path)
            self.name.setText(cfg.name)
            for key, w in self.fields.items():
                section, name = key.split(".")
                value = getattr(getattr(cfg, section), name)
                if isinstance(w, QSpinBox):
                    w.setValue(w.minimum() if value is None else int(value))
                elif isinstance(w, QDoubleSpinBox):
                    w.setValue(float(value))
                elif isinstance(w, _FloatEdit):
                    w.setValue(float(value))
                elif isinstance(w, QCheckBox):
                    w.setChecked(bool(value))
                elif isinstance(w, QComboBox):
                    w.setCurrentText(str(value))
        finally:
            self._filling = False
        self.sig_changed.emit()

    def set_values(self, values: dict) -> None:
        """Apply `section.field` values (a preset, a suggested fix)."""
        self.set_config(apply_values(self.config(validate=False), values))

    def config(self, validate: bool = False) -> RunConfig:
        """The RunConfig the form describes; `validate` raises ConfigError for bad values."""
        from engine.config import ConfigError

        cfg = RunConfig()
        cfg.name = self.name.text().strip()
        cfg.model.path = self.model.currentText().strip()
        cfg.data.path = self.data.currentText().strip()
        for key, w in self.fields.items():
            section, name = key.split(".")
            if isinstance(w, QSpinBox):
                value = w.value()
                if field_optional(key) and value == w.minimum():
                    value = None  # the value below the range: empty ("from epochs")
            elif isinstance(w, QDoubleSpinBox):
                value = float(w.value())
            elif isinstance(w, _FloatEdit):
                value = w.value()
                if value is None:
                    if validate:
                        example = field_metadata(key).get("example")
                        such_as = f" such as {example}" if example else ""
                        raise ConfigError(
                            f"{field_label(key)} must be a number{such_as}, not '{w.text()}'."
                        )
                    value = getattr(getattr(RunConfig(), section), name)
            elif isinstance(w, QCheckBox):
                value = w.isChecked()
            elif isinstance(w, QComboBox):
                value = w.currentText()
            else:
                value = w.text()
            setattr(getattr(cfg, section), name, value)
        if validate:
            cfg.validate()
        return cfg

    def show_automatic(self, changes: dict) -> None:
        """Mark the boxes a run will turn on by itself (the fit estimate's `automatic` changes).

        The box stays unticked, since the user's setting has not changed, but says beside it that
        it will be on for this run; the note goes when the estimate no longer needs it.
        """
        for key, w in self.fields.items():
            if isinstance(w, QCheckBox):
                auto = bool(changes.get(key)) and not w.isChecked()
                w.setText("On (auto)" if auto else "")
                note = (
                    "\n\nThe memory estimate says this run would be tight without it, so the run "
                    f'turns it on by itself (see "{field_label("training.auto_grad_checkpoint")}").'
                )
                w.setToolTip(field_metadata(key)["help"] + (note if auto else ""))
                if w in self.labels:
                    self.labels[w].setToolTip(w.toolTip())

    def show_batch_note(self, text: str) -> None:
        """Say under the batch size what it means in this run (from the `started` event)."""
        self.batch_note.setText(f"This run: {text}" if text else "")
        self.batch_note.setVisible(bool(text))

    def _on_field_changed(self, *_args) -> None:
        if self._filling:
            return
        # A hand-edited value that differs from the preset makes the preset "Custom".
        idx = self.preset.currentIndex()
        if 0 <= idx < len(self.presets) and not self._matches(self.presets[idx]):
            self.preset.blockSignals(True)
            self.preset.setCurrentIndex(len(self.presets))
            self.preset.blockSignals(False)
            self.preset_note.setText("Custom settings.")
        self.sig_changed.emit()

    def _matches(self, preset: Preset) -> bool:
        cfg = self.config()
        want = apply_values(cfg, preset.values)
        return want.to_dict() == cfg.to_dict()

    def _on_preset_changed(self, index: int) -> None:
        if 0 <= index < len(self.presets):
            preset = self.presets[index]
            self.preset_note.setText(preset.description)
            self.set_values(preset.values)
        else:
            self.preset_note.setText("Custom settings.")

    def set_choices(self, models: list[tuple[str, str]], datasets: list[tuple[str, str]]) -> None:
        """Fill the model and dataset drop-downs with (label, value) pairs, keeping the text."""
        for combo, items in ((self.model, models), (self.data, datasets)):
            text = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            for label, value in items:
                combo.addItem(label, value)
                combo.setItemData(combo.count() - 1, value, Qt.ItemDataRole.ToolTipRole)
            combo.setEditText(text)
            combo.blockSignals(False)
            fit_popup(combo)
        # Choosing an item puts its value (a path) in the field, not its label.
        if not getattr(self, "_choices_wired", False):
            self._choices_wired = True
            for combo in (self.model, self.data):
                combo.activated.connect(
                    lambda i, c=combo: c.setEditText(str(c.itemData(i) or c.itemText(i)))
                )


def parse_hosts(text: str) -> list:
    """The host list editor's text as engine.training.distributed.Host entries.

    One Mac per line: what `ssh` connects to, then optionally the addresses the ring backend uses
    between the Macs (spaces or commas between them). Blank lines and `# comments` are skipped.
    """
    from engine.training.distributed import Host

    hosts = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if line:
            name, *ips = line.split()
            hosts.append(Host(name, ips))
    return hosts


def check_hosts(hosts: list) -> list[tuple[str, bool, str]]:
    """engine.training.distributed.check_hosts, looked up when called (worker thread)."""
    from engine.training import distributed

    return distributed.check_hosts(hosts)


class HostsWidget(QWidget):
    """ "Train on several Macs": collapsed by default; a host list, a connectivity check, ✓/✗ per host."""

    sig_changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._task = None
        self.results: list[tuple[str, bool, str]] = []
        self.toggle = QToolButton()
        self.toggle.setText("Train on several Macs")
        self.toggle.setCheckable(True)
        self.toggle.setAutoRaise(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.toggled.connect(self._on_toggle_toggled)
        self.body = QWidget()
        self.enabled_box = QCheckBox("Train across these Macs")
        self.enabled_box.setToolTip(
            "Data-parallel training with mlx.launch: every Mac takes its share of "
            "each batch; this Mac shows the progress and keeps the run folder."
        )
        self.editor = QPlainTextEdit()
        self.editor.setPlaceholderText(
            "one Mac per line, this one included:\n"
            "mac-studio.local 192.168.1.20\nmacbook.local 192.168.1.21"
        )
        self.editor.setToolTip(
            "What ssh connects to (host, user@host or an ~/.ssh/config alias), "
            "optionally followed by the address the Macs use between them "
            "(Ethernet or Thunderbolt bridge). Each Mac needs password-less ssh and "
            "Lathe's Python at the same path."
        )
        self.editor.setTabChangesFocus(True)
        self.editor.setFixedHeight(80)
        self.check_button = QPushButton("Check connection")
        self.check_button.clicked.connect(self.check)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setObjectName("muted")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout()
        row.addWidget(self.check_button)
        row.addStretch(1)
        bl = QVBoxLayout(self.body)
        bl.setContentsMargins(16, 0, 0, 0)
        bl.addWidget(self.enabled_box)
        bl.addWidget(self.editor)
        bl.addLayout(row)
        bl.addWidget(self.status)
        self.body.setVisible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.addWidget(self.toggle)
        layout.addWidget(self.body)
        self.enabled_box.toggled.connect(self._on_field_changed)
        self.editor.textChanged.connect(self._on_field_changed)
        self._update_buttons()

    def hosts(self) -> list:
        return parse_hosts(self.editor.toPlainText())

    def set_hosts(self, text: str, enabled: bool = True) -> None:
        self.editor.setPlainText(text)
        self.enabled_box.setChecked(enabled)
        if enabled:
            self.toggle.setChecked(True)

    def distributed_hosts(self) -> list | None:
        """The hosts to train across, or None for a run on this Mac alone."""
        return self.hosts() if self.enabled_box.isChecked() else None

    def check(self) -> None:
        """Run engine.training.distributed.check_hosts on a worker thread; ✓/✗ per host when it returns."""
        from app.tasks import Task

        hosts = self.hosts()
        if not hosts:
            self.status.setText("List at least one Mac to check.")
            return
        if self._task is not None and self._task.running:
            return
        self.check_button.setEnabled(False)
        self.status.setText(f"Checking {len(hosts)} Mac{'s' if len(hosts) != 1 else ''}…")
        self._task = Task(check_hosts, hosts)
        self._task.sig_done.connect(self._on_check_done)
        self._task.sig_failed.connect(self._on_check_failed)
        self._task.start(self)

    def _on_check_done(self, results) -> None:
        self.results = [(str(h), bool(ok), str(detail)) for h, ok, detail in results]
        lines = [
            f"<span style='color:{'#1a7f37' if ok else '#cf222e'}'>{'✓' if ok else '✗'}</span> "
            f"{_esc(h)}: {_esc(detail)}"
            for h, ok, detail in self.results
        ]
        self.status.setText("<br>".join(lines))
        self._update_buttons()

    def _on_check_failed(self, message: str, hint: str) -> None:
        self.results = []
        self.status.setText(_esc(f"The check could not run: {message} {hint}".strip()))
        self._update_buttons()

    def _on_field_changed(self, *_args) -> None:
        if self.results:
            self.results = []
            self.status.setText("")
        self._update_buttons()
        self.sig_changed.emit()

    def _update_buttons(self) -> None:
        self.check_button.setEnabled(
            bool(self.editor.toPlainText().strip())
            and not (self._task is not None and self._task.running)
        )

    def _on_toggle_toggled(self, on: bool) -> None:
        self.body.setVisible(on)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)


class FitBannerWidget(QFrame):
    """fits / tight / will not fit, with the suggested fix as a button."""

    sig_apply = Signal(dict)
    sig_focus = Signal(str)  # a field to choose ("model")

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("fitBanner")
        self.verdict = ""
        self.suggestion: dict | None = None
        self.note_fix = None  # app.wording.Fix of a note ("Use 512 tokens")
        self.label = QLabel("Choose a model to see whether training fits in memory.")
        self.label.setWordWrap(True)
        self.fix = QPushButton()
        self.fix.setVisible(False)
        self.fix.clicked.connect(self._on_fix_clicked)
        self.note_button = QPushButton()
        self.note_button.setVisible(False)
        self.note_button.clicked.connect(self._on_note_button_clicked)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.addWidget(self.label)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.note_button)
        row.addWidget(self.fix)
        layout.addLayout(row)

    def show_pending(self) -> None:
        self.label.setText(self.label.text() if self.verdict else "Estimating memory…")

    def show_report(self, report) -> None:
        gb = 1024**3
        self.verdict = report.verdict
        icon = {"fits": "✓", "tight": "⚠", "will not fit": "✕"}.get(report.verdict, "")
        text = (
            f"{icon} {report.verdict.capitalize()}: training needs about "
            f"{report.training_peak_bytes / gb:.1f} GB of {report.budget_bytes / gb:.1f} GB"
        )
        from app.wording import window_words

        batch = report.batch_text() if hasattr(report, "batch_text") else ""
        if batch:
            text += f" ({window_words(batch).text})"
        notes = [window_words(n) for n in report.notes]
        if notes:
            text += "\n" + " ".join(n.text for n in notes)
        self.note_fix = next((n.fix for n in notes if n.fix is not None), None)
        self.note_button.setText(self.note_fix.label if self.note_fix else "")
        self.note_button.setVisible(self.note_fix is not None)
        self.label.setText(text)
        self.setProperty("verdict", {"fits": "fits", "tight": "tight"}.get(report.verdict, "nofit"))
        sug = report.suggestion
        self.suggestion = dict(sug.changes) if sug else None
        if sug:
            self.fix.setText(_short_fix(sug.description))
            self.fix.setToolTip(
                f"Suggested fix: {sug.description} (about {sug.training_peak_bytes / gb:.1f} GB)"
            )
        self.fix.setVisible(bool(sug))
        self._restyle()

    def show_problem(self, message: str) -> None:
        from app.wording import window_words

        self.verdict = "unknown"
        self.suggestion = None
        self.fix.setVisible(False)
        words = window_words(message)
        # "Choose a model" has its link under Start training; one way out is enough.
        self.note_fix = words.fix if words.fix is not None and not words.fix.focus else None
        self.note_button.setText(self.note_fix.label if self.note_fix else "")
        self.note_button.setVisible(self.note_fix is not None)
        # "Choose a model…" says it all; other problems say the estimate is missing.
        prefix = "" if words.fix and words.fix.focus else "Memory estimate unavailable: "
        self.label.setText(prefix + words.text)
        self.setProperty("verdict", "unknown")
        self._restyle()

    def _restyle(self) -> None:
        self.style().unpolish(self)
        self.style().polish(self)

    def _on_fix_clicked(self) -> None:
        if self.suggestion:
            self.sig_apply.emit(dict(self.suggestion))

    def _on_note_button_clicked(self) -> None:
        fix = self.note_fix
        if fix is None:
            return
        if fix.values:
            self.sig_apply.emit(dict(fix.values))
        if fix.focus:
            self.sig_focus.emit(fix.focus)


def _short_fix(description: str) -> str:
    text = description[0].upper() + description[1:]
    return text if len(text) <= 48 else text[:45] + "…"
