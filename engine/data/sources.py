"""Finding the files of a dataset and reading their bytes as text, one line at a time.

A dataset is a file, a folder (with train/valid/test files, or any number of files that are all
training data) or a `.zip` of either. Text is streamed: nothing here holds more than one line (or
one read buffer) of a file in memory.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.data.problems import DataError
from engine.workspace import scratch

DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".txt", ".md", ".markdown", ".parquet"}
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "eval": "valid",
    "test": "test",
    "testing": "test",
}
SPLITS = ("train", "valid", "test")
_SPLIT_PREFIX = re.compile(r"^(train|training|validation|valid|val|dev|eval|test|testing)(?![a-z])")

# Files people drop by mistake, recognised by their first bytes or their suffix.
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"SQLite format 3", "an SQLite database"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office document"),
)
_OFFICE = {
    ".xlsx": "an Excel workbook",
    ".xls": "an Excel workbook",
    ".numbers": "a Numbers file",
    ".docx": "a Word document",
    ".ods": "a spreadsheet",
    ".pages": "a Pages document",
}
ZIP_MAX_BYTES = 20 * 1024**3
ZIP_MAX_RATIO = 200  # a higher compression ratio than this is a zip bomb, not a dataset


@dataclass
class SourceFile:
    path: Path
    name: str  # what messages call it: relative to the dataset root, or the file name
    split: str  # "train", "valid" or "test"


def split_of(path: Path) -> str | None:
    """The split a file or folder name declares ("train.jsonl", "validation-0001.parquet", "dev/")."""
    m = _SPLIT_PREFIX.match(
        path.stem.lower() if path.is_file() or path.suffix else path.name.lower()
    )
    return SPLIT_NAMES[m.group(1)] if m else None


def describe_binary(path: Path, head: bytes) -> str | None:
    """What a non-text file most likely is ("a PNG image"), or None when it may be text."""
    office = _OFFICE.get(path.suffix.lower())
    if office:
        return office
    if head.startswith(b"PAR1") or path.suffix.lower() == ".parquet":
        return None  # binary, but a format the readers know
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return None
    if b"\x00" in head[:8192]:
        return "a binary file (or UTF-16 text without a byte-order mark)"
    return None


def is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def is_parquet(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def discover(
    root: Path, display_root: str | None = None, notes: list[str] | None = None
) -> list[SourceFile]:
    """The data files under `root` with the split each belongs to.

    In a folder, files (or sub-folders) named for a split are used and everything else is listed as
    ignored; a folder with no split names is all training data (a folder of notes, say).
    """
    notes = notes if notes is not None else []
    display_root = shown(display_root) if display_root else None
    if root.is_file():
        return [SourceFile(root, display_root or shown(root.name), "train")]
    outside: list[str] = []
    files = [p for p in files_in(root, outside) if not _hidden(p.relative_to(root))]
    if outside:
        listed = ", ".join(shown(o) for o in outside[:5]) + (" ..." if len(outside) > 5 else "")
        notes.append(
            f"Skipped links that point outside {display_root or shown(root.name)}: {listed}. Only "
            "files inside the folder you chose are read."
        )
    data = [p for p in files if p.suffix.lower() in DATA_SUFFIXES]
    if not data:
        names = ", ".join(shown(p.name) for p in files[:5]) or "nothing"
        raise DataError(
            f"{display_root or shown(root.name)} has no data files (found {names}).",
            "Use .jsonl, .json, .csv, .tsv, .txt, .md or .parquet files.",
        )
    named = []
    for p in data:
        rel = p.relative_to(root)
        split = next((s for s in (split_of(Path(part)) for part in rel.parts[:-1]) if s), None)
        split = split or split_of(p)
        if split:
            named.append(SourceFile(p, _display(display_root, rel), split))
    if named:
        used = {s.path for s in named}
        ignored = [shown(p.relative_to(root).as_posix()) for p in data if p not in used]
        if ignored:
            listed = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
            notes.append(f"Ignored files not named train/valid/test: {listed}.")
        if not any(s.split == "train" for s in named):
            raise DataError(
                f"{display_root or shown(root.name)} has {', '.join(s.name for s in named)} "
                "but no training file.",
                "Add a train file (train.jsonl, for example) to the folder.",
            )
        return named
    return [SourceFile(p, _display(display_root, p.relative_to(root)), "train") for p in data]


def files_in(root: Path, outside: list[str] | None = None) -> list[Path]:
    """The files under the folder `root`, sorted. A symbolic link is followed only when its target
    lies inside `root`; links that lead out of it are left out (and listed in `outside`, by their
    path relative to `root`), so a dropped folder can never pull in /etc/passwd."""
    top = root.resolve()
    found = []
    for p in root.rglob("*"):
        if p.is_symlink():
            target = p.resolve()
            if target != top and not target.is_relative_to(top):
                if outside is not None:
                    outside.append(p.relative_to(root).as_posix())
                continue
        if p.is_file():
            found.append(p)
    return sorted(found)


def _display(root_name: str | None, rel: Path) -> str:
    return shown(f"{root_name}/{rel.as_posix()}" if root_name else rel.as_posix())


def shown(name: str) -> str:
    """A file name as messages show it: bytes that are not UTF-8 (a name from another system) as
    \\x escapes, so the name can be printed and saved (it cannot be encoded as it is)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace") if _undecodable(name) else name


def _undecodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _hidden(rel: Path) -> bool:
    return any(part.startswith((".", "__MACOSX", "~$")) for part in rel.parts)


@contextmanager
def unpacked(path: Path) -> Iterator[Path]:
    """A `.zip` extracted into a temporary folder, removed afterwards."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(
            f"{path.name} is not a readable zip archive ({exc}).",
            "Re-create the archive, or import the files inside it directly.",
        ) from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir() and not _hidden(Path(m.filename))]
        total = sum(m.file_size for m in members)
        packed = max(1, sum(m.compress_size for m in members))
        if total > ZIP_MAX_BYTES or (total > 100 * 1024**2 and total / packed > ZIP_MAX_RATIO):
            raise DataError(
                f"{path.name} would unpack to {total / 1024**3:.1f} GB, which is not a "
                "plausible dataset.",
                "Unpack it yourself and import the data files.",
            )
        # Unpacked inside the workspace (tmp/lathe-zip-*), never the system temp folder; what a
        # killed import leaves there is tidied at the next start (workspace.tidy).
        with scratch("zip") as tmp:
            try:
                for m in members:
                    # zipfile.extract strips absolute paths and "..", so members stay inside tmp.
                    zf.extract(m, tmp)
                yield tmp
            except zipfile.BadZipFile as exc:
                raise DataError(
                    f"{path.name} is damaged ({exc}).", "Re-create the archive."
                ) from None


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, or of a folder's data files (the ones `discover` reads: names and
    contents, in a stable order). Files the import ignores are never read."""
    h = hashlib.sha256()
    if path.is_file():
        _hash_file(h, path)
        return h.hexdigest()
    for p in sorted(s.path for s in discover(path)):
        h.update(os.fsencode(p.relative_to(path).as_posix()) + b"\0")
        _hash_file(h, p)
    return h.hexdigest()


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in files_in(path))


# ---------------------------------------------------------------------------------------------
# Text


class TextFile:
    """Lines of a text file, decoded by its byte-order mark: UTF-8 (with or without), UTF-16.

    Without a BOM each line is decoded as UTF-8, and a line that is not valid UTF-8 is decoded as
    Latin-1 and counted in `latin1_lines`, so one stray byte neither stops the import nor goes
    unreported. Line ends (LF or CRLF) are stripped.
    """

    def __init__(self, path: Path):
        self.path = path
        self.latin1_lines = 0
        self.first_latin1_line = 0
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head.startswith(codecs.BOM_UTF8):
            self.encoding = "utf-8-sig"
        elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            self.encoding = "utf-16"
        else:
            self.encoding = "utf-8"

    def lines(self) -> Iterator[tuple[int, str]]:
        """(line number from 1, text without its line end)."""
        if self.encoding == "utf-16":
            with open(self.path, encoding="utf-16", errors="replace", newline="") as fh:
                for n, line in enumerate(fh, 1):
                    yield n, line.rstrip("\r\n")
            return
        with open(self.path, "rb") as fh:
            if self.encoding == "utf-8-sig":
                fh.read(3)
            for n, raw in enumerate(fh, 1):
                yield n, self._decode(n, raw.rstrip(b"\r\n"))

    def pieces(self, size: int) -> Iterator[tuple[int, str, bool]]:
        """(line number, text, whether the line ends here): the lines of `lines()`, but a line
        longer than about `size` characters comes in several pieces, so no line is held whole.

        A line that turns out not to be valid UTF-8 is read as Latin-1 from the bad piece on (the
        whole line when it is one piece, as in `lines()`)."""
        if self.encoding == "utf-16":
            # Text mode reads CR, LF and CRLF as line ends here, as `lines()` does.
            with open(self.path, encoding="utf-16", errors="replace", newline="") as fh:
                n = 1
                while piece := fh.readline(size):
                    ends = piece.endswith(("\n", "\r"))
                    yield n, piece.rstrip("\r\n") if ends else piece, ends
                    n += ends
            return
        with open(self.path, "rb") as fh:
            if self.encoding == "utf-8-sig":
                fh.read(3)
            decoder = codecs.getincrementaldecoder("utf-8")()
            latin1 = False
            for n, raw, ends in _split_pieces(iter(lambda: fh.readline(size), b"")):
                if latin1:
                    text = raw.decode("latin-1")
                else:
                    pending = decoder.getstate()[0]
                    try:
                        text = decoder.decode(raw, final=ends)
                    except UnicodeDecodeError:
                        latin1 = True
                        self.latin1_lines += 1
                        self.first_latin1_line = self.first_latin1_line or n
                        text = (pending + raw).decode("latin-1")
                yield n, text, ends
                if ends:
                    decoder.reset()
                    latin1 = False

    def _decode(self, n: int, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.latin1_lines += 1
            self.first_latin1_line = self.first_latin1_line or n
            return raw.decode("latin-1")

    def chunks(self, size: int = 1 << 20) -> Iterator[str]:
        """The decoded text in pieces of about `size` characters, for parsers that need more than
        a line at a time. A file that is not valid UTF-8 throughout is read as Latin-1."""
        if self.encoding == "utf-16":
            with open(self.path, encoding="utf-16", errors="replace") as fh:
                while chunk := fh.read(size):
                    yield chunk
            return
        encoding = self.encoding
        if not self._valid(encoding, size):
            encoding = "latin-1"
            self.latin1_lines = -1  # the whole file
        decoder = codecs.getincrementaldecoder(encoding)()
        with open(self.path, "rb") as fh:
            while raw := fh.read(size):
                yield decoder.decode(raw)
            yield decoder.decode(b"", final=True)

    def _valid(self, encoding: str, size: int) -> bool:
        # A quick pass first (decoding runs at memory speed), so a bad byte near the end cannot
        # surface after half the records have been handed out.
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            with open(self.path, "rb") as fh:
                while raw := fh.read(size):
                    decoder.decode(raw)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
        return True

    def encoding_note(self, name: str) -> str | None:
        if self.latin1_lines == -1:
            return (
                f"{name} is not valid UTF-8; it was read as Latin-1. Check accented letters, "
                "or save the file as UTF-8."
            )
        if self.latin1_lines:
            return (
                f"{name}: {self.latin1_lines} line(s) are not valid UTF-8 (first: line "
                f"{self.first_latin1_line}); they were read as Latin-1. Check accented "
                "letters, or save the file as UTF-8."
            )
        return None


def _split_pieces(reads: Iterator[bytes]) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, piece, ends the line) from `readline(size)` results, without the line ends
    (LF, CRLF, and any CRs before them, as `lines()` strips them)."""
    n, crs, open_line = 1, 0, False
    for piece in reads:
        ends = piece.endswith(b"\n")
        body = piece[:-1] if ends else piece
        kept = body.rstrip(b"\r")
        if kept:
            while crs:  # CRs held back from the last read sit inside the line after all
                k = min(crs, 1 << 16)
                yield n, b"\r" * k, False
                crs -= k
            yield n, kept, ends
        # CRs at the end of a read may end the line (CRLF split between reads): hold them back.
        crs = 0 if ends else crs + len(body) - len(kept)
        if ends and not kept:
            yield n, b"", True
        open_line = not ends
        n += ends
    if open_line:  # the last line has no line end
        yield n, b"", True


def head_text(path: Path, size: int = 65536) -> str:
    """The start of a text file, decoded leniently (for sniffing formats)."""
    with open(path, "rb") as fh:
        raw = fh.read(size)
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="ignore")
    return raw.decode("utf-8-sig", errors="replace")
