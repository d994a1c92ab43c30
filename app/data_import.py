"""Dataset import for the Data page, on a worker thread: progress, cancel, the record of a problem.

Builds on engine.data (import_dataset, token_view). Progress and cancellation come from wrapping
the engine's token counter: every example passes through it, so the wrapper can count examples
and stop the pass (TaskCancelled) without any change to the engine's streaming code.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.tasks import TaskCancelled

TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".md")


@dataclass
class ImportProgress:
    examples: int
    estimate: int  # estimated records (lines), 0 when unknown
    stage: str

    @property
    def fraction(self) -> float | None:
        if not self.estimate:
            return None
        return min(0.99, self.examples / self.estimate)


def estimate_records(path: Path, cancel: threading.Event | None = None) -> int:
    """Newlines in the dataset's text files: about one record per line for JSONL/CSV."""
    files = (
        [path]
        if path.is_file()
        else [p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES]
    )
    total = 0
    for f in files:
        if f.suffix.lower() not in TEXT_SUFFIXES:
            continue
        try:
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    total += chunk.count(b"\n")
                    if cancel is not None and cancel.is_set():
                        raise TaskCancelled()
        except OSError:
            continue
    return total


class WatchedCounter:
    """A TokenCounter stand-in that reports each example read and stops when cancelled."""

    def __init__(self, inner, on_example, cancel: threading.Event):
        self.inner = inner
        self.on_example = on_example
        self.cancel = cancel

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def measure(self, examples, log, *args, **kwargs):
        return self.inner.measure(self._watch(examples), log, *args, **kwargs)

    def _watch(self, examples):
        last = 0.0
        for n, ex in enumerate(examples, 1):
            if self.cancel.is_set():
                raise TaskCancelled()
            now = time.monotonic()
            if now - last > 0.1:
                last = now
                self.on_example(n)
            yield ex


def reference_model(preferred: str | None) -> Path:
    """The model whose tokenizer measures token lengths: the Train page's model when it is a
    local folder, else the demo model (built on first use, as the engine's demo does)."""
    if preferred and Path(preferred).expanduser().is_dir():
        return Path(preferred).expanduser()
    if preferred:
        try:
            from engine.models import resolve

            return resolve(preferred)
        except Exception:  # noqa: BLE001 - not available offline: fall back to the demo model
            pass
    from app.services import demo_config, demo_model_path

    path = demo_model_path()
    if path is None:
        cfg, _ = demo_config()
        path = Path(cfg.model.path)
    return path


def run_import(
    path: str,
    fmt: str | None = None,
    mapping: dict | None = None,
    model: str | None = None,
    max_seq_length: int = 2048,
    batch_size: int = 4,
    mask_prompt: bool = True,
    progress=None,
    cancel: threading.Event | None = None,
    fill: dict | None = None,
):
    """Import `path` into the workspace with a token report; returns (Report, model path).
    `fill` gives values for `{{word}}` placeholders (as `data import --set word=value`)."""
    from engine.data import Options, TokenSettings, import_dataset
    from engine.data.pipeline import IMPORT_TEST_FRACTION, IMPORT_TEST_MIN_EXAMPLES
    from engine.data.tokens import TokenCounter

    cancel = cancel or threading.Event()
    source = Path(path).expanduser()
    emit = progress or (lambda _p: None)
    emit(ImportProgress(0, 0, "Counting records…"))
    estimate = estimate_records(source, cancel) if source.exists() else 0
    emit(ImportProgress(0, estimate, "Loading the tokenizer…"))
    model_dir = reference_model(model)
    if cancel.is_set():
        raise TaskCancelled()
    options = Options(
        format=fmt or None,
        mapping=mapping or {},
        fill=fill or {},
        test_fraction=IMPORT_TEST_FRACTION,  # held out, so evaluation scores unseen examples
        test_min_examples=IMPORT_TEST_MIN_EXAMPLES,
    )
    tokens = TokenSettings(
        str(model_dir),
        max_seq_length=max_seq_length,
        batch_size=batch_size,
        mask_prompt=mask_prompt,
    )
    counter = TokenCounter(str(model_dir), max_seq_length=max_seq_length, mask_prompt=mask_prompt)
    watched = WatchedCounter(
        counter, lambda n: emit(ImportProgress(n, estimate, "Reading examples…")), cancel
    )
    report = import_dataset(source, options, tokens=tokens, counter=watched)
    return report, model_dir


_WHERE = re.compile(r"^(?P<file>.+?), line (?P<line>\d+)")


def problem_record(report, problem: dict, max_chars: int = 20000) -> str:
    """The raw line a problem points at ("file, line N"), read from the original file."""
    where = str(problem.get("where", ""))
    m = _WHERE.match(where)
    if not m:
        return "(This problem is not about a single line.)"
    source = Path(report.source)
    name, line_no = m.group("file"), int(m.group("line"))
    if report.container == "zip":
        return "(The record is inside a zip file; open the zip to see it.)"
    if source.is_file():
        target = source
    else:
        rel = Path(name)
        parts = rel.parts[1:] if rel.parts and rel.parts[0] == source.name else rel.parts
        target = source.joinpath(*parts) if parts else source
    try:
        with open(target, encoding="utf-8", errors="replace") as fh:
            line = next(itertools.islice(fh, line_no - 1, None), None)
    except OSError as exc:
        return f"(The file cannot be read: {exc})"
    if line is None:
        return f"(Line {line_no} is past the end of {target.name}.)"
    text = line.rstrip("\n")
    return text if len(text) <= max_chars else text[:max_chars] + " …"


def csv_columns(path: str | Path) -> list[str]:
    """Header columns of a CSV/TSV file (empty when it is not one)."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() not in (".csv", ".tsv"):
        return []
    try:
        with open(p, encoding="utf-8-sig", errors="replace") as fh:
            head = fh.read(65536)
    except OSError:
        return []
    first = head.splitlines()[0] if head else ""
    delimiter = "\t" if p.suffix.lower() == ".tsv" or first.count("\t") > first.count(",") else ","
    try:
        return [
            c.strip()
            for c in next(csv.reader(io.StringIO(first), delimiter=delimiter))
            if c.strip()
        ]
    except StopIteration:
        return []


def token_view_of(
    dataset: str, model: str, index: int, max_seq_length: int = 2048, mask_prompt: bool = True
):
    from engine.data import token_view

    return token_view(dataset, model, index, max_seq_length=max_seq_length, mask_prompt=mask_prompt)
