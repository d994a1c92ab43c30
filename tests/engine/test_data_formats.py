"""Every supported record format normalises to the shapes training reads; broken records are
skipped with a message that names the line, the field, what is wrong and how to fix it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.data import DataError, Options, inspect_dataset, load_splits


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def records(path: Path, **options) -> list[dict]:
    """All kept examples in file order (nothing held out)."""
    from engine.data.importer import _run

    out: list[dict] = []
    _run(path, Options(valid_fraction=0, **options), None, lambda ex: out.append(ex.record))
    return out


def problem_texts(report) -> list[str]:
    return [p["text"] for p in report.problems]


# -- OpenAI chat ---------------------------------------------------------------------------------


def test_openai_chat_with_tools_tool_calls_and_weights(tmp_path):
    tools = [
        {"type": "function", "function": {"name": "balance", "parameters": {"type": "object"}}}
    ]
    row = {
        "tools": tools,
        "messages": [
            {"role": "system", "content": "You are a bank."},
            {"role": "user", "content": "My balance?"},
            {
                "role": "assistant",
                "content": None,
                "weight": 0,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "balance", "arguments": '{"acct": 7}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42 EUR"},
            {"role": "assistant", "content": "You have 42 EUR.", "weight": 1},
        ],
    }
    (rec,) = records(jsonl(tmp_path / "chat.jsonl", [row]))
    assert rec["tools"] == tools
    call = rec["messages"][2]
    assert call["content"] == "" and call["weight"] == 0
    # OpenAI's string arguments become the object chat templates expect.
    assert call["tool_calls"][0]["function"] == {"name": "balance", "arguments": {"acct": 7}}
    assert rec["messages"][3] == {"role": "tool", "content": "42 EUR", "tool_call_id": "c1"}
    assert rec["messages"][4]["weight"] == 1


def test_openai_content_parts_are_joined_and_images_refused(tmp_path):
    ok = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
            },
            {"role": "assistant", "content": "Hello"},
        ]
    }
    img = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": "A cat"},
        ]
    }
    path = jsonl(tmp_path / "c.jsonl", [ok, img])
    assert records(path)[0]["messages"][0]["content"] == "Hi there"
    report = inspect_dataset(path)
    assert report.problems[0]["field"] == "messages[0].content[0]"
    assert "'image_url' part" in report.problems[0]["message"]


@pytest.mark.parametrize(
    "messages, code, field, words",
    [
        ([{"role": "user", "content": "hi"}], "no_assistant", "messages", "no assistant turn"),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ],
            "role_order",
            "messages[1].role",
            "two user messages in a row",
        ),
        (
            [
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ],
            "role_order",
            "messages[0].role",
            "starts with the assistant",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "system", "content": "s"},
            ],
            "role_order",
            "messages[2].role",
            "system message comes after",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "tool", "content": "b"},
                {"role": "assistant", "content": "c"},
            ],
            "role_order",
            "messages[1].role",
            "does not follow an assistant tool call",
        ),
        (
            [{"role": "user", "content": 5}, {"role": "assistant", "content": "b"}],
            "not_text",
            "messages[0].content",
            "is a number, not text",
        ),
        (
            [{"role": "user", "content": "  "}, {"role": "assistant", "content": "b"}],
            "empty_field",
            "messages[0].content",
            "is empty",
        ),
        (
            [{"role": "wizard", "content": "a"}, {"role": "assistant", "content": "b"}],
            "bad_role",
            "messages[0].role",
            "unknown role 'wizard'",
        ),
        (
            [{"content": "a"}, {"role": "assistant", "content": "b"}],
            "missing_field",
            "messages[0].role",
            "has no role",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}],
            "nothing_trained",
            "messages",
            "weight 0",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b", "weight": 0.5},
            ],
            "bad_value",
            "messages[1].weight",
            "must be 0 or 1",
        ),
    ],
)
def test_broken_chat_records_are_skipped_with_a_precise_message(
    tmp_path, messages, code, field, words
):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = jsonl(tmp_path / "d.jsonl", [good, {"messages": messages}])
    report = inspect_dataset(path, Options(valid_fraction=0))
    assert report.kept == 1 and report.skipped == 1
    (p,) = report.problems
    assert (p["code"], p["field"], p["where"]) == (code, field, "d.jsonl, line 2")
    assert words in p["message"]
    assert p["hint"]  # every problem says what to do
    assert p["text"].startswith(f"d.jsonl, line 2, field '{field}': ")


def test_messages_that_is_not_a_list(tmp_path):
    path = jsonl(
        tmp_path / "d.jsonl",
        [
            {"messages": "hello"},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        ],
    )
    (p,) = inspect_dataset(path).problems
    assert p["field"] == "messages" and "is str, not a list" in p["message"]


# -- prompt/completion ---------------------------------------------------------------------------


def test_prompt_completion_and_a_system_column_becomes_chat(tmp_path):
    path = jsonl(
        tmp_path / "pc.jsonl",
        [
            {"prompt": "2+2?", "completion": "4"},
            {"prompt": "Hi", "completion": "Hello", "system": "Be brief."},
        ],
    )
    a, b = records(path)
    assert a == {"prompt": "2+2?", "completion": "4"}
    assert b == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    report = inspect_dataset(path)
    assert report.format == "completion"
    assert "have 'prompt' and 'completion' fields" in report.format_reason


def test_prompt_completion_problems(tmp_path):
    path = jsonl(
        tmp_path / "pc.jsonl",
        [
            {"prompt": "ok", "completion": "fine"},
            {"prompt": "no answer"},
            {"prompt": "x", "completion": ""},
            {"prompt": ["x"], "completion": "y"},
        ],
    )
    report = inspect_dataset(path, Options(valid_fraction=0))
    got = [(p["where"], p["field"], p["code"]) for p in report.problems]
    assert got == [
        ("pc.jsonl, line 2", "completion", "missing_field"),
        ("pc.jsonl, line 3", "completion", "empty_field"),
        ("pc.jsonl, line 4", "prompt", "not_text"),
    ]
    assert report.summary.startswith("Skipped 3 examples:")


# -- Alpaca --------------------------------------------------------------------------------------


def test_alpaca_json_array_with_input_system_and_history(tmp_path):
    rows = [
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {
            "instruction": "And now?",
            "output": "bye",
            "system": "Be polite.",
            "history": [["hello", "hi there"]],
        },
    ]
    path = write(tmp_path / "alpaca.json", json.dumps(rows, indent=2))
    a, b, c = records(path)
    assert a == {"prompt": "Translate\n\nchat", "completion": "cat"}
    assert b == {"prompt": "Say hi", "completion": "hi"}
    assert [m["role"] for m in c["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert c["messages"][1]["content"] == "hello" and c["messages"][4]["content"] == "bye"
    report = inspect_dataset(path)
    assert report.format == "alpaca" and "JSON array" in report.format_reason


def test_alpaca_jsonl_and_its_problems(tmp_path):
    path = jsonl(
        tmp_path / "a.jsonl",
        [
            {"instruction": "Do", "output": "done"},
            {"instruction": "", "input": "", "output": "x"},
            {"instruction": "Do", "output": "x", "history": [["only one"]]},
        ],
    )
    report = inspect_dataset(path, Options(valid_fraction=0))
    assert report.kept == 1
    assert [(p["field"], p["code"]) for p in report.problems] == [
        ("instruction", "empty_field"),
        ("history[0]", "bad_value"),
    ]


# -- ShareGPT ------------------------------------------------------------------------------------


def test_sharegpt_roles_function_calls_and_observations(tmp_path):
    row = {
        "system": "Bank bot.",
        "tools": json.dumps([{"name": "balance", "parameters": {}}]),
        "conversations": [
            {"from": "human", "value": "Balance?"},
            {
                "from": "function_call",
                "value": json.dumps({"name": "balance", "arguments": {"id": 1}}),
            },
            {"from": "observation", "value": "42"},
            {"from": "gpt", "value": "You have 42."},
        ],
    }
    path = jsonl(tmp_path / "sg.jsonl", [row])
    (rec,) = records(path)
    assert [m["role"] for m in rec["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert rec["messages"][2]["tool_calls"][0]["function"] == {
        "name": "balance",
        "arguments": {"id": 1},
    }
    assert rec["tools"] == [{"type": "function", "function": {"name": "balance", "parameters": {}}}]
    assert inspect_dataset(path).format == "sharegpt"


def test_sharegpt_json_array_and_bad_speaker(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
        {"conversations": [{"from": "alien", "value": "a"}, {"from": "gpt", "value": "b"}]},
        {"conversations": [{"from": "human", "value": "a"}]},
    ]
    path = write(tmp_path / "sg.json", json.dumps(rows))
    report = inspect_dataset(path, Options(valid_fraction=0))
    assert report.kept == 1
    assert [(p["where"], p["code"]) for p in report.problems] == [
        ("sg.json, item 2 (line 1)", "bad_role"),
        ("sg.json, item 3 (line 1)", "no_assistant"),
    ]
    assert "unknown speaker 'alien'" in report.problems[0]["message"]


# -- text ----------------------------------------------------------------------------------------


def test_text_jsonl(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", [{"text": "Once upon a time."}, {"text": ""}, {"text": 3}])
    report = inspect_dataset(path, Options(valid_fraction=0))
    assert report.format == "text" and report.kept == 1
    assert records(path) == [{"text": "Once upon a time."}]


def test_text_files_are_cut_at_paragraph_breaks(tmp_path):
    paragraphs = [f"Paragraph {i}. " + " ".join(["word"] * 30) for i in range(10)]
    path = write(tmp_path / "notes.md", "\n\n".join(paragraphs) + "\n")
    recs = records(path, text_chunk_chars=400)
    assert all(set(r) == {"text"} and len(r["text"]) <= 400 for r in recs)
    joined = "\n\n".join(r["text"] for r in recs)
    assert joined == "\n\n".join(p.strip() for p in paragraphs)  # nothing lost, nothing reordered
    report = inspect_dataset(path, Options(text_chunk_chars=400))
    assert report.format == "text" and "paragraph breaks" in report.format_reason


def test_a_single_huge_paragraph_is_split_too(tmp_path):
    path = write(tmp_path / "one.txt", "x" * 1000 + " " + "y" * 1000)
    recs = records(path, text_chunk_chars=600)
    assert all(len(r["text"]) <= 600 for r in recs)
    assert "".join(r["text"] for r in recs).replace(" ", "") == "x" * 1000 + "y" * 1000


# -- CSV / TSV and mapping -----------------------------------------------------------------------


def test_csv_columns_are_mapped_automatically(tmp_path):
    path = write(
        tmp_path / "qa.csv",
        'Question,Answer,id\n"What, exactly?","This, exactly.",1\n"multi\nline",ok,2\n',
    )
    # Other columns (id) are not part of a normalised record.
    assert records(path) == [
        {"prompt": "What, exactly?", "completion": "This, exactly."},
        {"prompt": "multi\nline", "completion": "ok"},
    ]
    report = inspect_dataset(path)
    assert report.mapping == {"prompt": "Question", "completion": "Answer"}
    assert "'Question' as prompt" in report.format_reason


def test_tsv_with_system_prompt_response(tmp_path):
    path = write(tmp_path / "d.tsv", "system\tprompt\tresponse\nBe nice\tHi\tHello\n")
    (rec,) = records(path)
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]


def test_csv_needs_a_mapping_when_names_are_unclear_and_user_map_works(tmp_path):
    path = write(tmp_path / "x.csv", "col_a,col_b\nhello,world\n")
    with pytest.raises(DataError) as err:
        inspect_dataset(path)
    assert "--map" in str(err.value) and "col_a" in str(err.value)
    assert records(path, mapping="prompt=col_a,response=col_b") == [
        {"prompt": "hello", "completion": "world"}
    ]


def test_map_naming_a_missing_column_is_one_clear_error(tmp_path):
    path = write(tmp_path / "x.csv", "q,a\nhello,world\n")
    with pytest.raises(DataError, match="has no column or field 'question'.*it has: q, a"):
        inspect_dataset(path, Options(mapping="prompt=question,completion=a"))
    with pytest.raises(DataError, match="Cannot read the mapping"):
        Options(mapping="nonsense")


def test_map_also_renames_jsonl_fields(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", [{"q": "hi", "a": "hello"}])
    assert records(path, mapping={"prompt": "q", "completion": "a"}) == [
        {"prompt": "hi", "completion": "hello"}
    ]


def test_csv_rows_with_the_wrong_number_of_cells(tmp_path):
    path = write(tmp_path / "qa.csv", "prompt,completion\na,b\nc,d,e\n,\nf,g\n")
    report = inspect_dataset(path, Options(valid_fraction=0))
    assert report.kept == 2  # the empty row is ignored, not reported
    (p,) = report.problems
    assert p["where"] == "qa.csv, row 3" and "has 3 cells but the header has 2" in p["message"]
    assert "double quotes" in p["hint"]


def test_csv_duplicate_header_and_empty_cells(tmp_path):
    with pytest.raises(DataError, match="'prompt' appears twice"):
        inspect_dataset(write(tmp_path / "a.csv", "prompt,prompt\na,b\n"))
    report = inspect_dataset(
        write(tmp_path / "b.csv", "prompt,completion\na,\nb,c\n"), Options(valid_fraction=0)
    )
    assert (
        report.problems[0]["where"] == "b.csv, row 2"
        and report.problems[0]["code"] == "empty_field"
    )


# -- detection and override ----------------------------------------------------------------------


def test_format_override_and_unknown_format(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", [{"text": "a", "prompt": "p", "completion": "c"}])
    assert inspect_dataset(path).format == "completion"
    report = inspect_dataset(path, Options(format="text"))
    assert report.format == "text" and "chosen with --format" in report.format_reason
    with pytest.raises(DataError, match="Unknown format 'yaml'.*chat, completion"):
        Options(format="yaml")


def test_unrecognisable_fields_say_how_to_map(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataError) as err:
        inspect_dataset(path)
    assert "x.jsonl" in str(err.value) and "foo" in str(err.value) and "--format" in str(err.value)


def test_mixed_format_lines_are_reported_against_the_detected_format(tmp_path):
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = jsonl(
        tmp_path / "x.jsonl",
        [chat, chat | {"messages": chat["messages"] * 1}, {"prompt": "p", "completion": "c"}],
    )
    report = inspect_dataset(path, Options(valid_fraction=0, dedupe=False))
    assert report.format == "chat"
    assert report.problems[-1]["where"] == "x.jsonl, line 3"
    assert "'messages' is missing" in report.problems[-1]["message"]


def test_load_splits_accepts_every_format(tmp_path):
    path = write(
        tmp_path / "qa.csv", "question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(20))
    )
    splits = load_splits(path, valid_fraction=0.2, seed=3)
    assert len(splits.train) == 16 and len(splits.valid) == 4
    assert all(set(r) == {"prompt", "completion"} for r in splits.train + splits.valid)
    assert any("held out 4 of 20" in n for n in splits.notes)


def test_sharegpt_problem_fields_use_the_users_indices(tmp_path):
    row = {
        "system": "Be kind.",
        "conversations": [
            {"from": "human", "value": "a"},
            {"from": "human", "value": "b"},
            {"from": "gpt", "value": "c"},
        ],
    }
    path = jsonl(
        tmp_path / "sg.jsonl",
        [row, {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]}],
    )
    (p,) = inspect_dataset(path).problems
    assert p["field"] == "conversations[1].role" and "two user messages" in p["message"]
