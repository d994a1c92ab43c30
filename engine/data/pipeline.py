"""One streaming pass over a dataset: files -> rows -> normalised, validated, de-duplicated examples.

`Scan` is the shared core of `inspect`, `import_dataset` and `load_splits`. It yields examples one
at a time and remembers only counts, a bounded list of problems and an 8-byte hash per kept example
(for duplicates and train/valid overlap), so memory does not grow with the size of the text.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.config import MAX_SEED
from engine.data import formats, readers, sources
from engine.data.problems import DataError, Problem, ProblemLog, RecordProblem

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
SNIFF_ROWS = 50
MAX_KEY_NOTES = 8  # ignored keys named in a note each; the rest share one note


# What `data import` (CLI and Data page) holds out as a test split when the data has none, so that
# evaluation scores examples that training never saw (not the validation split training watched).
# Small: 5% of the training examples, and only from IMPORT_TEST_MIN_EXAMPLES examples up, since a
# test split of one or two examples says little and costs a small dataset much.
IMPORT_TEST_FRACTION = 0.05
IMPORT_TEST_MIN_EXAMPLES = 20


@dataclass
class Options:
    """How to read a dataset. Every field has a default that suits a typical drop."""

    format: str | None = None  # override detection: chat, completion, alpaca, sharegpt, text
    mapping: dict[str, str] = field(default_factory=dict)  # target field -> source column/key
    strict: bool = False  # stop at the first bad example instead of skipping it
    valid_fraction: float = 0.1  # held out as valid when the data has no valid split
    test_fraction: float = 0.0  # held out as test when the data has no test split (`data import`
    # and the Data page ask for IMPORT_TEST_FRACTION)
    test_min_examples: int = 0  # hold out a test split only from at least this many examples
    seed: int = 0  # for the held-out splits
    dedupe: bool = True  # drop repeated examples (and valid/test examples also in train); when
    # False they are kept and reported as warnings
    text_chunk_chars: int = 4000  # .txt/.md files are cut into chunks of up to this many characters
    fill: dict[str, str] = field(default_factory=dict)  # `{{word}}` placeholders -> their values

    def __post_init__(self):
        self.fill = formats.parse_fill(self.fill)
        if isinstance(self.mapping, str) or self.mapping is None:
            self.mapping = formats.parse_mapping(self.mapping)
        elif self.mapping:
            self.mapping = formats.parse_mapping(self.mapping)
        if self.format:
            self.format = formats.canonical_format(self.format)
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise DataError(
                    f"{name.replace('_', ' ')} must be between 0 and 1, not {v}.",
                    "Use, for example, 0.1 for 10%.",
                )
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise DataError(f"The seed must be between 0 and {MAX_SEED:,}, not {self.seed}.")
        if self.valid_fraction + self.test_fraction >= 1:
            raise DataError(
                "The valid and test fractions leave nothing to train on.",
                "Keep their sum well below 1.",
            )

    def signature(self) -> dict:
        """The options that change the imported data (re-import with these finds the same dataset)."""
        return {
            "format": self.format,
            "mapping": dict(sorted(self.mapping.items())),
            "valid_fraction": self.valid_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            **({"test_min_examples": self.test_min_examples} if self.test_min_examples else {}),
            "dedupe": self.dedupe,
            "text_chunk_chars": self.text_chunk_chars,
            **({"fill": dict(sorted(self.fill.items()))} if self.fill else {}),
        }


@dataclass
class FileInfo:
    name: str
    split: str
    container: str = ""
    container_reason: str = ""
    format: str = ""
    format_reason: str = ""
    mapping: dict[str, str] = field(default_factory=dict)
    encoding: str = ""
    rows: int = 0
    kept: int = 0
    skipped: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # kept examples per record_kind

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Example:
    split: str
    where: str
    record: dict


KIND_LABELS = {
    "chat": "conversations",
    "completion": "prompt/completion pairs",
    "text": "plain text",
    "preference": "preference pairs",
}


def record_kind(record: dict) -> str:
    if "rejected" in record:
        return "preference"
    if "messages" in record:
        return "chat"
    if "prompt" in record:
        return "completion"
    return "text"


class Scan:
    """A dataset opened for reading. Use as a context manager (a zip is unpacked meanwhile)."""

    def __init__(
        self, path: str | Path, options: Options | None = None, log: ProblemLog | None = None
    ):
        self.path = Path(path).expanduser()
        self.options = options or Options()
        self.log = log or ProblemLog(strict=self.options.strict)
        self.files: list[FileInfo] = []
        self.kinds: Counter = Counter()
        self.unknown_keys: Counter = Counter()  # key -> records that have it
        self.remarks: Counter = Counter()  # formats.REMARKS code -> records
        self.placeholders: Counter = Counter()  # word -> records that still contain {{word}}
        self.placeholder_records = 0
        self.rows = 0
        self.container = ""
        self._stack = ExitStack()
        self._sources: list[sources.SourceFile] = []

    def __enter__(self) -> Scan:
        path = self.path
        if not path.exists():
            raise DataError(f"{path} does not exist.", "Check the path, or drop the file again.")
        if path.is_file() and path.stat().st_size == 0:
            raise DataError(f"{path.name} is empty.", "Choose the file that has the examples.")
        if path.is_file():
            with open(path, "rb") as fh:
                head = fh.read(8192)
            if head.startswith(b"PK\x03\x04") and path.suffix.lower() not in sources._OFFICE:
                self.container = "zip"
                root = self._stack.enter_context(sources.unpacked(path))
                self._sources = sources.discover(root, path.name, self.log.notes)
                return self
            what = sources.describe_binary(path, head)
            if what:
                raise DataError(
                    f"{path.name} is {what}, not a dataset.",
                    "Drop a .jsonl, .json, .csv, .tsv, .txt, .md or .parquet file.",
                )
            self.container = "file"
        else:
            self.container = "folder"
        self._sources = sources.discover(
            path, None if path.is_file() else path.name, self.log.notes
        )
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def has_split(self) -> dict[str, bool]:
        present = {s.split for s in self._sources}
        return {s: s in present for s in sources.SPLITS}

    def examples(self) -> Iterator[Example]:
        """Every kept example, train files first (so overlap with train is known for valid/test)."""
        # hash -> where it was first seen, packed in one int (file index, split, row number)
        # because a dict of small ints is the one structure here that grows with the data.
        seen: dict[int, int] = {}
        order = sorted(self._sources, key=lambda s: SPLIT_CODES[s.split])
        for index, src in enumerate(order):
            info = FileInfo(src.name, src.split)
            self.files.append(info)
            yield from self._file_examples(index, src, info, seen)
        self._notes()
        if self.rows == 0:
            what = self.path.name
            raise DataError(
                f"{what} has no examples (the file is empty or only blank lines).",
                "Choose the file that has the examples.",
            )

    # -- internals -------------------------------------------------------------------------
    def _file_examples(
        self, index: int, src: sources.SourceFile, info: FileInfo, seen: dict
    ) -> Iterator[Example]:
        path = src.path
        if path.stat().st_size == 0:
            self.log.note(f"{src.name} is empty.")
            return
        with open(path, "rb") as fh:
            what = sources.describe_binary(path, fh.read(8192))
        if what:
            raise DataError(
                f"{src.name} is {what}, not a dataset file.", "Remove it from the folder."
            )
        info.container, info.container_reason = readers.sniff_container(path)
        rows, text = readers.read(path, info.container, self.options.text_chunk_chars)
        head = list(itertools.islice(rows, SNIFF_ROWS))
        info.format, info.format_reason, info.mapping = self._detect(src, info, head)
        normalise = formats.normaliser(info.format)
        mapping = info.mapping
        fill = self.options.fill
        log = self.log
        for row in itertools.chain(head, rows):
            info.rows += 1
            self.rows += 1
            split = row.split or src.split
            where = row.where(src.name)
            problem = row.problem
            record = None
            if problem is None:
                value = row.value
                if not isinstance(value, dict):
                    problem = RecordProblem(
                        "not_object",
                        f"is {formats._type_name(value)}, not an object",
                        'Each example must be a JSON object like {"messages": [...]}.',
                    )
                else:
                    mapped = formats.apply_mapping(value, mapping)
                    try:
                        record, remarks = formats.normalise(normalise, mapped)
                        key = _digest(record)
                    except RecordProblem as exc:
                        problem = exc
                    else:
                        self.remarks.update(remarks)
                        self.unknown_keys.update(formats.unknown_keys(info.format, mapped))
                        if fill:
                            record = formats.fill_placeholders(record, fill)
                            key = _digest(record)
                        words = formats.find_placeholders(record)
                        if words:
                            self.placeholders.update(words)
                            self.placeholder_records += 1
            if problem is not None:
                info.skipped += 1
                log.add(Problem(problem.code, where, problem.message, problem.hint, problem.field))
                continue
            first = seen.get(key)
            if first is not None:
                repeat = self._repeat_problem(where, split, first)
                if self.options.dedupe:
                    info.skipped += 1
                    log.add(repeat)
                    continue
                # Kept on purpose (upsampling, memorisation tests): still worth knowing.
                repeat.severity = "warning"
                log.add(repeat)
            else:
                seen[key] = (
                    (index << 42) | (SPLIT_CODES[split] << 40) | min(row.number, (1 << 40) - 1)
                )
            info.kept += 1
            kind = record_kind(record)
            self.kinds[kind] += 1
            info.kinds[kind] = info.kinds.get(kind, 0) + 1
            yield Example(split, where, record)
        if text is not None:
            note = text.encoding_note(src.name)
            if note:
                log.note(note)
            info.encoding = "latin-1" if text.latin1_lines else text.encoding
        if info.rows == 0:
            log.note(f"{src.name} has no examples.")

    def _notes(self) -> None:
        """Dataset-wide remarks, once each: what was ignored, decoded, left unfilled or mixed."""
        note = self.log.note
        if self.kinds.get("preference"):
            n = self.kinds["preference"]
            note(
                f"{n} example{'s are' if n != 1 else ' is a'} preference pair{'s' if n != 1 else ''}"
                " (a chosen and a rejected answer). Fine-tuning trains on the chosen answers; the "
                "rejected ones are kept in the dataset for preference training."
            )
        for code, n in sorted(self.remarks.items()):
            note(f"In {n} record{'s' if n != 1 else ''}, {formats.REMARKS.get(code, code)}.")
        unknown = sorted(self.unknown_keys.items(), key=lambda kv: (-kv[1], kv[0]))
        for key, n in unknown[:MAX_KEY_NOTES]:
            note(
                f"The field '{key}' (in {n} record{'s' if n != 1 else ''}) is not used for "
                "training; Lathe ignores it."
            )
        if len(unknown) > MAX_KEY_NOTES:
            rest = ", ".join(f"'{k}' ({n})" for k, n in unknown[MAX_KEY_NOTES:])
            note(f"These fields are not used for training either: {rest}.")
        if self.placeholders:
            words = ", ".join(
                f"{{{{{w}}}}} ({n})"
                for w, n in sorted(self.placeholders.items(), key=lambda kv: (-kv[1], kv[0]))
            )
            first = min(self.placeholders, key=lambda w: (-self.placeholders[w], w))
            n = self.placeholder_records
            note(
                f"{n} example{'s contain' if n != 1 else ' contains'} placeholders that would be "
                f"trained as they are: {words}. Fill them at import with --set {first}=VALUE "
                "(on the Data page: Fill placeholders)."
            )
        used = [f for f in self.files if f.kinds]
        kinds = {k for f in used for k in f.kinds}
        if len(used) > 1 and len(kinds) > 1:
            parts = "; ".join(
                f"{f.name}: "
                + ", ".join(f"{n} {KIND_LABELS.get(k, k)}" for k, n in f.kinds.items())
                for f in used
            )
            note(
                f"The files hold different kinds of data ({parts}). They are trained together as "
                "one dataset; import them separately to train on one kind."
            )

    def _repeat_problem(self, where: str, split: str, first: int) -> Problem:
        info = self.files[first >> 42]
        first_split = sources.SPLITS[(first >> 40) & 3]
        unit = {"csv": "row", "tsv": "row", "parquet": "row", "json": "item"}.get(
            info.container, "line"
        )
        at = f"{info.name}, {unit} {first & ((1 << 40) - 1)}"
        if first_split != split:
            order_split = first_split
            return Problem(
                "overlap",
                where,
                f"the same example is also in {order_split} ({at})",
                f"The {split} loss is only honest on examples the model has not trained on; "
                "remove it from one of the files.",
            )
        return Problem(
            "duplicate",
            where,
            f"repeats the example at {at}",
            "Remove the copy, or keep duplicates on purpose with --keep-duplicates.",
        )

    def _detect(self, src: sources.SourceFile, info: FileInfo, head: list) -> tuple[str, str, dict]:
        opts = self.options
        mapping = dict(opts.mapping)
        values = [r.value for r in head if r.problem is None]
        if info.container == "text":
            return (
                "text",
                f"{info.container_reason}: cut into chunks of up to {opts.text_chunk_chars} "
                "characters at paragraph breaks",
                {},
            )
        if not values:
            if not head:
                return opts.format or "text", "no examples", mapping
            # Every sniffed row is broken: the rows themselves will say why.
            return opts.format or "chat", "the first rows could not be read", mapping
        keys = list(dict.fromkeys(k for v in values if isinstance(v, dict) for k in v))
        for target, column in mapping.items():
            if column not in keys:
                shown = ", ".join(map(formats.shown_key, keys[:12])) or "none"
                raise DataError(
                    f"{src.name} has no column or field '{column}' (for {target}); "
                    f"it has: {shown}.",
                    "Fix the --map option.",
                )
        mapping_reason = "given with --map" if mapping else ""
        if (
            not mapping
            and not opts.format
            and all(formats._guess(v) is None for v in values if isinstance(v, dict))
        ):
            auto = formats.auto_mapping([str(k) for k in keys])
            if auto:
                mapping, mapping_reason = auto
        if opts.format:
            fmt, why = opts.format, "chosen with --format"
            _check_forced_format(src.name, fmt, mapping, values, keys)
        else:
            try:
                fmt, why = formats.detect(values, mapping)
            except DataError as exc:
                raise DataError(f"{src.name}: {exc}", exc.hint) from None
        if mapping_reason:
            why = f"{why} ({mapping_reason})"
        return fmt, f"{why}; {info.container_reason}", mapping


# The field each format cannot do without, for the message when --format names a format whose
# field the file lacks.
_REQUIRED = {
    "text": "text",
    "completion": "completion",
    "alpaca": "output",
    "chat": "messages",
    "sharegpt": "conversations",
    "preference": "chosen",
}


def _check_forced_format(name: str, fmt: str, mapping: dict, values: list, keys: list) -> None:
    need = _REQUIRED[fmt]
    rows = [formats.apply_mapping(v, mapping) for v in values if isinstance(v, dict)]
    also = {"conversations": "conversation", "chosen": "preferred_output"}.get(need)
    if not rows or any(need in r or also in r for r in rows):
        return
    shown = ", ".join(map(str, keys[:12])) or "none"
    raise DataError(
        f"{name} has no '{need}' column or field for the {formats.FORMATS[fmt]} format; it has: "
        f"{shown}.",
        f"Say which one holds it with --map {need}=COLUMN"
        + (f" (e.g. --map {need}={keys[0]})" if keys else "")
        + ".",
    )


def _digest(record: dict) -> int:
    """A 64-bit hash of the record; a record with text that is not Unicode is a RecordProblem."""
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON can escape half of a UTF-16 pair ("\ud800"): it decodes to no character, and
        # writing it (import, tokenizer, export) fails, so the record is skipped here.
        raise RecordProblem(
            "bad_text",
            f"holds an escape that is no character (\\u{ord(text[exc.start]):04x}, half of a "
            "UTF-16 surrogate pair)",
            "Fix the \\u escape or remove this example.",
        ) from None
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def plan_splits(
    source: np.ndarray, options: Options, has_split: dict[str, bool]
) -> tuple[np.ndarray, list[str]]:
    """Final split codes (0 train, 1 valid, 2 test) for each kept example, carving valid/test from
    train with `options.seed` when the data has none. Deterministic for the same inputs."""
    final = source.astype(np.int8, copy=True)
    notes: list[str] = []
    train_idx = np.flatnonzero(final == 0)
    n = len(train_idx)
    want = []
    if not has_split["valid"] and options.valid_fraction > 0:
        want.append((1, "validation", options.valid_fraction))
    if not has_split["test"] and options.test_fraction > 0:
        if n >= options.test_min_examples:
            want.append((2, "test", options.test_fraction))
        else:
            notes.append(
                f"No test split in the data, and {n} training examples are too few to hold one "
                f"out ({options.test_min_examples} needed): evaluation will use the validation split."
            )
    if not want:
        return final, notes
    if n < 2:
        notes.append("Only one training example: no validation split could be held out.")
        return final, notes
    perm = np.random.default_rng(options.seed).permutation(n)
    start = 0
    for code, label, fraction in want:
        k = max(1, int(round(n * fraction)))
        k = min(k, n - start - 1)  # always leave at least one example to train on
        if k <= 0:
            continue
        final[train_idx[perm[start : start + k]]] = code
        start += k
        share, asked = f"{k / n:.0%}", f"{fraction:.0%}"
        why = asked if share == asked else f"{share}: {asked} asked, in whole examples"
        notes.append(
            f"No {label} split in the data: held out {k} of {n} training examples "
            f"({why}, seed {options.seed})."
            + (
                " Training never sees them; evaluation scores them (--test-fraction 0 keeps "
                "them for training)."
                if code == 2
                else ""
            )
        )
    return final, notes
