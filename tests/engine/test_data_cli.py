"""`python -m engine data inspect|import|show|list`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]


def chat(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    }


def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text(
        "".join(json.dumps(chat(i)) + "\n" for i in range(10)) + "{broken\n", encoding="utf-8"
    )
    return path


def test_inspect_prints_a_readable_report(tmp_path, capsys):
    assert main(["data", "inspect", str(data_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "Format: OpenAI chat (messages)" in out
    assert "Examples: 10 of 11 records kept (train 9, valid 1, test 0)" in out
    assert "chat.jsonl, line 11: not valid JSON" in out


def test_inspect_json_with_a_model(tmp_path, capsys, stories_path):
    assert (
        main(
            [
                "data",
                "inspect",
                str(data_file(tmp_path)),
                "--model",
                str(stories_path),
                "--batch-size",
                "3",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["splits"] == {"train": 9, "valid": 1, "test": 0}
    assert report["tokens"]["steps_per_epoch"] == 3
    assert report["problems"][0]["where"] == "chat.jsonl, line 11"


def test_import_then_list_then_show_by_id(tmp_path, capsys, stories_path):
    path = data_file(tmp_path)
    assert main(["data", "import", str(path), "--name", "demo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset_id"] and not report["reused"]
    assert main(["data", "import", str(path), "--name", "demo"]) == 0
    assert f"Already imported as {report['dataset_id']}" in capsys.readouterr().out
    assert main(["data", "list"]) == 0
    assert report["dataset_id"] in capsys.readouterr().out
    assert (
        main(
            [
                "data",
                "show",
                report["dataset_id"],
                "--model",
                str(stories_path),
                "--index",
                "2",
                "--color",
                "never",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "/train.jsonl, line 3)" in out and "[[answer 2</s>]]" in out


def test_show_colours_trained_and_masked_tokens(tmp_path, capsys, stories_path):
    assert (
        main(
            ["data", "show", str(data_file(tmp_path)), "-m", str(stories_path), "--color", "always"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "\x1b[30;48;5;114m" in out or "\x1b[30;48;5;150m" in out  # trained
    assert "\x1b[38;5;250;48;5;236m" in out  # masked
    assert "Legend:" in out


def test_errors_are_one_sentence_and_exit_non_zero(tmp_path):
    png = tmp_path / "cat.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "data", "inspect", str(png)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"LATHE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "lathe-engine: cat.png is a PNG image, not a dataset. Drop a .jsonl, .json, "
        ".csv, .tsv, .txt, .md or .parquet file."
    )
    assert "Traceback" not in proc.stderr


def test_strict_flag_and_map_flag(tmp_path, capsys):
    assert main(["data", "inspect", str(data_file(tmp_path)), "--strict"]) == 1
    assert "chat.jsonl, line 11: not valid JSON" in capsys.readouterr().err
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\nhello,world\nhi,there\n", encoding="utf-8")
    assert main(["data", "inspect", str(csv), "--map", "prompt=a,completion=b", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mapping"] == {"prompt": "a", "completion": "b"} and report["kept"] == 2


def test_import_holds_out_a_test_split_when_the_data_has_none(tmp_path, capsys):
    """issue 22 item 2: with no test split, `data import` holds one out by default (5%, from 20
    examples up), so evaluation scores examples training never saw; --test-fraction 0 turns it off."""
    from engine.data import load_splits
    from engine.evaluate.prompts import split_prompts

    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(40)), encoding="utf-8")
    assert main(["data", "import", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"] == {"train": 34, "valid": 4, "test": 2}
    assert any(
        "No test split" in n and "evaluation scores them" in n for n in report["split_notes"]
    )
    splits = load_splits(report["dataset_id"])
    assert len(splits.test) == 2
    held = {json.dumps(r, sort_keys=True) for r in splits.test}
    assert not held & {json.dumps(r, sort_keys=True) for r in splits.train + splits.valid}

    class Config:  # what split_prompts reads of a run's config
        class data:
            path = report["dataset_path"]
            valid_fraction = 0.1
            prompt_feature, completion_feature = "prompt", "completion"
            chat_feature, text_feature = "messages", "text"

        class training:
            seed = 0

    items, split = split_prompts(Config)
    assert split == "test" and len(items) == 2  # evaluation no longer scores the validation split

    assert main(["data", "import", str(path), "--test-fraction", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["test"] == 0
    # Too few examples to spare one: none is held out, and the note says so.
    assert main(["data", "import", str(data_file(tmp_path)), "--json"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert small["splits"]["test"] == 0
    assert any("too few to hold one out" in n for n in small["split_notes"])


def _progress_and_result(out: str) -> tuple[list[dict], dict]:
    lines = out.splitlines()
    progress = [json.loads(x)["progress"] for x in lines if x.startswith('{"progress"')]
    rest = "\n".join(x for x in lines if not x.startswith('{"progress"'))
    return progress, json.loads(rest)


def test_import_progress_lines_come_before_the_report(tmp_path, capsys, stories_path):
    """Issue 17: the Data page runs `data import --progress --json` in a worker process and shows
    its progress lines (stage, examples read of about how many) while the import runs."""
    path = data_file(tmp_path)
    args = ["data", "import", str(path), "--model", str(stories_path), "--progress", "--json"]
    assert main(args) == 0
    progress, report = _progress_and_result(capsys.readouterr().out)
    stages = [p["stage"] for p in progress]
    assert stages[0] == "Counting records…" and "Loading the tokenizer…" in stages, stages
    assert stages[-1] == "Writing the dataset…", stages
    # 11 lines in the file (the estimate); 10 examples read, the broken line is a problem.
    assert progress[-1]["estimate"] == 11 and progress[-1]["examples"] == 10, progress
    assert 0 < progress[-1]["fraction"] < 1
    assert report["dataset_id"] and report["tokens"]["model"] == str(stories_path)


def test_import_or_demo_model_uses_the_demo_model_when_the_model_is_not_here(tmp_path, capsys):
    """Issue 17: the app measures tokens with the Train page's model, or the demo model when that
    is not on this Mac (engine.demo.reference_model), now inside the import's worker process."""
    from engine.demo import reference_model

    path = data_file(tmp_path)
    args = ["data", "import", str(path), "--model", "no/such-model", "--or-demo-model", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"]["model"] == str(reference_model(None))
    assert reference_model(str(tmp_path)) == tmp_path  # a folder is taken as it is


def test_lengths_are_the_training_examples_token_lengths(tmp_path, capsys, stories_path):
    """Issue 17: the Train page's memory estimate gets its data's token lengths from `data
    lengths` in a worker process: the same numbers engine.training.memory.train_lengths computes."""
    from engine.config import RunConfig
    from engine.training.memory import train_lengths

    cfg = RunConfig()
    cfg.model.path = str(stories_path)
    cfg.data.path = str(data_file(tmp_path))
    cfg.data.max_seq_length = 256
    config = tmp_path / "config.yaml"
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    assert main(["data", "lengths", "--config", str(config), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lengths"] == train_lengths(cfg, stories_path)
    assert out["examples"] == len(out["lengths"]) == 9 and max(out["lengths"]) <= 256


def test_map_takes_a_json_object_for_column_names_with_commas(tmp_path, capsys):
    """The Data page passes its column mapping as JSON, so that names with commas survive."""
    csv = tmp_path / "x.csv"
    csv.write_text('"question, asked",b\nhello,world\nhi,there\n', encoding="utf-8")
    mapping = json.dumps({"prompt": "question, asked", "completion": "b"})
    assert main(["data", "inspect", str(csv), "--map", mapping, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mapping"] == {"prompt": "question, asked", "completion": "b"}
    assert report["kept"] == 2
