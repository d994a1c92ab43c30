"""Inspect a dataset, import it into the workspace, list and load imported datasets.

Workspace layout: `datasets/<id>/` with `train.jsonl`, `valid.jsonl`, `test.jsonl` (normalised
records) and `dataset.json` (id, name, the original's name, size and SHA-256, the options used and
the report). The folder is written under a temporary name and renamed, so it is complete or absent.
"""

from __future__ import annotations

import json
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import workspace
from engine.config import ConfigError, check_value, field_bounds
from engine.data import sources
from engine.data.pipeline import SPLIT_CODES, Example, Options, Scan, plan_splits
from engine.data.problems import DataError, ProblemLog
from engine.data.report import Report, TokenReport, TokenStats, format_label, histogram
from engine.errors import disk_full, is_disk_full

META = "dataset.json"
PROGRESS_INTERVAL_S = 0.1  # at most ten "Reading examples" reports a second
TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".md")
BIG_SOURCE_BYTES = (
    8 * 1024**2
)  # from this size on, token counting starts its worker processes at once


@dataclass
class TokenSettings:
    """What the token part of a report needs: a model and the training settings that matter."""

    model: str | Path
    max_seq_length: int = 2048
    batch_size: int = 4
    mask_prompt: bool = True
    chat_template: str | None = None
    workers: int | None = None  # processes that encode; default: one per core (up to 8)

    def __post_init__(self):
        # The same ranges as the training settings these stand for (engine.config).
        for name, section in (("max_seq_length", "data"), ("batch_size", "training")):
            try:
                check_value(
                    name.replace("_", " "), getattr(self, name), **field_bounds(section, name)
                )
            except ConfigError as exc:
                raise DataError(str(exc.args[0]), exc.hint) from None


@dataclass
class ImportProgress:
    """Where an import is: `examples` read so far of about `estimate` (0: unknown), and the stage
    in words. `--progress` prints it; the app's Data page shows it."""

    examples: int
    estimate: int
    stage: str

    @property
    def fraction(self) -> float | None:
        if not self.estimate:
            return None
        return min(0.99, self.examples / self.estimate)

    def to_dict(self) -> dict:
        return {
            "examples": self.examples,
            "estimate": self.estimate,
            "stage": self.stage,
            "fraction": self.fraction,
        }


def estimate_records(path: Path) -> int:
    """Newlines in a dataset's text files: about one record per line for JSONL and CSV (a quick
    pass that only counts, so progress can say how far the real pass is)."""
    files = [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    total = 0
    for f in files:
        if f.suffix.lower() not in TEXT_SUFFIXES:
            continue
        try:
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    total += chunk.count(b"\n")
        except OSError:
            continue
    return total


def inspect_dataset(
    path: str | Path,
    options: Options | None = None,
    *,
    tokens: TokenSettings | None = None,
    counter=None,
) -> Report:
    """Read a dataset (any supported format, a folder or a zip) and report on it; nothing is written.

    With `tokens` the report includes token lengths, trained tokens and steps per epoch, and
    examples that would train no token are listed as problems.
    """
    report, _ = _run(path, options or Options(), tokens, None, counter)
    return report


def import_dataset(
    path: str | Path,
    options: Options | None = None,
    *,
    name: str | None = None,
    tokens: TokenSettings | None = None,
    counter=None,
    progress: Callable[[ImportProgress], None] | None = None,
) -> Report:
    """Copy a dataset, normalised, into `workspace/datasets/<id>/`; returns the report with
    `dataset_id` and `dataset_path` set. Importing the same file with the same options again returns
    the existing dataset (`reused` is True). The original is only read. `progress` is called with
    an ImportProgress at each stage and, while examples are read, up to ten times a second."""
    options = options or Options()
    source = Path(path).expanduser()
    if not source.exists():
        raise DataError(f"{source} does not exist.", "Check the path, or drop the file again.")
    if progress is not None:
        progress(ImportProgress(0, 0, "Counting records…"))
    sha = sources.sha256_of(source)
    signature = _signature(options, tokens)
    existing = _find_existing(sha, signature)
    if existing is not None:
        meta = workspace.read_json(existing / META, {})
        report = Report.from_dict(meta["report"])
        report.reused = True
        return report
    root = workspace.datasets_dir()
    ds_id = workspace.new_id(name or _stem(source))
    # Built in the workspace's tmp/ (locked while in use; a killed import's leftovers are tidied
    # at the next start), then renamed into datasets/ complete.
    try:
        with workspace.scratch("import") as scratch:
            tmp = workspace.ensure_dir(scratch / ds_id)
            pool_path = tmp / ".pool.jsonl"
            with open(pool_path, "w", encoding="utf-8") as pool:

                def sink(ex: Example) -> None:
                    pool.write(json.dumps(ex.record, ensure_ascii=False, default=str) + "\n")

                report, final = _run(
                    source, options, tokens, sink, counter, sha=sha, progress=progress
                )
            _distribute(pool_path, final, tmp)
            pool_path.unlink()
            report.dataset_id = ds_id
            report.dataset_path = str(root / ds_id)
            meta = {
                "id": ds_id,
                "name": name or _stem(source),
                "created": time.time(),
                "original": {
                    "name": source.name,
                    "path": str(source.resolve()),
                    "size_bytes": report.size_bytes,
                    "sha256": sha,
                },
                "signature": signature,
                "report": report.to_dict(),
            }
            workspace.write_json_atomic(tmp / META, meta)
            os.replace(tmp, root / ds_id)
    except BaseException as exc:
        if is_disk_full(exc):
            raise disk_full(f"import {sources.shown(source.name)}") from None
        raise
    return report


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".zip", ".jsonl", ".json", ".csv", ".tsv", ".txt", ".md", ".parquet"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _signature(options: Options, tokens: TokenSettings | None) -> dict:
    sig = options.signature()
    if tokens is not None:
        # Examples that train no token are left out, and that depends on these.
        sig["tokens"] = {
            "model": str(tokens.model),
            "max_seq_length": tokens.max_seq_length,
            "mask_prompt": tokens.mask_prompt,
            "chat_template": tokens.chat_template,
        }
    return sig


def _find_existing(sha: str, signature: dict) -> Path | None:
    for meta_path in sorted(workspace.datasets_dir().glob(f"*/{META}")):
        meta = workspace.read_json(meta_path, {}) or {}
        if meta.get("original", {}).get("sha256") == sha and meta.get("signature") == signature:
            return meta_path.parent
    return None


def _distribute(pool_path: Path, final: np.ndarray, folder: Path) -> None:
    handles = {s: open(folder / f"{s}.jsonl", "w", encoding="utf-8") for s in sources.SPLITS}
    try:
        with open(pool_path, encoding="utf-8") as pool:
            for code, line in zip(final, pool, strict=True):
                handles[sources.SPLITS[code]].write(line)
    finally:
        for fh in handles.values():
            fh.close()
    for s in sources.SPLITS:
        os.chmod(folder / f"{s}.jsonl", workspace.FILE_MODE)


def _run(
    path,
    options: Options,
    tokens: TokenSettings | None,
    sink: Callable[[Example], None] | None,
    counter=None,
    sha: str | None = None,
    progress: Callable[[ImportProgress], None] | None = None,
) -> tuple[Report, np.ndarray]:
    """The single streaming pass shared by inspect, import and load_splits."""
    source = Path(path).expanduser()
    log = ProblemLog(strict=options.strict)
    estimate = 0
    if progress is not None:
        estimate = estimate_records(source)
        if tokens is not None and counter is None:
            progress(ImportProgress(0, estimate, "Loading the tokenizer…"))
    if tokens is not None and counter is None:
        from engine.data.tokens import TokenCounter

        counter = TokenCounter(
            tokens.model,
            chat_template=tokens.chat_template,
            mask_prompt=tokens.mask_prompt,
            max_seq_length=tokens.max_seq_length,
            workers=tokens.workers,
        )
    codes = array("b")
    lengths = array("l")
    trained = array("l")
    with Scan(source, options, log) as scan:
        stream = scan.examples()
        if progress is not None:
            stream = _reported(stream, estimate, progress)
        if counter is not None:
            big = sources.size_of(source) > BIG_SOURCE_BYTES
            for ex, length, n_trained in counter.measure(stream, log, big=big):
                codes.append(SPLIT_CODES[ex.split])
                lengths.append(length)
                trained.append(n_trained)
                if sink:
                    sink(ex)
        else:
            for ex in stream:
                codes.append(SPLIT_CODES[ex.split])
                if sink:
                    sink(ex)
    source_codes = np.frombuffer(codes, dtype=np.int8) if len(codes) else np.zeros(0, np.int8)
    present = {s: bool((source_codes == c).any()) for s, c in SPLIT_CODES.items()}
    if not present["train"]:
        first = f" First: {log.examples[0]}" if log.examples else ""
        raise DataError(
            f"Nothing to train on in {source.name}: none of its {scan.rows} records "
            f"could be used. {log.summary()}{first}".strip(),
            "Fix the problems listed, or check that this is the right file.",
        )
    if counter is not None:
        note = counter.drop_note(len(codes))
        if note:
            log.note(note)
    final, split_notes = plan_splits(source_codes, options, present)
    report = _report(source, scan, log, final, split_notes, options, sha)
    if counter is not None:
        report.tokens = _token_report(
            counter,
            tokens,
            final,
            np.asarray(lengths),
            np.asarray(trained),
            log.counts.get("zero_trained", 0),
        )
        report.tokens.template_drops = dict(counter.drops)
        report.tokens.hollow = counter.hollow
    return report, final


def _reported(stream, estimate: int, progress: Callable[[ImportProgress], None]):
    """The examples of `stream`, reporting how many were read at most every PROGRESS_INTERVAL_S."""
    last = 0.0
    n = 0
    for n, ex in enumerate(stream, 1):
        now = time.monotonic()
        if now - last > PROGRESS_INTERVAL_S:
            last = now
            progress(ImportProgress(n, estimate, "Reading examples…"))
        yield ex
    progress(ImportProgress(n, estimate, "Writing the dataset…"))


def _report(
    source: Path,
    scan: Scan,
    log: ProblemLog,
    final: np.ndarray,
    split_notes: list[str],
    options: Options,
    sha: str | None,
) -> Report:
    formats_used = [f.format for f in scan.files if f.rows]
    fmt = formats_used[0] if formats_used and len(set(formats_used)) == 1 else "mixed"
    reason = next((f.format_reason for f in scan.files if f.rows), "")
    mappings = [f.mapping for f in scan.files if f.mapping]
    counts = {s: int((final == c).sum()) for s, c in SPLIT_CODES.items()}
    return Report(
        source=sources.shown(str(source)),
        name=sources.shown(source.name),
        size_bytes=sources.size_of(source),
        sha256=sha or sources.sha256_of(source),
        container=scan.container,
        format=fmt,
        format_label=format_label(fmt),
        format_reason=reason,
        mapping=mappings[0] if mappings else {},
        files=[f.to_dict() for f in scan.files],
        splits=counts,
        split_notes=split_notes,
        kinds=dict(scan.kinds),
        rows=scan.rows,
        kept=int(len(final)),
        skipped=log.skipped,
        problem_counts=dict(log.counts),
        warning_counts=dict(log.warning_counts),
        problems=[p.to_dict() for p in log.examples],
        notes=list(log.notes),
        summary=log.summary(),
        options=options.signature(),
        placeholders=dict(scan.placeholders.most_common()),
        unknown_keys=dict(scan.unknown_keys.most_common()),
    )


def _token_report(
    counter,
    tokens: TokenSettings,
    final: np.ndarray,
    lengths: np.ndarray,
    trained: np.ndarray,
    zero_trained: int,
) -> TokenReport:
    limit = tokens.max_seq_length
    splits = {}
    for s, c in SPLIT_CODES.items():
        mask = final == c
        stats = TokenStats.of(lengths[mask], trained[mask], limit)
        if stats:
            splits[s] = stats
    n_train = int((final == 0).sum())
    return TokenReport(
        model=str(tokens.model),
        template_source=counter.template_source,
        max_seq_length=limit,
        batch_size=tokens.batch_size,
        splits=splits,
        histogram=histogram(lengths[final == 0]),
        steps_per_epoch=-(-n_train // max(1, tokens.batch_size)),
        zero_trained=zero_trained,
    )


# ---------------------------------------------------------------------------------------------
# Imported datasets


@dataclass
class DatasetInfo:
    id: str
    name: str
    path: Path
    created: float
    format: str
    splits: dict[str, int]
    original_name: str
    sha256: str


def list_datasets() -> list[DatasetInfo]:
    """Datasets in the workspace, newest first."""
    out = []
    for meta_path in workspace.datasets_dir().glob(f"*/{META}"):
        meta = workspace.read_json(meta_path, None)
        if not isinstance(meta, dict) or "report" not in meta:
            continue
        rep = meta["report"]
        out.append(
            DatasetInfo(
                meta.get("id", meta_path.parent.name),
                meta.get("name", ""),
                meta_path.parent,
                float(meta.get("created", 0)),
                rep.get("format", ""),
                rep.get("splits", {}),
                meta.get("original", {}).get("name", ""),
                meta.get("original", {}).get("sha256", ""),
            )
        )
    return sorted(out, key=lambda d: d.created, reverse=True)


def dataset_dir(id_or_path: str | Path) -> Path | None:
    """The folder of an imported dataset given its id (or a unique prefix of it), its name (the
    newest dataset of that name), or its folder."""
    p = Path(id_or_path).expanduser()
    if p.is_dir() and (p / META).exists():
        return p
    text = str(id_or_path)
    if not text or "/" in text or os.sep in text or text.startswith("."):
        return None
    root = workspace.datasets_dir()
    exact = root / text
    if (exact / META).exists():
        return exact
    if not root.is_dir():
        return None
    matches = [
        d for d in root.iterdir() if d.is_dir() and d.name.startswith(text) and (d / META).exists()
    ]
    if len(matches) == 1:
        return matches[0]
    # The name it was imported under (`data import --name`, or the file's name): the newest.
    named = [d.path for d in list_datasets() if d.name == text]
    return named[0] if named else None


def load_report(id_or_path: str | Path) -> Report:
    """The report saved with an imported dataset."""
    folder = dataset_dir(id_or_path)
    if folder is None:
        raise DataError(f"No imported dataset '{id_or_path}'.", "See `python -m engine data list`.")
    return Report.from_dict(workspace.read_json(folder / META)["report"])


def read_imported(folder: Path) -> dict[str, list[dict]]:
    """The normalised records of an imported dataset, per split."""
    parts = {}
    for s in sources.SPLITS:
        f = folder / f"{s}.jsonl"
        rows = []
        if f.exists():
            with open(f, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError:
                            raise DataError(
                                f"{f}, line {n}: the imported dataset is damaged.",
                                "Import the original file again.",
                            ) from None
        parts[s] = rows
    return parts
