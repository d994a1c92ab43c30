"""Datasets: detect, validate, normalise and split user data into the records training reads.

`load_splits` is the one entry point training uses. The GUI and the CLI use `inspect_dataset`
(a `Report`), `import_dataset` (the same, stored in `workspace/datasets/<id>/`), `token_view` (one
example token by token) and `list_datasets`. Every failure is a `DataError` whose message names the
file, the line and the field, and says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data.formats import FORMATS
from engine.data.importer import (
    DatasetInfo,
    TokenSettings,
    dataset_dir,
    import_dataset,
    inspect_dataset,
    list_datasets,
    load_report,
    read_imported,
)
from engine.data.pipeline import Options, plan_splits
from engine.data.problems import DataError, Problem
from engine.data.report import Report, TokenReport, TokenStats
from engine.data.tokens import load_tokenizer
from engine.data.view import TokenPiece, TokenView, token_view

__all__ = [
    "FORMATS",
    "DataError",
    "DatasetInfo",
    "Options",
    "Problem",
    "Report",
    "Splits",
    "TokenPiece",
    "TokenReport",
    "TokenSettings",
    "TokenStats",
    "TokenView",
    "dataset_dir",
    "import_dataset",
    "inspect_dataset",
    "list_datasets",
    "load_report",
    "load_splits",
    "load_tokenizer",
    "read_imported",
    "token_view",
]


@dataclass
class Splits:
    train: list[dict]
    valid: list[dict]
    test: list[dict]
    notes: list[str] = field(
        default_factory=list
    )  # things the user should know (carved valid, ...)


def load_splits(path: str | Path, *, valid_fraction: float = 0.1, seed: int = 0) -> Splits:
    """Normalised train/valid/test records from any supported dataset: a file in any format, a
    folder with train/valid/test files, a zip, or an imported dataset (its folder or its id).

    Bad records are skipped and described in `notes`; repeated examples are kept (training data may
    repeat on purpose) and counted in `notes`. When there is no validation split,
    `valid_fraction` of train is held out with `seed` (imported datasets keep the split they were
    imported with).
    """
    p = Path(path).expanduser()
    folder = dataset_dir(p) if p.is_dir() or not p.exists() else None
    if folder is not None:
        return _load_imported(folder, valid_fraction, seed)
    if not p.exists():
        raise DataError(
            f"Dataset {path} does not exist.", "Check the path, or drop the file again."
        )
    from engine.data.importer import _run

    options = Options(valid_fraction=valid_fraction, seed=seed, dedupe=False)
    records: list[dict] = []
    report, final = _run(p, options, None, lambda ex: records.append(ex.record))
    parts: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    names = ("train", "valid", "test")
    for code, record in zip(final, records, strict=True):
        parts[names[code]].append(record)
    notes = list(report.split_notes)
    if report.summary:
        notes.append(
            report.summary + (f" First: {report.problems[0]['text']}" if report.problems else "")
        )
    notes += report.notes
    return Splits(parts["train"], parts["valid"], parts["test"], notes)


def _load_imported(folder: Path, valid_fraction: float, seed: int) -> Splits:
    parts = read_imported(folder)
    notes: list[str] = []
    if not parts["train"]:
        raise DataError(
            f"The dataset {folder.name} has no training examples.", "Import the data again."
        )
    if not parts["valid"] and valid_fraction > 0:
        codes = np.zeros(len(parts["train"]), np.int8)
        final, notes = plan_splits(
            codes,
            Options(valid_fraction=valid_fraction, seed=seed),
            {"train": True, "valid": False, "test": True},
        )
        train = parts["train"]
        parts["train"] = [r for r, c in zip(train, final, strict=True) if c == 0]
        parts["valid"] = [r for r, c in zip(train, final, strict=True) if c == 1]
    return Splits(parts["train"], parts["valid"], parts["test"], notes)
