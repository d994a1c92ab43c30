"""Datasets: detect, validate, normalise and split user data into the records training reads.

`load_splits` is the one entry point training uses; richer import (formats, reports, storage in the
workspace) plugs in behind it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import LatheError


class DataError(LatheError):
    """A dataset problem; the message names the file, line and field, and what to do."""

    kind = "data"


@dataclass
class Splits:
    train: list[dict]
    valid: list[dict]
    test: list[dict]
    notes: list[str] = field(default_factory=list)  # things the user should know (carved valid, ...)


def load_splits(path: str | Path, *, valid_fraction: float = 0.1, seed: int = 0) -> Splits:
    """Normalised train/valid/test records from a JSONL file or a folder of train/valid/test.jsonl.

    When there is no validation split, `valid_fraction` of train is carved off with `seed`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"Dataset {path} does not exist.", "Check the path, or drop the file again.")
    notes: list[str] = []
    if path.is_dir():
        parts = {n: _read_jsonl(path / f"{n}.jsonl") if (path / f"{n}.jsonl").exists() else []
                 for n in ("train", "valid", "test")}
        if not parts["train"]:
            raise DataError(f"{path} has no train.jsonl with examples.",
                            "Put the training examples in train.jsonl inside that folder.")
    else:
        parts = {"train": _read_jsonl(path), "valid": [], "test": []}
    train, valid, test = parts["train"], parts["valid"], parts["test"]
    if not valid and valid_fraction > 0 and len(train) >= 2:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_valid = max(1, int(round(len(train) * valid_fraction)))
        valid = [train[i] for i in order[:n_valid]]
        train = [train[i] for i in order[n_valid:]]
        notes.append(f"No validation split found: held out {n_valid} of the training examples "
                     f"(seed {seed}).")
    return Splits(train, valid, test, notes)


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path.name}, line {lineno}: not valid JSON ({exc.msg}).",
                                "Fix or remove that line.") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path.name}, line {lineno}: expected a JSON object.",
                                "Each line must be one example like {\"prompt\": ..., \"completion\": ...}.")
            records.append(obj)
    if not records:
        raise DataError(f"{path.name} has no examples.", "Add at least one example per line.")
    return records
