"""Token statistics with a real tokenizer, the token-level view, and importing into the workspace."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from engine.data import (
    DataError,
    Options,
    TokenSettings,
    import_dataset,
    inspect_dataset,
    list_datasets,
    load_report,
    load_splits,
    token_view,
)
from engine.data.tokens import TokenCounter, load_tokenizer


def chat(i: int, words: int = 3) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": " ".join(["answer"] * words) + f" {i}"},
        ]
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stories_tok(stories_path):
    return load_tokenizer(stories_path)


# -- token report ----------------------------------------------------------------------------------


def test_token_report_matches_the_encoder(tmp_path, stories_path, stories_tok):
    from engine.encode import Encoder

    rows = [chat(i, words=1 + (i * 7) % 40) for i in range(30)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    report = inspect_dataset(
        path,
        Options(valid_fraction=0),
        tokens=TokenSettings(stories_path, max_seq_length=80, batch_size=8),
    )
    t = report.tokens
    enc = Encoder(stories_tok, max_seq_length=1 << 20)
    encoded = [enc.encode(r) for r in rows]
    lengths = np.array([len(e) for e in encoded])
    s = t.splits["train"]
    assert (s.examples, s.min, s.max, s.median) == (
        30,
        lengths.min(),
        lengths.max(),
        int(np.percentile(lengths, 50, method="higher")),  # whole tokens (issue 22 item 6)
    )
    assert s.over_max == int((lengths > 80).sum()) > 0
    assert s.trained_tokens == sum(sum(e.weights[1:80]) for e in encoded)
    assert s.total_tokens == int(np.minimum(lengths, 80).sum())
    assert t.template_source == "default"  # stories260K has no chat template of its own
    assert t.steps_per_epoch == 4  # 30 examples / batch 8, rounded up
    assert sum(t.histogram["counts"]) == 30 and t.histogram["edges"][0] == lengths.min()
    text = report.to_text()
    assert "over max" in text and "steps per epoch at batch size 8" in text


def test_examples_that_train_nothing_after_truncation_are_flagged(tmp_path, stories_path):
    long_prompt = {
        "messages": [
            {"role": "user", "content": "word " * 300},
            {"role": "assistant", "content": "yes"},
        ]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [chat(0), long_prompt, chat(1)])
    report = inspect_dataset(
        path, Options(valid_fraction=0), tokens=TokenSettings(stories_path, max_seq_length=64)
    )
    assert report.kept == 2 and report.tokens.zero_trained == 1
    (p,) = report.problems
    assert p["code"] == "zero_trained" and p["where"] == "d.jsonl, line 2"
    assert "truncation cuts it off" in p["message"] and "max_seq_length" in p["hint"]
    with pytest.raises(DataError, match="line 2: trains 0 tokens"):
        inspect_dataset(
            path, Options(strict=True), tokens=TokenSettings(stories_path, max_seq_length=64)
        )


@pytest.mark.slow
def test_worker_processes_give_the_same_numbers(tmp_path, stories_path, stories_tok, monkeypatch):
    from engine.data import tokens

    rows = [chat(i, words=1 + i % 13) for i in range(120)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    one = inspect_dataset(
        path,
        counter=TokenCounter(stories_path, workers=1, max_seq_length=64),
        tokens=TokenSettings(stories_path, max_seq_length=64),
    )
    monkeypatch.setattr(tokens, "INLINE_EXAMPLES", 10)
    monkeypatch.setattr(tokens, "BATCH", 16)
    two = inspect_dataset(
        path,
        counter=TokenCounter(stories_path, workers=2, max_seq_length=64),
        tokens=TokenSettings(stories_path, max_seq_length=64),
    )
    assert one.tokens == two.tokens and one.splits == two.splits


def test_unknown_model_is_one_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat(0)])
    with pytest.raises(DataError, match="Model .*nope was not found on this computer"):
        inspect_dataset(path, tokens=TokenSettings(tmp_path / "nope"))
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(DataError, match="Cannot load a tokenizer"):
        inspect_dataset(path, tokens=TokenSettings(tmp_path / "empty-model"))


# -- token view ------------------------------------------------------------------------------------


def test_token_view_marks_exactly_the_answer_as_trained(tmp_path, stories_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Hey", "completion": "Yo"},
            {"prompt": "Hi there", "completion": "Hello friend"},
        ],
    )
    view = token_view(path, stories_path, 1)
    assert view.where == "d.jsonl, line 2"
    assert "".join(p.text for p in view.pieces) == view.text
    trained = "".join(p.text for p in view.pieces if p.trained)
    assert trained == "Hello friend</s>"
    assert view.trained_tokens == sum(p.trained for p in view.pieces[1:])
    with pytest.raises(DataError, match="no example 5: the dataset has 2 usable"):
        token_view(path, stories_path, 5)


def test_token_view_with_a_chatml_model_and_a_split(tmp_path, tiny_chat_model):
    path = write_jsonl(tmp_path / "d.jsonl", [chat(i) for i in range(10)])
    view = token_view(path, tiny_chat_model, 0, split="valid")
    assert view.template_source == "model" and "<|im_start|>user" in view.text
    trained = "".join(p.text for p in view.pieces if p.trained)
    masked = "".join(p.text for p in view.pieces if not p.trained)
    assert (
        trained.startswith("answer answer answer")
        and "question" in masked
        and "question" not in trained
    )


# -- import into the workspace ---------------------------------------------------------------------


def test_import_copies_normalised_splits_and_metadata(tmp_path, lathe_home):
    path = tmp_path / "My Data.csv"
    path.write_text(
        "question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(20)), encoding="utf-8"
    )
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    report = import_dataset(path, name="support")
    folder = Path(report.dataset_path)
    assert folder.parent == lathe_home / "datasets" and report.dataset_id.split("-", 2)[
        2
    ].startswith("support")
    train = [json.loads(x) for x in (folder / "train.jsonl").read_text().splitlines()]
    valid = [json.loads(x) for x in (folder / "valid.jsonl").read_text().splitlines()]
    assert (len(train), len(valid)) == (18, 2) and (folder / "test.jsonl").read_text() == ""
    assert train[0] == {"prompt": "q0", "completion": "a0"}
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["original"] == {
        "name": "My Data.csv",
        "path": str(path.resolve()),
        "size_bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert meta["report"]["splits"] == {"train": 18, "valid": 2, "test": 0}
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # the original is untouched
    assert not [p for p in (lathe_home / "datasets").iterdir() if p.name.startswith(".")]

    again = import_dataset(path, name="support")
    assert again.reused and again.dataset_id == report.dataset_id
    other = import_dataset(path, Options(seed=5))
    assert not other.reused and other.dataset_id != report.dataset_id
    assert {d.id for d in list_datasets()} == {report.dataset_id, other.dataset_id}
    assert load_report(report.dataset_id).splits == report.splits

    # Training reads an imported dataset by id or by folder, with the split it was imported with.
    for ref in (report.dataset_id, folder):
        s = load_splits(ref, seed=99)
        assert (s.train, s.valid) == (train, valid)


def test_failed_import_leaves_nothing_behind(tmp_path, lathe_home):
    path = tmp_path / "bad.jsonl"
    path.write_text("nope\n", encoding="utf-8")
    with pytest.raises(DataError):
        import_dataset(path)
    assert list((lathe_home / "datasets").iterdir()) == []


def test_import_with_a_model_leaves_out_zero_trained_examples(tmp_path, stories_path):
    long_prompt = {
        "messages": [{"role": "user", "content": "w " * 400}, {"role": "assistant", "content": "x"}]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [chat(i) for i in range(5)] + [long_prompt])
    report = import_dataset(
        path, Options(valid_fraction=0), tokens=TokenSettings(stories_path, max_seq_length=64)
    )
    lines = Path(report.dataset_path, "train.jsonl").read_text().splitlines()
    assert len(lines) == 5 and report.tokens.zero_trained == 1


def test_unknown_dataset_id(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits("20990101-000000-nothing-0000")
