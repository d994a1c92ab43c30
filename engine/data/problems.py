"""Problems found in a dataset: where, which field, what is wrong, and how to fix it.

Bad records are skipped and counted by default; strict mode turns the first one into a `DataError`.
Only a bounded number of examples per kind of problem is kept, so a file with a million bad lines
reports the count, not a million messages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from engine.errors import LatheError


class DataError(LatheError):
    """A dataset problem; the message names the file, line and field, and what to do."""

    kind = "data"


class RecordProblem(Exception):
    """Raised by a normaliser or validator for one record; the caller adds the location."""

    def __init__(self, code: str, message: str, hint: str = "", field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.field = field


# Short labels for the summary line ("Skipped 12 examples: 8 invalid JSON, 4 no assistant turn").
LABELS = {
    "invalid_json": "invalid JSON",
    "not_object": "not a JSON object",
    "missing_field": "missing field",
    "empty_field": "empty field",
    "not_text": "not text",
    "bad_value": "unexpected value",
    "bad_role": "unknown role",
    "role_order": "roles out of order",
    "no_assistant": "no assistant turn",
    "nothing_trained": "nothing to train",
    "zero_trained": "zero trained tokens",
    "template_error": "rejected by the chat template",
    "template_drops": "partly left out by the chat template",
    "bad_row": "malformed row",
    "duplicate": "duplicate",
    "overlap": "also in train",
    "encoding": "not UTF-8",
    "bad_text": "not Unicode text",
    "unsupported": "unsupported content",
}


@dataclass
class Problem:
    code: str
    where: str  # "data.jsonl, line 7"
    message: str  # what is wrong, in plain words
    hint: str = ""  # what the user can do
    field: str | None = None
    severity: str = "error"  # "error": the record is skipped; "warning": it is kept

    def __str__(self) -> str:
        field = f", field '{self.field}'" if self.field else ""
        text = f"{self.where}{field}: {self.message}"
        if not text.endswith("."):
            text += "."
        return f"{text} {self.hint}".strip()

    def to_dict(self) -> dict:
        return asdict(self) | {"text": str(self)}


class ProblemLog:
    """Collects problems: every one is counted, the first few of each kind are kept."""

    def __init__(self, strict: bool = False, keep_per_code: int = 20, keep_total: int = 200):
        self.strict = strict
        self.keep_per_code = keep_per_code
        self.keep_total = keep_total
        self.counts: dict[str, int] = {}
        self.warning_counts: dict[str, int] = {}
        self.examples: list[Problem] = []
        self.notes: list[str] = []  # file-level remarks (encoding, ignored files, ...)

    def add(self, problem: Problem) -> None:
        counts = self.counts if problem.severity == "error" else self.warning_counts
        counts[problem.code] = counts.get(problem.code, 0) + 1
        if self.strict and problem.severity == "error":
            raise DataError(
                str(problem),
                "Strict mode stops at the first problem; "
                "without --strict bad examples are skipped and listed.",
            )
        kept_of_code = sum(1 for p in self.examples if p.code == problem.code)
        if kept_of_code < self.keep_per_code and len(self.examples) < self.keep_total:
            self.examples.append(problem)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line such as "Skipped 12 examples: 8 invalid JSON, 4 no assistant turn."."""
        out = []
        if self.counts:
            noun = "example" if self.skipped == 1 else "examples"
            out.append(f"Skipped {self.skipped} {noun}: {_parts(self.counts)}.")
        if self.warning_counts:
            n = sum(self.warning_counts.values())
            out.append(
                f"Kept {n} {'example' if n == 1 else 'examples'} with a warning: "
                f"{_parts(self.warning_counts)}."
            )
        return " ".join(out)


def _parts(counts: dict[str, int]) -> str:
    return ", ".join(
        f"{n} {LABELS.get(code, code)}" for code, n in sorted(counts.items(), key=lambda kv: -kv[1])
    )
