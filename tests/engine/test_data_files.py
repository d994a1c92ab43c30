"""Files as people have them: encodings, line ends, empty and binary files, folders, zips, Parquet,
big JSON arrays; skip-and-report versus strict; duplicates and train/valid overlap; splitting."""

from __future__ import annotations

import json
import sys
import types
import zipfile
from pathlib import Path

import pytest

from engine.data import DataError, Options, inspect_dataset, load_splits, readers

CHAT = {
    "messages": [
        {"role": "user", "content": "Où est la café?"},
        {"role": "assistant", "content": "Ici."},
    ]
}


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def chat(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    }


def lines(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def all_records(path, **kw) -> list[dict]:
    s = load_splits(path, valid_fraction=0, **kw)
    return s.train + s.valid + s.test


# -- encodings and line ends ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding, bom",
    [
        ("utf-8", b""),
        ("utf-8", b"\xef\xbb\xbf"),
        ("utf-16-le", b"\xff\xfe"),
        ("utf-16-be", b"\xfe\xff"),
    ],
)
def test_utf8_and_utf16_with_crlf(tmp_path, encoding, bom):
    text = lines([CHAT, chat(1)]).replace("\n", "\r\n")
    path = write(tmp_path / "d.jsonl", bom + text.encode(encoding))
    assert all_records(path) == [CHAT, chat(1)]
    assert inspect_dataset(path).notes == []  # no encoding warning for these


def test_latin1_lines_are_read_with_a_warning(tmp_path):
    raw = lines([chat(0)]).encode() + json.dumps(CHAT, ensure_ascii=False).encode("latin-1") + b"\n"
    path = write(tmp_path / "d.jsonl", raw)
    assert all_records(path)[1] == CHAT  # é decoded correctly as Latin-1
    report = inspect_dataset(path)
    assert any("not valid UTF-8 (first: line 2)" in n and "Latin-1" in n for n in report.notes)
    assert report.files[0]["encoding"] == "latin-1"


def test_latin1_json_array_and_csv(tmp_path):
    path = write(tmp_path / "a.json", json.dumps([CHAT], ensure_ascii=False).encode("latin-1"))
    assert all_records(path) == [CHAT]
    assert any("read as Latin-1" in n for n in inspect_dataset(path).notes)
    path = write(tmp_path / "b.csv", "prompt,completion\ncafé,crème\n".encode("latin-1"))
    assert all_records(path) == [{"prompt": "café", "completion": "crème"}]


def test_csv_with_crlf_and_bom(tmp_path):
    path = write(tmp_path / "d.csv", b'\xef\xbb\xbfprompt,completion\r\na,b\r\n"x\r\ny",z\r\n')
    assert all_records(path) == [
        {"prompt": "a", "completion": "b"},
        {"prompt": "x\ny", "completion": "z"},
    ]


# -- empty, binary, tiny ---------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_files_are_refused_clearly(tmp_path, content):
    with pytest.raises(DataError, match="empty"):
        inspect_dataset(write(tmp_path / "d.jsonl", content))


@pytest.mark.parametrize(
    "name, head, what",
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "a PNG image"),
        ("photo.jsonl", b"\xff\xd8\xff\xe0" + b"\0" * 50, "a JPEG image"),
        ("sheet.xlsx", b"PK\x03\x04" + b"\0" * 50, "an Excel workbook"),
        ("blob.bin", bytes(range(256)) * 4, "a binary file"),
    ],
)
def test_binary_files_are_named_not_parsed(tmp_path, name, head, what):
    with pytest.raises(DataError) as err:
        inspect_dataset(write(tmp_path / name, head))
    assert f"{name} is {what}" in str(err.value) and "not a dataset" in str(err.value)


def test_one_example_is_fine_but_gets_no_validation_split(tmp_path):
    path = write(tmp_path / "one.jsonl", lines([CHAT]))
    report = inspect_dataset(path)
    assert report.splits == {"train": 1, "valid": 0, "test": 0}
    assert "Only one training example" in report.split_notes[0]


def test_nothing_trainable_is_refused_with_the_reason(tmp_path):
    path = write(tmp_path / "bad.jsonl", 'not json\n{"messages": []}\n')
    with pytest.raises(DataError) as err:
        inspect_dataset(path)
    msg = str(err.value)
    assert "Nothing to train on in bad.jsonl" in msg and "invalid JSON" in msg and "line 1" in msg


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        inspect_dataset(tmp_path / "nope.jsonl")


# -- strict mode ---------------------------------------------------------------------------------


def test_strict_stops_at_the_first_bad_record(tmp_path):
    path = write(tmp_path / "d.jsonl", lines([chat(0)]) + "{oops\n" + lines([{"messages": []}]))
    report = inspect_dataset(path)
    assert report.skipped == 2
    with pytest.raises(DataError) as err:
        inspect_dataset(path, Options(strict=True))
    assert str(err.value).startswith("d.jsonl, line 2: not valid JSON")
    assert "without --strict" in err.value.hint


# -- duplicates and overlap ----------------------------------------------------------------------


def test_duplicates_are_skipped_and_named(tmp_path):
    path = write(tmp_path / "d.jsonl", lines([chat(0), chat(1), chat(0)]))
    report = inspect_dataset(path, Options(valid_fraction=0))
    assert report.kept == 2 and report.problem_counts == {"duplicate": 1}
    assert report.problems[0]["text"].startswith(
        "d.jsonl, line 3: repeats the example at d.jsonl, line 1."
    )
    kept = inspect_dataset(path, Options(valid_fraction=0, dedupe=False))
    assert (
        kept.kept == 3
        and kept.warning_counts == {"duplicate": 1}
        and "Kept 1 example" in kept.summary
    )


def test_valid_examples_also_in_train_are_flagged(tmp_path):
    folder = tmp_path / "ds"
    write(folder / "train.jsonl", lines([chat(i) for i in range(5)]))
    write(folder / "valid.jsonl", lines([chat(2), chat(9)]))
    report = inspect_dataset(folder)
    assert report.splits == {"train": 5, "valid": 1, "test": 0}
    (p,) = report.problems
    assert p["code"] == "overlap" and p["where"] == "ds/valid.jsonl, line 1"
    assert "also in train (ds/train.jsonl, line 3)" in p["message"]


def test_load_splits_keeps_repeats_for_training_but_says_so(tmp_path):
    folder = tmp_path / "ds"
    write(folder / "train.jsonl", lines([chat(0)] * 3))
    write(folder / "valid.jsonl", lines([chat(0)]))
    s = load_splits(folder)
    assert (len(s.train), len(s.valid)) == (3, 1)
    assert any("2 duplicate" in n and "1 also in train" in n for n in s.notes)


# -- folders, zips, splits -----------------------------------------------------------------------


def test_folder_with_named_splits_in_mixed_formats(tmp_path):
    folder = tmp_path / "ds"
    write(folder / "train.jsonl", lines([chat(i) for i in range(4)]))
    write(folder / "validation.csv", "prompt,completion\nvq,va\n")
    write(folder / "test.json", json.dumps([{"instruction": "t", "output": "o"}]))
    write(folder / "README.md", "# about\n")
    s = load_splits(folder)
    assert len(s.train) == 4 and s.valid == [{"prompt": "vq", "completion": "va"}]
    assert s.test == [{"prompt": "t", "completion": "o"}]
    report = inspect_dataset(folder)
    assert report.format == "mixed" and report.container == "folder"
    assert any("Ignored files not named train/valid/test: README.md" in n for n in report.notes)


def test_folder_of_markdown_notes_is_all_training_text(tmp_path):
    folder = tmp_path / "notes"
    write(folder / "a.md", "Alpha paragraph.\n\nSecond.\n")
    write(folder / "sub" / "b.txt", "Beta.\n")
    write(folder / ".hidden.md", "secret\n")
    recs = all_records(folder)
    assert [r["text"] for r in recs] == ["Alpha paragraph.\n\nSecond.", "Beta."]


def test_zip_of_a_split_folder(tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("mydata/train.jsonl", lines([chat(i) for i in range(3)]))
        zf.writestr("mydata/valid.jsonl", lines([chat(7)]))
        zf.writestr("__MACOSX/mydata/._train.jsonl", b"\0\0junk")
    s = load_splits(archive)
    assert (len(s.train), len(s.valid)) == (3, 1)
    report = inspect_dataset(archive)
    assert report.container == "zip" and report.files[0]["name"] == "data.zip/mydata/train.jsonl"


def test_damaged_zip(tmp_path):
    with pytest.raises(DataError, match="not a readable zip"):
        inspect_dataset(write(tmp_path / "d.zip", b"PK\x03\x04garbage"))


def test_split_is_seeded_and_reproducible(tmp_path):
    path = write(tmp_path / "d.jsonl", lines([chat(i) for i in range(50)]))
    a = load_splits(path, valid_fraction=0.2, seed=1)
    b = load_splits(path, valid_fraction=0.2, seed=1)
    c = load_splits(path, valid_fraction=0.2, seed=2)
    assert a.valid == b.valid and len(a.valid) == 10 and a.valid != c.valid
    assert not {json.dumps(r) for r in a.valid} & {json.dumps(r) for r in a.train}
    report = inspect_dataset(path, Options(valid_fraction=0.2, test_fraction=0.1, seed=1))
    assert report.splits == {"train": 35, "valid": 10, "test": 5}


def test_json_object_with_its_own_splits_and_wrappers(tmp_path):
    path = write(
        tmp_path / "d.json",
        json.dumps({"train": [chat(0), chat(1)], "validation": [chat(2)]}, indent=1),
    )
    s = load_splits(path)
    assert (len(s.train), len(s.valid)) == (2, 1)
    path = write(tmp_path / "w.json", json.dumps({"version": 2, "data": [chat(0), chat(1)]}))
    assert len(all_records(path)) == 2
    path = write(tmp_path / "single.json", json.dumps(CHAT, indent=2))
    assert all_records(path) == [CHAT]


# -- JSON arrays are streamed ------------------------------------------------------------------------


def test_json_array_elements_across_buffer_boundaries(tmp_path, monkeypatch):
    rows = [chat(i) | {"note": "é" * (i % 7)} for i in range(300)]
    path = write(tmp_path / "big.json", json.dumps(rows, indent=2, ensure_ascii=False))
    from engine.data import sources

    original = sources.TextFile.chunks
    monkeypatch.setattr(sources.TextFile, "chunks", lambda self, size=1: original(self, 37))
    assert all_records(path) == [chat(i) for i in range(300)]


@pytest.mark.parametrize(
    "text, line",
    [
        ('[\n{"text": "a"},\n{"text": "b"}\n{"text": "c"}\n]', 4),
        ('[\n{"text": "a"},\n{"text": "b",}\n]', 3),
        ('[\n{"text": "a"}', 2),
    ],
)
def test_broken_json_array_names_the_line(tmp_path, text, line):
    with pytest.raises(DataError) as err:
        inspect_dataset(write(tmp_path / "a.json", text))
    assert f"a.json, line {line}:" in str(err.value) and "Fix the JSON" in str(err.value)


def test_pretty_printed_jsonl_and_jsonl_in_a_txt(tmp_path):
    assert all_records(write(tmp_path / "p.jsonl", json.dumps([CHAT], indent=2))) == [CHAT]
    assert all_records(write(tmp_path / "t.txt", lines([CHAT]))) == [CHAT]


def test_not_an_object_line(tmp_path):
    path = write(tmp_path / "d.jsonl", lines([chat(0), [1, 2], "text"]))
    report = inspect_dataset(path, Options(valid_fraction=0))
    assert [(p["where"], p["code"]) for p in report.problems] == [
        ("d.jsonl, line 2", "not_object"),
        ("d.jsonl, line 3", "not_object"),
    ]


# -- Parquet ---------------------------------------------------------------------------------------


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = write(tmp_path / "d.parquet", b"PAR1" + b"\0" * 20 + b"PAR1")
    with pytest.raises(DataError) as err:
        inspect_dataset(path)
    assert "needs pyarrow, which is not installed" in str(err.value)
    assert "pip install 'lathe[parquet]'" in str(err.value)


def test_parquet_rows_are_read_in_batches_when_pyarrow_is_there(tmp_path, monkeypatch):
    table = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(2500)]

    class Batch:
        def __init__(self, rows):
            self.rows = rows

        def to_pylist(self):
            return self.rows

    class ParquetFile:
        def __init__(self, path):
            assert Path(path).name == "train-00000-of-00001.parquet"

        def iter_batches(self, batch_size):
            for i in range(0, len(table), batch_size):
                yield Batch(table[i : i + batch_size])

    pq = types.SimpleNamespace(ParquetFile=ParquetFile)
    monkeypatch.setattr(readers, "pyarrow_parquet", lambda: pq)
    folder = tmp_path / "hf"
    write(folder / "data" / "train-00000-of-00001.parquet", b"PAR1" + b"\0" * 20 + b"PAR1")
    s = load_splits(folder, valid_fraction=0)
    assert s.train == table
    report = inspect_dataset(folder)
    assert report.files[0]["container"] == "parquet" and report.files[0]["split"] == "train"
