"""Reading rows out of one file: JSONL, JSON (array or object), CSV/TSV, plain text, Parquet.

Every reader is a generator of `Row`s, so a file of any size is read with bounded memory: JSONL,
CSV and text one line at a time, JSON arrays one element at a time (an incremental parser over a
sliding buffer), Parquet one record batch at a time. A row that cannot be read carries a
`RecordProblem` instead of a value; the caller decides whether to skip it or stop.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.problems import DataError, RecordProblem
from engine.data.sources import SPLIT_NAMES, TextFile, head_text, is_parquet

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
MAX_JSON_OBJECT_FILE = 256 * 1024**2  # a top-level JSON object is parsed whole; refuse beyond this
MAX_ELEMENT_CHARS = 64 * 1024**2  # one JSON array element larger than this is not an example
HEAD_BYTES = 65536  # what format sniffing reads of a file


@dataclass
class Row:
    unit: str  # "line", "row" or "item"
    number: int
    value: Any = None
    problem: RecordProblem | None = None
    split: str | None = None  # set by a JSON object with train/valid/test lists
    line: int | None = None  # for JSON array items: the line the item starts on

    def where(self, name: str) -> str:
        extra = f" (line {self.line})" if self.line is not None and self.unit == "item" else ""
        return f"{name}, {self.unit} {self.number}{extra}"


def sniff_container(path: Path) -> tuple[str, str]:
    """(container, why): jsonl, json, csv, tsv, text or parquet."""
    suffix = path.suffix.lower()
    if suffix == ".parquet" or is_parquet(path):
        return "parquet", "Parquet file"
    if suffix == ".csv":
        return "csv", "a .csv file"
    if suffix == ".tsv":
        return "tsv", "a .tsv file"
    head = head_text(path, HEAD_BYTES)
    stripped = head.lstrip()
    first_line = stripped.split("\n", 1)[0].strip()
    if "\r" in first_line and cr_only_line_ends(path):
        first_line = first_line.split("\r", 1)[0].strip()  # read() explains these line ends
    elif "\n" not in stripped and first_line.startswith("{") and _longer_than_head(path):
        first_line = _whole_first_line(path)  # one JSON line longer than the head
    if suffix in TEXT_SUFFIXES:
        if first_line.startswith("{") and _is_json_object(first_line):
            return "jsonl", f"a {suffix} file whose lines are JSON objects"
        return "text", f"a {suffix} text file"
    if stripped.startswith("["):
        return "json", "the file is a JSON array"
    if stripped.startswith("{") and not _is_json_object(first_line):
        return "json", "the file is one JSON object spread over several lines"
    if suffix == ".json" and stripped.startswith("{") and not stripped[len(first_line) :].strip():
        return "json", "the file is one JSON object"
    if suffix in (".json", ".jsonl") or stripped.startswith("{"):
        return "jsonl", "one JSON object per line"
    if "\t" in first_line:
        return "tsv", "the first line has tab-separated columns"
    return "text", "plain text"


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
    except RecursionError:
        # Nested too deeply to parse, yet a line of its own: the reader skips it with a reason.
        return line.startswith("{") and line.endswith("}")


def _longer_than_head(path: Path) -> bool:
    try:
        return path.stat().st_size > HEAD_BYTES
    except OSError:
        return False


def _whole_first_line(path: Path) -> str:
    """The first non-blank line of a text file, however long (up to MAX_ELEMENT_CHARS)."""
    parts: list[str] = []
    size = 0
    for _, piece, ends in TextFile(path).pieces(1 << 20):
        if parts or piece.strip():
            parts.append(piece)
            size += len(piece)
        if (ends and parts) or size > MAX_ELEMENT_CHARS:
            break
    return "".join(parts).strip()


def cr_only_line_ends(path: Path) -> bool:
    """True for a file whose lines end in CR alone (classic Mac OS): no LF in its head, but a CR
    between lines. JSON strings cannot hold a raw CR, so in JSON lines it can only end a line."""
    head = head_text(path, HEAD_BYTES).strip()
    return "\r" in head and "\n" not in head


def read(
    path: Path, container: str, text_chunk_chars: int = 4000
) -> tuple[Iterator[Row], TextFile | None]:
    """Rows of one file, and the TextFile (for its encoding note) when it is text."""
    if container == "parquet":
        return _parquet_rows(path), None
    text = TextFile(path)
    if container == "jsonl":
        if cr_only_line_ends(path):
            raise DataError(
                f"{path.name} ends its lines with a carriage return (CR) only, as classic Mac OS "
                "did, so its JSON lines cannot be told apart.",
                "Save it with LF line endings (in TextEdit or BBEdit: Unix line endings), then import "
                "it again.",
            )
        return _jsonl_rows(text), text
    if container == "json":
        return _json_rows(text, path), text
    if container in ("csv", "tsv"):
        return _csv_rows(text, path, "\t" if container == "tsv" else None), text
    return _text_rows(text, text_chunk_chars), text


# ---------------------------------------------------------------------------------------------
# JSON lines


def _jsonl_rows(text: TextFile) -> Iterator[Row]:
    for n, line in text.lines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Row(
                "line",
                n,
                problem=RecordProblem(
                    "invalid_json",
                    f"not valid JSON ({exc.msg} at column {exc.colno})",
                    "Each line must be one complete JSON object; fix or remove this line.",
                ),
            )
            continue
        except RecursionError:
            yield Row(
                "line",
                n,
                problem=RecordProblem(
                    "invalid_json", "JSON nested too deeply", "Remove this line."
                ),
            )
            continue
        yield Row("line", n, value)


# ---------------------------------------------------------------------------------------------
# JSON documents


def _json_rows(text: TextFile, path: Path) -> Iterator[Row]:
    chunks = text.chunks()
    buf = ""
    for chunk in chunks:
        buf += chunk
        if buf.strip():
            break
    start = len(buf) - len(buf.lstrip())
    if buf[start : start + 1] == "{":
        yield from _json_object_rows(buf, chunks, path)
    else:
        yield from _json_array_rows(buf, start, chunks, path.name)


def _json_object_rows(buf: str, chunks: Iterator[str], path: Path) -> Iterator[Row]:
    if path.stat().st_size > MAX_JSON_OBJECT_FILE:
        raise DataError(
            f"{path.name} is one JSON object of {path.stat().st_size / 1024**2:.0f} MB, "
            "too big to read at once.",
            "Save it as JSON lines (one example per line) or as a JSON array.",
        )
    doc = buf + "".join(chunks)
    try:
        value = json.loads(doc)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path.name}, line {exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno}).",
            "Fix the JSON (a missing comma or bracket?) and try again.",
        ) from None
    except RecursionError:
        raise DataError(
            f"{path.name}: JSON nested too deeply.", "Check the file's structure."
        ) from None
    from engine.data.formats import _guess

    if not isinstance(value, dict) or _guess(value) is not None:
        yield Row("item", 1, value, line=1)  # one example on its own
        return
    lists = {
        k: v
        for k, v in value.items()
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
    }
    if lists and all(k.lower() in SPLIT_NAMES for k in lists):
        # {"train": [...], "validation": [...]}: the object carries its own splits.
        for key, items in lists.items():
            for i, item in enumerate(items, 1):
                yield Row("item", i, item, split=SPLIT_NAMES[key.lower()])
        return
    if len(lists) == 1:
        # {"data": [...]} and similar wrappers.
        for i, item in enumerate(next(iter(lists.values())), 1):
            yield Row("item", i, item)
        return
    yield Row("item", 1, value, line=1)


def _json_array_rows(buf: str, pos: int, chunks: Iterator[str], name: str) -> Iterator[Row]:
    decoder = json.JSONDecoder()
    line = 1 + buf.count("\n", 0, pos)
    if buf[pos : pos + 1] != "[":
        raise DataError(
            f"{name}: expected a JSON array or object, found '{buf[pos : pos + 20].strip()}'.",
            "Check that this is a JSON file.",
        )
    pos += 1
    eof = False
    item = 0

    def more() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        chunk = next(chunks, None)
        if chunk is None:
            eof = True
            return False
        buf = buf[pos:] + chunk  # drop what has been parsed: the buffer stays about one chunk
        pos = 0
        return True

    def skip_ws() -> str:
        nonlocal pos, line
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                if buf[pos] == "\n":
                    line += 1
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    def fail(msg: str) -> DataError:
        return DataError(
            f"{name}, line {line}: {msg}; the rest of the file cannot be read.",
            "Fix the JSON (a missing comma or bracket?) and try again.",
        )

    if skip_ws() == "]":
        return
    while True:
        ch = skip_ws()
        if not ch:
            raise fail("the JSON array is not closed (missing ']')")
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as exc:
                # An element cut by the buffer's end fails near the end or inside a string:
                # read on. Anything else is a real syntax error.
                incomplete = exc.pos >= len(buf) - 8 or exc.msg.startswith("Unterminated string")
                if incomplete and len(buf) - pos < MAX_ELEMENT_CHARS and more():
                    continue
                line += buf.count("\n", pos, exc.pos)
                raise fail(f"not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise fail("JSON nested too deeply") from None
        item += 1
        yield Row("item", item, value, line=line)
        line += buf.count("\n", pos, end)
        pos = end
        ch = skip_ws()
        if ch == ",":
            pos += 1
            continue
        if ch == "]":
            return
        raise fail(
            "expected ',' or ']' after an element"
            if ch
            else "the JSON array is not closed (missing ']')"
        )


# ---------------------------------------------------------------------------------------------
# CSV / TSV


def _csv_rows(text: TextFile, path: Path, delimiter: str | None) -> Iterator[Row]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long cells are normal in datasets
    if delimiter is None:
        sample = head_text(path, 65536)
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = ","
    lines = (line + "\n" for _, line in text.lines())
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(
            f"{path.name}: the header row cannot be read ({exc}).",
            "Check that the file is CSV with a header row.",
        ) from None
    if not header or not any(h.strip() for h in header):
        raise DataError(
            f"{path.name} has no header row.",
            "The first row must name the columns, e.g. prompt,response.",
        )
    header = [h.strip().lstrip("\ufeff") for h in header]
    seen = set()
    for h in header:
        if h and h in seen:
            raise DataError(
                f"{path.name}: the column name '{h}' appears twice in the header.",
                "Give every column a different name.",
            )
        seen.add(h)
    number = 1  # spreadsheet row numbers: the header is row 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            number += 1
            yield Row(
                "row",
                number,
                problem=RecordProblem(
                    "bad_row", f"cannot be read as CSV ({exc})", "Check the quotes in this row."
                ),
            )
            continue
        number += 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            yield Row(
                "row",
                number,
                problem=RecordProblem(
                    "bad_row",
                    f"has {len(cells)} cell{'s' if len(cells) != 1 else ''} but the header has {len(header)}",
                    f"Put text that contains '{delimiter}' in double quotes."
                    if delimiter != "\t"
                    else "Check for stray tabs in this row.",
                ),
            )
            continue
        yield Row("row", number, {h: c for h, c in zip(header, cells, strict=True) if h})


# ---------------------------------------------------------------------------------------------
# Plain text


def _text_rows(text: TextFile, chunk_chars: int) -> Iterator[Row]:
    """Paragraphs (blank-line separated) packed into chunks of up to `chunk_chars` characters.

    Streamed: the file comes in pieces of at most a few chunks' size (even a 50 MB line without a
    break), and a paragraph is cut as it arrives, so memory and time stay linear in the file.
    """
    chunker = _Chunker(chunk_chars)
    spaces = ""  # a line's leading whitespace, held until the line turns out not to be blank
    blank = True  # the current line has had only whitespace so far
    for n, piece, ends in text.pieces(max(chunk_chars, 4096)):
        if blank:
            if piece.strip():
                blank = False
                chunker.add_line_start(n)
                piece = spaces[:chunk_chars] + piece
                spaces = ""
            else:
                spaces += piece[: chunk_chars + 1 - len(spaces)]  # a blank run is capped
        if not blank:
            for line, chunk in chunker.add(piece):
                yield Row("line", line, {"text": chunk})
        if ends:
            if blank:
                for line, chunk in chunker.end_paragraph():
                    yield Row("line", line, {"text": chunk})
            blank, spaces = True, ""
    for line, chunk in chunker.finish():
        yield Row("line", line, {"text": chunk})


class _Chunker:
    """Cuts each paragraph into pieces of at most `limit` characters (at line breaks, then spaces,
    then anywhere) and packs the pieces into chunks, holding at most about two chunks of text."""

    def __init__(self, limit: int):
        self.limit = limit
        self.parts: list[str] = []  # pieces of the chunk being filled
        self.size = 0
        self.start: int | None = None  # the chunk's first line
        self.pending = ""  # the paragraph's text not yet cut into pieces
        self.par_start: int | None = None
        self.strip = False  # a cut happened: the next text's leading whitespace is dropped

    def add_line_start(self, n: int) -> None:
        if self.par_start is None:
            self.par_start = n
        elif not self.strip:
            self.pending += "\n"

    def add(self, text: str) -> Iterator[tuple[int, str]]:
        if self.strip:
            text = text.lstrip()
            if not text:
                return
            self.strip = False
        self.pending += text
        while len(self.pending) > self.limit:
            buf, limit = self.pending, self.limit
            cut = buf.rfind("\n", 0, limit)
            if cut <= 0:
                cut = buf.rfind(" ", 0, limit)
            if cut <= 0:
                cut = limit
            self.pending = buf[cut:].lstrip()
            self.strip = not self.pending
            yield from self._pack(buf[:cut])

    def end_paragraph(self) -> Iterator[tuple[int, str]]:
        if self.pending:
            yield from self._pack(self.pending)
        self.pending, self.par_start, self.strip = "", None, False

    def finish(self) -> Iterator[tuple[int, str]]:
        yield from self.end_paragraph()
        done = self._flush()
        if done:
            yield done

    def _pack(self, piece: str) -> Iterator[tuple[int, str]]:
        if self.parts and self.size + len(piece) + 2 > self.limit:
            done = self._flush()
            if done:
                yield done
        if self.start is None:
            self.start = self.par_start
        self.parts.append(piece)
        self.size += len(piece) + 2

    def _flush(self) -> tuple[int, str] | None:
        chunk = "\n\n".join(self.parts).strip()
        start = self.start
        self.parts, self.size, self.start = [], 0, None
        return (start, chunk) if chunk else None


# ---------------------------------------------------------------------------------------------
# Parquet


def pyarrow_parquet():
    """`pyarrow.parquet`, or a DataError that says how to get it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            "Reading Parquet files needs pyarrow, which is not installed.",
            "Install it with: pip install 'lathe[parquet]' (or pip install pyarrow), "
            "or convert the file to JSON lines.",
        ) from None
    return pq


def _parquet_rows(path: Path) -> Iterator[Row]:
    pq = pyarrow_parquet()
    try:
        pf = pq.ParquetFile(str(path))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types
        raise DataError(
            f"{path.name} cannot be read as Parquet ({exc}).",
            "Check the file, or export the data as JSON lines.",
        ) from None
    number = 0
    for batch in pf.iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            number += 1
            yield Row("row", number, value)
