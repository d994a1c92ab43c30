"""Task metrics: how well one answer does against its reference, and the mean over a set.

A metric is named by a spec string, the same in config (`data.eval_metrics`), on the command line
(`--metric`) and in results.json:

    exact         the answer equals the reference (surrounding whitespace and runs of spaces ignored)
    contains      the reference appears in the answer (case-insensitive)
    regex:PAT     the answer matches the regular expression PAT (re.search)
    json          the answer is valid JSON (a ```json fenced block counts)
    schema:FILE   the answer is JSON that matches the JSON Schema in FILE (see schema.py)
    length        the answer's length in characters (a mean, not a rate)

Rates are reported from 0 to 1; `length` as a mean.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import Cancelled as _Cancelled
from engine.errors import LatheError
from engine.evaluate import schema as jsonschema

NAMES = ("exact", "contains", "regex", "json", "schema", "length")
DEFAULT_METRICS = ("exact", "contains", "length")


class EvalError(LatheError):
    kind = "eval"


class Cancelled(_Cancelled, EvalError):
    """The evaluation was cancelled by its caller."""


@dataclass
class Score:
    value: float  # 1.0 / 0.0 for pass/fail metrics, the measure itself for `length`
    detail: str = ""  # why it failed (e.g. the first schema error), for the per-example view

    def to_dict(self) -> dict:
        out = {"value": self.value}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass
class Metric:
    spec: str  # as the user wrote it: "regex:^\\d+$"
    name: str  # exact | contains | regex | json | schema | length
    label: str  # for tables: "Exact match"
    rate: bool = True  # a pass rate (higher is better) rather than a mean measure
    needs_reference: bool = False
    argument: str = ""
    _pattern: re.Pattern | None = field(default=None, repr=False)
    _schema: dict | bool | None = field(default=None, repr=False)

    def score(self, answer: str, reference: str | None) -> Score | None:
        """The score of one answer; None when the metric cannot judge it (no reference)."""
        if self.needs_reference and reference is None:
            return None
        if self.name == "exact":
            return Score(float(_norm(answer) == _norm(reference)))
        if self.name == "contains":
            return Score(float(_norm(reference).lower() in _norm(answer).lower()))
        if self.name == "regex":
            return Score(float(self._pattern.search(answer) is not None))
        if self.name == "length":
            return Score(float(len(answer.strip())))
        value, error = parse_json_answer(answer)
        if error:
            return Score(0.0, error)
        if self.name == "json":
            return Score(1.0)
        problems = jsonschema.validate(value, self._schema)
        return Score(0.0 if problems else 1.0, "; ".join(problems[:3]))

    def to_dict(self) -> dict:
        return {"spec": self.spec, "name": self.name, "label": self.label, "rate": self.rate}


def parse_metric(spec: str, base_dir: Path | None = None) -> Metric:
    """A Metric from its spec; a one-sentence EvalError for a spec that cannot work."""
    # Only the name is trimmed: a pattern's spaces are part of the pattern.
    text = str(spec).lstrip()
    name, sep, arg = text.partition(":")
    if not sep:
        text = text.rstrip()
    name = name.strip().lower()
    if name in ("exact", "exact_match", "em"):
        return Metric(text, "exact", "Exact match", needs_reference=True)
    if name == "contains":
        return Metric(text, "contains", "Contains the reference", needs_reference=True)
    if name == "length":
        return Metric(text, "length", "Mean length (characters)", rate=False)
    if name == "json":
        return Metric(text, "json", "Valid JSON")
    if name == "regex":
        if not sep or not arg:
            raise EvalError(
                "The regex metric needs a pattern, as in regex:^[A-Z].", "Write regex:PATTERN."
            )
        try:
            pattern = re.compile(arg)
        except re.error as exc:
            raise EvalError(
                f"The pattern in {text} is not a valid regular expression: {exc}."
            ) from None
        return Metric(text, "regex", f"Matches /{arg}/", argument=arg, _pattern=pattern)
    if name == "schema":
        if not sep or not arg:
            raise EvalError(
                "The schema metric needs a JSON Schema file, as in schema:answer.schema.json.",
                "Write schema:FILE.",
            )
        path = Path(arg).expanduser()
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        loaded = jsonschema.load_schema(path)
        return Metric(text, "schema", f"Matches {path.name}", argument=str(path), _schema=loaded)
    raise EvalError(
        f"Unknown metric '{text}'.",
        "Use exact, contains, regex:PATTERN, json, schema:FILE or length.",
    )


def parse_metrics(specs, base_dir: Path | None = None) -> list[Metric]:
    metrics, seen = [], set()
    for spec in specs:
        metric = parse_metric(spec, base_dir)
        if metric.spec not in seen:
            seen.add(metric.spec)
            metrics.append(metric)
    return metrics


def default_metrics(references: list[str | None]) -> list[str]:
    """Metrics for a dataset whose config names none: exact, contains, length, and json when the
    references are JSON (the "answer in this JSON format" use case)."""
    specs = list(DEFAULT_METRICS)
    refs = [r for r in references if r is not None and r.strip()]
    if refs and all(parse_json_answer(r)[1] == "" and r.strip()[:1] in "{[" for r in refs):
        specs.insert(2, "json")
    return specs


def aggregate(metric: Metric, scores: list[Score | None]) -> float | None:
    """Mean over the examples the metric could judge (None when it judged none)."""
    values = [s.value for s in scores if s is not None]
    return sum(values) / len(values) if values else None


_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.S)


def parse_json_answer(answer: str) -> tuple[object, str]:
    """(value, "") for an answer that is JSON (optionally in one ``` fence), else (None, why not)."""
    text = answer.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if not text:
        return None, "empty answer"
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at character {exc.pos})"


def _norm(text: str | None) -> str:
    return " ".join((text or "").split())
