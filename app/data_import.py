"""Dataset import for the Data page: the engine's command line, run in a worker process.

The import (`lathe-engine data import ... --json --progress`) and the token view (`data show ...
--json`) load the tokenizer (transformers, tokenizers, jinja2): native modules whose first import
holds Python's GIL for long stretches, so they run in a process of their own through
app.jobs.JobController, never in the window's process (issue 17: a 309 ms stall at the drop).
This module builds their command lines, turns their JSON back into the engine's objects, and reads
the record behind a problem (plain file reading, fast enough for the GUI thread).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from pathlib import Path
from types import SimpleNamespace


def import_args(
    path: str | Path,
    fmt: str | None = None,
    mapping: dict | None = None,
    model: str | None = None,
    max_seq_length: int = 2048,
    fill: dict | None = None,
) -> list[str]:
    """`data import` arguments for the Data page: the dataset, measured with `model` (the Train
    page's) or the demo model when that is not on this Mac, with progress lines on stdout."""
    args = ["data", "import", str(path), "--or-demo-model", "--progress"]
    args += ["--max-seq-length", str(int(max_seq_length))]
    if model:
        args += ["--model", str(model)]
    if fmt:
        args += ["--format", fmt]
    if mapping:
        # JSON, so that column names with commas or "=" survive (engine parse_mapping reads it).
        args += ["--map", json.dumps(mapping, ensure_ascii=False)]
    for word, value in (fill or {}).items():
        args += ["--set", f"{word}={value}"]
    return args


def report_from_json(data: dict):
    """The engine's Report from `data import --json` output."""
    from engine.data.report import Report

    return Report.from_dict(data)


def token_view_args(dataset: str | Path, model: str | Path, index: int, max_seq_length: int):
    """`data show` arguments: one example of an imported dataset, token by token."""
    return [
        "data",
        "show",
        str(dataset),
        "--model",
        str(model),
        "--index",
        str(int(index)),
        "--max-seq-length",
        str(int(max_seq_length)),
    ]


def token_view_from_json(data: dict):
    """`data show --json` output as an object with the TokenView's attributes (pieces too)."""
    view = SimpleNamespace(**data)
    view.pieces = [SimpleNamespace(**p) for p in data.get("pieces") or []]
    return view


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
