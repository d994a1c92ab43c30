"""The import report: what was found, what is wrong, and (with a model) what training will see."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from engine.data.formats import FORMATS
from engine.data.sources import SPLITS

HISTOGRAM_BINS = 20


@dataclass
class TokenStats:
    """Token lengths and trained tokens for the examples of one split."""

    examples: int
    min: int
    median: int  # token counts are whole: the length of a real example (nearest rank, rounding up)
    p95: int
    max: int
    mean: float
    total_tokens: int  # after truncation to max_seq_length
    trained_tokens: int  # after masking and truncation
    over_max: int  # examples longer than max_seq_length (they are truncated)

    @classmethod
    def of(cls, lengths: np.ndarray, trained: np.ndarray, limit: int) -> TokenStats | None:
        if len(lengths) == 0:
            return None
        return cls(
            examples=int(len(lengths)),
            min=int(lengths.min()),
            median=int(np.percentile(lengths, 50, method="higher")),
            p95=int(np.percentile(lengths, 95, method="higher")),
            max=int(lengths.max()),
            mean=round(float(lengths.mean()), 1),
            total_tokens=int(np.minimum(lengths, limit).sum()),
            trained_tokens=int(trained.sum()),
            over_max=int((lengths > limit).sum()),
        )


@dataclass
class TokenReport:
    model: str
    template_source: str  # "model", "default" (Lathe's, for base models) or "config"
    max_seq_length: int
    batch_size: int
    splits: dict[str, TokenStats]
    histogram: dict  # {"edges": [...], "counts": [...]} of train example lengths
    steps_per_epoch: int  # estimate: train examples / batch size, rounded up
    zero_trained: int  # examples left out because they train no token
    # Parts the chat template does not render (tool calls, tool definitions, ...) -> examples.
    template_drops: dict[str, int] = field(default_factory=dict)
    hollow: int = 0  # examples whose every trained turn the template drops


@dataclass
class Report:
    """Everything `inspect` and `import` found. `to_dict()` is what `--json` prints."""

    source: str
    name: str
    size_bytes: int
    sha256: str
    container: str  # file, folder or zip
    format: str  # chat, completion, alpaca, sharegpt, text, or "mixed"
    format_label: str
    format_reason: str
    mapping: dict[str, str]
    files: list[dict]
    splits: dict[str, int]  # examples per split after skipping and splitting
    split_notes: list[str]
    kinds: dict[str, int]  # normalised shapes: chat / completion / text
    rows: int  # records read
    kept: int
    skipped: int
    problem_counts: dict[str, int]
    warning_counts: dict[str, int]
    problems: list[dict]  # the first few of each kind, each with file/line/field/message/hint
    notes: list[str]
    summary: str
    options: dict = field(default_factory=dict)
    placeholders: dict[str, int] = field(default_factory=dict)  # `{{word}}` -> records with it
    unknown_keys: dict[str, int] = field(default_factory=dict)  # ignored key -> records with it
    tokens: TokenReport | None = None
    dataset_id: str | None = None
    dataset_path: str | None = None
    reused: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        d = dict(d)
        tok = d.get("tokens")
        if tok:
            tok = dict(tok)
            tok["splits"] = {k: TokenStats(**v) for k, v in tok["splits"].items()}
            d["tokens"] = TokenReport(**tok)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_text(self, max_problems: int = 10) -> str:
        """The report as a person reads it in a terminal."""
        out = [f"{self.name}  ({_size(self.size_bytes)}, {self.container})"]
        out.append(f"Format: {self.format_label}")
        for f in self.files:
            prefix = f"  {f['name']} [{f['split']}]: " if len(self.files) > 1 else "  because "
            out.append(f"{prefix}{f['format_reason']}")
        if self.mapping:
            out.append("Mapping: " + ", ".join(f"{t} <- {c}" for t, c in self.mapping.items()))
        counts = ", ".join(f"{s} {self.splits.get(s, 0)}" for s in SPLITS)
        out.append(f"Examples: {self.kept} of {self.rows} records kept ({counts})")
        out += [f"  {n}" for n in self.split_notes]
        if self.summary:
            out.append(self.summary)
        for p in self.problems[:max_problems]:
            out.append(f"  - {p['text']}")
        total = self.skipped + sum(self.warning_counts.values())
        shown = min(len(self.problems), max_problems)
        if total > shown:
            out.append(f"  ... and {total - shown} more (--json lists up to 20 of each kind)")
        out += [f"Note: {n}" for n in self.notes]
        t = self.tokens
        if t:
            src = {
                "model": "the model's own",
                "default": "Lathe's default (the model has none)",
                "config": "the one given",
            }.get(t.template_source, t.template_source)
            out.append(
                f"Tokens ({t.model}, chat template: {src}, max_seq_length {t.max_seq_length}):"
            )
            for split, s in t.splits.items():
                out.append(
                    f"  {split:<5} {s.examples} examples, length min {s.min} / median "
                    f"{s.median:.0f} / p95 {s.p95:.0f} / max {s.max}, trained tokens "
                    f"{s.trained_tokens:,}, over max {s.over_max}"
                )
            if t.histogram.get("counts"):
                out.append("  length histogram (train):")
                out += ["    " + line for line in _bars(t.histogram)]
            over = sum(s.over_max for s in t.splits.values())
            if over:
                out.append(
                    f"  {over} example(s) are longer than {t.max_seq_length} tokens and will be "
                    "truncated."
                )
            out.append(f"  About {t.steps_per_epoch} steps per epoch at batch size {t.batch_size}.")
        if self.dataset_id:
            verb = "Already imported as" if self.reused else "Imported as"
            out.append(f"{verb} {self.dataset_id} ({self.dataset_path})")
        return "\n".join(out)


def histogram(lengths: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict:
    """Equal-width integer bins from the shortest to the longest example."""
    if len(lengths) == 0:
        return {"edges": [], "counts": []}
    lo, hi = int(lengths.min()), int(lengths.max())
    width = max(1, math.ceil((hi - lo + 1) / bins))
    edges = list(range(lo, hi + width + 1, width))
    counts, _ = np.histogram(lengths, bins=edges)
    return {"edges": edges, "counts": [int(c) for c in counts]}


def _bars(hist: dict, width: int = 40) -> list[str]:
    counts, edges = hist["counts"], hist["edges"]
    top = max(counts) or 1
    return [
        f"{edges[i]:>7}-{edges[i + 1] - 1:<7} {'#' * max(1 if c else 0, round(c / top * width)):<{width}} {c}"
        for i, c in enumerate(counts)
    ]


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_label(fmt: str) -> str:
    return FORMATS.get(fmt, fmt)
