"""Data that means what its author meant (issue 20): tool calls, preference pairs, loss weights,
`value` text parts, unknown keys, `{{word}}` placeholders, chat with tools, and the smaller
messages. Every file here is written in the shape real public datasets use, with made-up text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import events
from engine.cli import main
from engine.data import (
    DataError,
    Options,
    TokenSettings,
    import_dataset,
    inspect_dataset,
    load_splits,
    load_tokenizer,
    read_imported,
)
from engine.encode import Encoder
from engine.errors import TrainingError

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def tool_record(arguments=None) -> dict:
    """An OpenAI fine-tuning record whose trained assistant turn is a tool call."""
    args = json.dumps({"city": "Paris"}) if arguments is None else arguments
    return {
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "system", "content": "You control a weather station."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": args},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 18 degrees"},
            {"role": "assistant", "content": "Sunny and 18 degrees.", "weight": 0},
        ],
    }


# A ChatML template that renders tools the way Qwen2.5's does (shortened).
CHATML_TOOLS = (
    "{%- if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>"
    "<|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}"
    "<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}<|im_start|>user\n{{ message.content }}<|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant\n{{ message.content or '' }}"
    "{%- for tc in message.tool_calls or [] %}"
    "{% if message.content or not loop.first %}\n{% endif %}<tool_call>\n"
    "{{ {'name': tc.function.name, 'arguments': tc.function.arguments} | tojson }}\n</tool_call>"
    "{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}"
    "{%- if messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}"
    "\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def trained_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, w in zip(encoded.tokens, encoded.weights, strict=True) if w])


@pytest.fixture(scope="module")
def tok(tiny_chat_model):
    return load_tokenizer(tiny_chat_model)


# -- 1. tool calls -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("lathe", f"<tool_call>{CALL_TEXT}</tool_call><|im_end|>"),
        (CHATML_TOOLS, f"<tool_call>\n{CALL_TEXT}\n</tool_call><|im_end|>"),
    ],
    ids=["lathe-default", "chatml-with-tools"],
)
def test_a_tool_call_record_trains_exactly_the_tool_call(tmp_path, tok, template, expected):
    """Issue 20 item 1: with a template that renders tools (Lathe's default, a Qwen-like ChatML),
    the assistant's tool call is what trains, and the tool definitions and the tool result are in
    the prompt. Lathe's old default template trained only the end-of-turn token."""
    path = write_jsonl(tmp_path / "drone.jsonl", [tool_record()])
    (record,) = load_splits(path, valid_fraction=0).train
    encoder = Encoder(tok, chat_template=template)
    enc = encoder.encode(record)
    assert trained_text(tok, enc) == expected
    shown = encoder.render(record)
    assert '"description": "Current weather in a city."' in shown  # the tool definition
    assert "Sunny, 18 degrees" in shown  # the tool result
    assert not encoder.template_drops(record)


def test_a_template_that_cannot_render_tool_calls_is_reported(tmp_path, tiny_chat_model, capsys):
    """Issue 20 item 1: the tiny model's own ChatML template ignores tools and tool_calls; inspect
    says so with counts and an example line instead of training the end-of-turn token silently."""
    plain = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    }
    path = write_jsonl(tmp_path / "drone.jsonl", [tool_record(), plain])
    report = inspect_dataset(path, Options(valid_fraction=0), tokens=TokenSettings(tiny_chat_model))
    assert report.kept == 2  # kept, with a warning: the user decides
    assert report.warning_counts == {"template_drops": 1}
    (problem,) = report.problems
    assert problem["where"] == "drone.jsonl, line 1"
    assert "tool definitions, tool calls" in problem["message"]
    assert report.tokens.template_drops == {"tool definitions": 1, "tool calls": 1}
    assert report.tokens.hollow == 1
    note = next(n for n in report.notes if "does not render" in n)
    assert note.startswith("The model's chat template does not render tool")
    assert "1 of 2 examples would train nothing but the end-of-turn token" in note
    assert "--chat-template lathe" in note

    # The same file with Lathe's template: nothing to report.
    assert main(["data", "inspect", str(path), "-m", str(tiny_chat_model)]) == 0
    out = capsys.readouterr().out
    assert "does not render tool definitions (1 example), tool calls (1 example)" in out
    assert "drone.jsonl, line 1: the chat template leaves out the tool definitions" in out
    args = ["data", "inspect", str(path), "-m", str(tiny_chat_model), "--chat-template", "lathe"]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warning_counts"] == {}


def test_training_refuses_when_the_template_empties_the_training_signal(tok):
    """Issue 20 item 1: when every training example's answer is a tool call the template drops,
    the run refuses to start (unless forced); with a few such examples it warns with counts."""
    from engine.training.prepare import check_template_drops

    encoder = Encoder(tok)  # the model's own template, without tools
    record = load_record(tool_record())
    with pytest.raises(TrainingError, match="all 2 training examples would train nothing") as err:
        check_template_drops(encoder, [record, record], False, lambda *a: None)
    assert "train --force" in err.value.hint
    logged = []
    check_template_drops(encoder, [record, record], True, lambda *a: logged.append(a))
    plain = load_record(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    )
    check_template_drops(encoder, [record, plain], False, lambda *a: logged.append(a))
    assert [level for level, _ in logged] == ["warning", "warning"]
    assert "tool calls (1 of 2 examples)" in logged[1][1]
    assert "e.g. training example 1 loses its tool definitions, tool calls" in logged[1][1]


def load_record(row: dict) -> dict:
    from engine.data import formats

    return formats.normalise(formats.norm_chat, row)[0]


def test_double_encoded_arguments_are_decoded_once_with_a_note(tmp_path):
    """Issue 20 item 6: arguments JSON-encoded twice are decoded once, and the user is told."""
    twice = json.dumps(json.dumps({"city": "Paris"}))
    path = write_jsonl(tmp_path / "calls.jsonl", [tool_record(twice), tool_record()])
    report = inspect_dataset(path, Options(valid_fraction=0, dedupe=False))
    assert report.kept == 2
    assert "In 1 record, tool-call arguments were JSON text encoded twice" in " ".join(report.notes)
    first = load_splits(path, valid_fraction=0).train[0]
    assert first["messages"][2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


# -- 2. preference pairs -------------------------------------------------------------------------


def test_a_preference_file_imports_as_preference_data_and_trains_on_chosen(tmp_path, tok):
    """Issue 20 item 2: LLaMA-Factory (ShareGPT and Alpaca), TRL and Anthropic-HH pairs are
    preference data; the import keeps the rejected answers, says plainly that fine-tuning trains on
    the chosen ones, and the chosen answer is exactly what trains."""
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Name a colour."},
            ],
            "chosen": {"from": "gpt", "value": "Teal."},
            "rejected": {"from": "gpt", "value": "I refuse."},
        },
        {"instruction": "Add 2 and 2.", "input": "", "chosen": "4", "rejected": "5"},
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
        {
            "chosen": "\n\nHuman: Say hello.\n\nAssistant: Hello!",
            "rejected": "\n\nHuman: Say hello.\n\nAssistant: No.",
        },
    ]
    path = write_jsonl(tmp_path / "dpo.jsonl", rows)
    report = import_dataset(path, Options(valid_fraction=0))
    assert report.format == "preference" and report.kinds == {"preference": 4}
    assert report.kept == 4 and report.skipped == 0
    assert any("Fine-tuning trains on the chosen answers" in n for n in report.notes)
    train = read_imported(Path(report.dataset_path))["train"]
    first = train[0]
    assert first["rejected"] == [{"role": "assistant", "content": "I refuse."}]
    assert first["messages"][first["chosen_start"] :] == [{"role": "assistant", "content": "Teal."}]
    assert [r["rejected"][0]["content"] for r in train[1:]] == ["5", "Rome.", "No."]
    encoder = Encoder(tok)
    chosen = [trained_text(tok, encoder.encode(r)) for r in train]
    assert chosen == [
        "Teal.<|im_end|>\n",
        "4<|im_end|>\n",
        "Paris.<|im_end|>\n",
        "Hello!<|im_end|>\n",
    ]


# -- 3. loss weights, `value` parts, unknown keys --------------------------------------------------


def test_loss_weight_zero_turn_trains_nothing(tmp_path, tok):
    """Issue 20 item 3: LLaMA-Factory's `loss_weight: 0.0` on an assistant turn keeps it as
    context; a fraction is honoured as the turn's weight; a record with every turn at 0 is
    skipped as having nothing to learn."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": "First?", "loss_weight": 0.0},
                {"role": "assistant", "content": "Skip me.", "loss_weight": 0.0},
                {"role": "user", "content": "Second?", "loss_weight": 0.0},
                {"role": "assistant", "content": "Learn me.", "loss_weight": 1.0},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Half?"},
                {"role": "assistant", "content": "Half weight.", "loss_weight": 0.5},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "None?"},
                {"role": "assistant", "content": "Nothing.", "loss_weight": 0},
            ]
        },
    ]
    path = write_jsonl(tmp_path / "lf.jsonl", rows)
    report = inspect_dataset(path, Options(valid_fraction=0))
    assert report.problem_counts == {"nothing_trained": 1}
    first, half = load_splits(path, valid_fraction=0).train
    encoder = Encoder(tok)
    assert trained_text(tok, encoder.encode(first)) == "Learn me.<|im_end|>\n"
    enc = encoder.encode(half)
    assert {w for w in enc.weights if w} == {0.5}
    assert enc.trained_tokens == len(tok.encode("Half weight.<|im_end|>\n"))


def test_value_text_parts_and_unknown_keys(tmp_path):
    """Issue 20 items 3 and 4: `{"type": "text", "value": ...}` parts are text (the old message
    said "has a 'text' part; only text can be trained"); keys Lathe does not read are reported
    once per key with how many records have them."""
    rows = [
        {
            "id": i,
            "source": "web",
            "messages": [
                {"role": "user", "content": [{"type": "text", "value": f"Question {i}"}]},
                {"role": "assistant", "content": "Answer", "score": 3},
            ],
        }
        for i in range(3)
    ]
    path = write_jsonl(tmp_path / "v1.jsonl", rows)
    report = inspect_dataset(path, Options(valid_fraction=0))
    assert report.kept == 3 and report.skipped == 0
    assert report.unknown_keys == {"id": 3, "messages[].score": 3, "source": 3}
    ignored = [n for n in report.notes if "Lathe ignores it" in n]
    assert len(ignored) == 3 and "The field 'id' (in 3 records)" in ignored[0]
    assert load_splits(path, valid_fraction=0).train[0]["messages"][0]["content"] == "Question 0"


# -- 5. placeholders -----------------------------------------------------------------------------


def test_placeholders_are_reported_and_filled_by_set(tmp_path, capsys):
    """Issue 20 item 5: `{{name}}` and `{{author}}` are reported with counts; `--set` fills them at
    import and the original file is untouched."""
    rows = [
        {"instruction": "Who are you?", "output": "I am {{name}}, made by {{author}}."},
        {"instruction": "Your name?", "output": "{{ name }}."},
        {"instruction": "Hi", "output": "Hello!"},
    ]
    path = write_jsonl(tmp_path / "identity.jsonl", rows)
    before = path.read_bytes()
    assert main(["data", "inspect", str(path), "--valid-fraction", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["placeholders"] == {"name": 2, "author": 1}
    assert any(
        "2 examples contain placeholders" in n and "--set name=" in n for n in report["notes"]
    )
    args = ["data", "import", str(path), "--valid-fraction", "0", "--json"]
    assert main([*args, "--set", "name=Lathe", "--set", "author=Ada"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["placeholders"] == {}
    train = read_imported(Path(report["dataset_path"]))["train"]
    assert [r["completion"] for r in train[:2]] == ["I am Lathe, made by Ada.", "Lathe."]
    assert path.read_bytes() == before
    with pytest.raises(DataError, match="WORD=VALUE"):
        Options(fill=["name"])


# -- 6. smaller messages -------------------------------------------------------------------------


def test_json_errors_come_on_stdout_with_a_non_zero_exit(tmp_path, capsys):
    """Issue 20 item 6: `--json` prints a refused dataset as one JSON object on stdout (it printed
    nothing there); `--format text` on a CSV without a text column suggests `--map text=COLUMN`."""
    csv = tmp_path / "prompts.csv"
    csv.write_text("question,answer\nWhy?,Because.\n", encoding="utf-8")
    assert main(["data", "inspect", str(csv), "--format", "text", "--json"]) == 1
    out = capsys.readouterr()
    error = json.loads(out.out)["error"]
    assert error["kind"] == "data"
    assert "no 'text' column" in error["message"] and "question, answer" in error["message"]
    assert "--map text=COLUMN" in error["hint"]
    assert "lathe-engine:" in out.err


def test_held_out_share_and_a_folder_of_mixed_kinds(tmp_path):
    """Issue 20 item 6: "held out 1 of 2 (10%)" now says 50%; a folder that mixes plain text,
    conversations and preference pairs is reported as such."""
    two = write_jsonl(tmp_path / "two.jsonl", [{"text": "a"}, {"text": "b"}])
    (note,) = inspect_dataset(two).split_notes
    assert "held out 1 of 2 training examples (50%: 10% asked, in whole examples" in note
    folder = tmp_path / "mixed"
    write_jsonl(folder / "book.jsonl", [{"text": "Once upon a time."}])
    write_jsonl(
        folder / "sft.jsonl",
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
    )
    write_jsonl(folder / "pairs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    report = inspect_dataset(folder, Options(valid_fraction=0))
    mixed = next(n for n in report.notes if "different kinds of data" in n)
    assert "1 plain text" in mixed and "1 conversations" in mixed and "1 preference pairs" in mixed


# -- 7. chat with tools --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_model_tuned_on_tool_calls_is_chatted_with_using_tools(tiny_chat_model, tmp_path, capsys):
    """Issue 20 items 1 and 7: a run on tool-call data with the model's own template (no tools)
    refuses to start; with Lathe's template it trains, and `chat --tools` renders the tool
    definitions into the prompt through the run's template."""
    from engine.chat import ChatModel
    from engine.config import RunConfig
    from engine.runs import create_run
    from engine.train import run

    data = write_jsonl(tmp_path / "calls.jsonl", [tool_record()] * 8)
    cfg = RunConfig()
    cfg.model.path = str(tiny_chat_model)
    cfg.data.path = str(data)
    cfg.data.valid_fraction = 0
    cfg.training.iters = 2
    cfg.training.batch_size = 2
    cfg.training.report_utilisation = False
    recorder = events.Recorder()
    assert run(cfg, create_run(cfg), recorder) == "failed"
    (error,) = [e for e in recorder.events if e["event"] == "error"]
    assert "does not render" in error["message"] and "all 8 training examples" in error["message"]

    cfg.model.chat_template = "lathe"
    run_dir = create_run(cfg)
    assert run(cfg, run_dir, events.Recorder()) == "completed"
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([WEATHER_TOOL]), encoding="utf-8")

    chat = ChatModel.load(adapter=run_dir)
    try:
        question = [{"role": "user", "content": "What is the weather in Paris?"}]
        from engine.chat import load_tools

        prompt = chat.tokenizer.decode(chat.prompt_tokens(question, load_tools(tools_file)))
        assert prompt.startswith("### Tools:") and '"name": "get_weather"' in prompt
        without = len(chat.prompt_tokens(question))
    finally:
        chat.close()
    args = ["chat", "--adapter", str(run_dir), "--prompt", question[0]["content"]]
    args += ["--temperature", "0", "--max-tokens", "4", "--json"]
    assert main([*args, "--tools", str(tools_file)]) == 0
    reply = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert reply["stats"]["prompt_tokens"] > without  # the tool definitions were in the prompt
    assert main([*args, "--tools", str(tmp_path / "missing.json")]) == 1
    assert "does not exist" in capsys.readouterr().err
