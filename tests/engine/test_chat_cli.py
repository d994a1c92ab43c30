"""`python -m engine chat`: one prompt, interactive, compare, --json, errors as one sentence."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import workspace
from engine.chat import ChatModel, ChatSettings
from engine.cli import main
from tests.helpers import STORY, make_chat_run

ROOT = Path(__file__).resolve().parents[2]
GREEDY = ["--temperature", "0", "--max-tokens", "30"]


@pytest.fixture(scope="module")
def run_template(stories_path, tmp_path_factory) -> Path:
    return make_chat_run(
        stories_path, tmp_path_factory.mktemp("runs") / "20260102-000000-cli-cd34", steps=(5,)
    )


@pytest.fixture
def run_id(run_template) -> str:
    shutil.copytree(run_template, workspace.runs_dir() / run_template.name)
    return run_template.name


@pytest.fixture(scope="module")
def expected(stories_path, run_template) -> dict:
    chat = ChatModel.load(stories_path, adapter=run_template)
    settings = ChatSettings(temperature=0, max_tokens=30)
    out = {
        "tuned": chat.reply(STORY, settings).text,
        "base": chat.reply(STORY, settings, use_adapter=False).text,
    }
    chat.close()
    return out


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_one_prompt_with_a_run_id_prints_one_json_reply(run_id, expected, capsys):
    # No --model: the run's config says which model it was trained on.
    assert (
        main(["chat", "--adapter", run_id, "--prompt", STORY[0]["content"], "--json", *GREEDY]) == 0
    )
    (reply,) = json_lines(capsys.readouterr().out)
    assert reply["text"] == expected["tuned"] and reply["adapter"] is True
    assert reply["label"] == f"stories260K + run {run_id} · final adapter"
    assert reply["stats"]["tokens"] == 30 and reply["stats"]["stop_reason"] == "length"
    assert reply["stats"]["tokens_per_second"] > 0


def test_checkpoint_step_and_base_flag(stories_path, run_id, expected, capsys):
    args = [
        "chat",
        "--model",
        str(stories_path),
        "--adapter",
        f"{run_id}:5",
        "--prompt",
        STORY[0]["content"],
        "--json",
        *GREEDY,
    ]
    assert main(args) == 0
    tuned = json_lines(capsys.readouterr().out)[0]
    assert "step 5" in tuned["label"] and tuned["text"] != expected["tuned"]
    assert main([*args, "--base"]) == 0
    base = json_lines(capsys.readouterr().out)[0]
    assert base["text"] == expected["base"] and base["label"] == "stories260K (base)"


def test_compare_prints_base_then_tuned(run_id, expected, capsys):
    assert (
        main(
            [
                "chat",
                "--adapter",
                run_id,
                "--compare",
                "--prompt",
                STORY[0]["content"],
                "--json",
                *GREEDY,
            ]
        )
        == 0
    )
    base, tuned = json_lines(capsys.readouterr().out)
    assert (base["adapter"], tuned["adapter"]) == (False, True)
    assert (base["text"], tuned["text"]) == (expected["base"], expected["tuned"])


def test_human_output_streams_the_reply_to_stdout(run_id, expected, capsys):
    assert main(["chat", "--adapter", run_id, "--prompt", STORY[0]["content"], *GREEDY]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == expected["tuned"].strip()
    assert "tok/s" in captured.err and "first token" in captured.err


def test_interactive_session_reads_stdin_until_eof(run_id, expected, capsys, monkeypatch):
    prompt = STORY[0]["content"]
    lines = [prompt, "/base", prompt, "/reset", "/tuned", prompt, "/nope"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["chat", "--adapter", run_id, "--json", *GREEDY]) == 0
    out = json_lines(capsys.readouterr().out)
    replies = [o for o in out if "text" in o]
    infos = [o["info"] for o in out if "info" in o]
    assert [r["adapter"] for r in replies] == [True, False, True]
    assert replies[0]["text"] == expected["tuned"] and replies[2]["text"] == expected["tuned"]
    # The second reply saw the first turn (no /reset yet), so its prompt was longer.
    assert replies[1]["stats"]["prompt_tokens"] > replies[0]["stats"]["prompt_tokens"]
    assert (
        infos[0] == "Now chatting with stories260K (base)." and infos[1] == "Conversation cleared."
    )
    assert infos[-1].startswith("Unknown command /nope")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--adapter", "no-such-run", "--prompt", "hi"],
            "'no-such-run' is neither a run nor an adapter folder",
        ),
        (
            ["--model", "/nonexistent/model", "--prompt", "hi"],
            "Model folder /nonexistent/model does not exist",
        ),
        (["--prompt", "hi"], "No model given"),
        (["--adapter", "x", "--top-p", "0", "--prompt", "hi"], "Top-p must be"),
    ],
)
def test_errors_are_one_sentence(args, message, capsys):
    assert main(["chat", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lathe-engine: {message}") and len(err.splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.slow
def test_runs_as_a_module_process(stories_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "chat",
            "--model",
            str(stories_path),
            "--prompt",
            "Hi",
            "--max-tokens",
            "5",
            "--seed",
            "3",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["stats"]["tokens"] == 5 and reply["label"] == "stories260K (base)"
