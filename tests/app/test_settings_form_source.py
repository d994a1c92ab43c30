"""Issue 19, "one source of truth for each setting ... that drives validation, the CLI flags and the
form's widgets": the Train page's settings form builds every widget from its config field's
metadata (engine.config), and app/ types no range, step, choice list or help text of its own."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox

from app.settings_form import ADVANCED_FIELDS, MAIN_FIELDS, TrainSettingsWidget
from engine.config import (
    SECTIONS,
    ConfigError,
    RunConfig,
    bounds,
    check_value,
    field_metadata,
    field_optional,
)

APP = Path(__file__).resolve().parents[2] / "app"
SPIN_HOLDS = 2**31 - 1  # a QSpinBox holds a C int


@pytest.fixture
def form(qtbot):
    w = TrainSettingsWidget()
    qtbot.addWidget(w)
    return w


def _accepts(key: str, value) -> bool:
    try:
        check_value(key, value, **bounds(field_metadata(key)))
    except ConfigError:
        return False
    return True


def test_every_widget_of_the_form_agrees_with_its_fields_metadata(form):
    """The form typed its own ranges beside the metadata (Epochs 0.1 to 1,000 where the config
    takes up to 100,000, LoRA rank up to 512 where it takes 1,048,576), its choice lists and labels.
    Each widget's kind, range, special text, choices, label and tooltips must be the metadata's."""
    assert form.fields
    for key, w in form.fields.items():
        meta = field_metadata(key)
        section, name = key.split(".")
        default = getattr(getattr(RunConfig(), section), name)
        label = form.labels[w]
        assert label.text() == meta["label"], key
        assert w.toolTip() == meta["help"] and label.toolTip() == meta["help"], key
        if "choices" in meta:
            assert isinstance(w, QComboBox), key
            assert [w.itemText(i) for i in range(w.count())] == list(meta["choices"]), key
        elif isinstance(default, bool):
            assert isinstance(w, QCheckBox), key
        elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
            _check_spin(key, w, meta)
        else:
            # A float without a step is a text field that takes 1e-4 (validated at Start).
            assert type(default) is float and "step" not in meta and isinstance(w, QLineEdit), key


def _check_spin(key: str, w, meta) -> None:
    whole = isinstance(w, QSpinBox)
    unit = 1 if whole else 10 ** -w.decimals()
    if not whole:
        assert w.singleStep() == meta["step"], key
        assert len(f"{meta['step']:g}".partition(".")[2]) == w.decimals(), key
    shown = dict(meta.get("shown_as") or {})
    low, high = w.minimum(), w.maximum()
    # The top of the spin box is the top of the field's range (or all a QSpinBox holds).
    assert _accepts(key, high), key
    if high < SPIN_HOLDS:
        assert not _accepts(key, high + unit), f"{key}: the field takes more than {high}"
    else:
        assert meta.get("at_most", meta.get("below", SPIN_HOLDS + 1)) > SPIN_HOLDS
    if field_optional(key):
        # One step below the range means empty (None) and shows the metadata's text for None.
        assert w.specialValueText() == shown[None], key
        assert not _accepts(key, low) and _accepts(key, low + unit), key
    else:
        assert w.specialValueText() == shown.get(low, ""), key
        assert set(shown) <= {low}, key
        assert _accepts(key, low), key
        if "at_least" in meta or "above" in meta:
            assert not _accepts(key, low - unit), f"{key}: the field takes less than {low}"
    if not whole and "above" in meta:
        assert low == pytest.approx(meta["above"] + unit), key


def test_every_row_of_the_form_is_a_config_field_labelled_by_its_metadata(form):
    """The labels were a table in app/settings_form.py; the model, dataset and run name rows had
    their own words. Each row but the preset is now a config field with its metadata's label and
    help, and a config's values go into the form and come back unchanged."""
    assert list(form.fields) == MAIN_FIELDS + ADVANCED_FIELDS
    pickers = {form.model: "model.path", form.data: "data.path", form.name: "name"}
    keys = {w: key for key, w in form.fields.items()} | pickers
    for widget, label in form.labels.items():
        if widget is form.preset:
            continue
        meta = field_metadata(keys[widget])
        assert label.text() == meta["label"] and widget.toolTip() == meta["help"]
        assert label.toolTip() == meta["help"]
    cfg = RunConfig()
    cfg.model.path, cfg.data.path, cfg.name = "m", "d.jsonl", "run"
    cfg.training.iters, cfg.lora.num_layers, cfg.training.epochs = 300, -1, 3000.0
    cfg.training.batch_size = 2048  # the form's own ranges cut these to 1,024 and 1,000 epochs
    form.set_config(cfg)
    assert form.config().to_dict() == cfg.to_dict()
    assert form.fields["training.iters"].text() == "300"
    assert form.fields["lora.num_layers"].text() == "All"
    cfg.training.iters = None
    form.set_config(cfg)
    assert form.fields["training.iters"].text() == "from epochs"
    assert form.config().training.iters is None


def test_app_types_no_range_step_choice_list_or_help_of_a_setting():
    """The ranges, steps, choices and help of the settings are typed only in engine.config."""
    helps = {
        f.metadata["help"]
        for cls in [*SECTIONS.values(), RunConfig]
        for f in dataclasses.fields(cls)
        if len(f.metadata.get("help", "")) >= 20
    }
    choices = [
        set(f.metadata["choices"])
        for cls in SECTIONS.values()
        for f in dataclasses.fields(cls)
        if f.metadata.get("choices")
    ]
    found = []
    for path in sorted(APP.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        texts = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append(node.value)
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                words = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if any(len(words & c) >= 2 for c in choices):
                    found.append(f"{path.name}:{node.lineno}: choice list {sorted(words)}")
            if (
                path.name == "settings_form.py"
                and isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr
                in ("setRange", "setMinimum", "setMaximum", "setSingleStep", "setDecimals")
                and any(isinstance(a, ast.Constant) for a in node.args)
            ):
                found.append(f"{path.name}:{node.lineno}: {node.func.attr} with a number")
        text = "\n".join(texts)
        found += [f"{path.name}: help text {h[:40]!r}" for h in helps if h[:40] in text]
    assert not found, "\n".join(found)
