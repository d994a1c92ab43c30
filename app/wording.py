"""Engine messages in the window's words, with the one-click fix where one exists.

The engine speaks to a command line ("set model.path (or pass --model)", "max_seq_length 2048 is
longer than the model's context (512)"). The window names its own fields instead and offers the
fix as a button. This is the one place where that translation lives: `describe_error` (every
failed task) and the Train page (start problems, memory-estimate notes) go through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Fix:
    """A one-click fix: `focus` a field ("model", "data"), or `set` form values."""

    label: str
    focus: str = ""
    values: dict = field(default_factory=dict)


@dataclass
class Wording:
    text: str
    fix: Fix | None = None


# Config keys as the Train page labels them (each field's metadata `label` in engine.config).
def field_labels() -> dict[str, str]:
    import dataclasses

    from engine.config import SECTIONS

    labels = {
        f"{section}.{f.name}": f.metadata["label"]
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if f.metadata.get("label")
    }
    labels["training.iters"] = "Steps"  # in a sentence, without the form's "(0: from epochs)"
    return labels


_RULES: list[tuple[re.Pattern, callable]] = [
    (
        re.compile(r"^(?:No model given\b.*|Choose a model to train\.)$", re.S),
        lambda m: Wording("Choose a model to train.", Fix("Choose a model", focus="model")),
    ),
    (
        re.compile(r"^(?:no model chosen yet|Choose a model to see whether)", re.I),
        lambda m: Wording(
            "Choose a model to see whether training fits in memory.",
            Fix("Choose a model", focus="model"),
        ),
    ),
    (
        re.compile(r"^(?:No dataset given\b.*|Choose a dataset to train on\.)$", re.S),
        lambda m: Wording("Choose a dataset to train on.", Fix("Choose a dataset", focus="data")),
    ),
    (
        re.compile(
            r"(?:max_seq_length|Max sequence length) (\d+) is longer than (?:the|this) model's "
            r"context \((\d+)(?: tokens)?\)(?:; estimated at \d+)?\.?"
        ),
        lambda m: Wording(
            f"Max sequence length {m.group(1)} is longer than this model's context "
            f"({m.group(2)} tokens).",
            Fix(f"Use {m.group(2)} tokens", values={"data.max_seq_length": int(m.group(2))}),
        ),
    ),
]
# "(or pass --model)", "or pass --evaluate": command-line advice the window has no use for.
_CLI = re.compile(r"\s*\((?:or )?pass --[\w-]+[^)]*\)|,? or pass --[\w-]+")
_KEY = re.compile(r"\b(model|data|lora|training)\.([a-z_]+)\b")


def window_words(message: str) -> Wording:
    """`message` rewritten for the window, with its fix when there is one. Idempotent: a message
    already in the window's words keeps its words and its fix."""
    text = (message or "").strip()
    for pattern, make in _RULES:
        m = pattern.search(text)
        if m:
            return make(m)
    text = _CLI.sub("", text)
    labels = field_labels()
    text = _KEY.sub(lambda m: labels.get(m.group(0), m.group(0)), text)
    return Wording(text[:1].upper() + text[1:] if text else text)


def in_window_words(message: str, hint: str = "") -> tuple[str, str]:
    """(message, hint) of an engine error as the window says them (no fix)."""
    words = window_words(message)
    hint = _CLI.sub("", hint or "").strip()
    if hint.lower().startswith("pass --"):
        hint = ""
    return words.text, hint
