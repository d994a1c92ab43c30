"""The training worker as the app runs it: `python -m engine train --events` in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import events
from tests.helpers import variable_chat_data

ROOT = Path(__file__).resolve().parents[2]


def start_worker(args: list[str], home: Path, stdin=subprocess.PIPE) -> subprocess.Popen:
    """The worker; stdin is a pipe (as from the app) unless the test runs it to completion."""
    env = dict(os.environ, LATHE_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "train", *args],
        cwd=ROOT,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen, kind: str, timeout: float = 120) -> list[dict]:
    """Events read from the worker's stdout up to and including the first of `kind`."""
    seen = []
    deadline = time.time() + timeout
    for line in proc.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == kind:
            return seen
        if time.time() > deadline:
            break
    raise AssertionError(
        f"no {kind} event; got {[e['event'] for e in seen]}; stderr: {proc.stderr.read()}"
    )


@pytest.mark.slow
def test_event_stream_parses_and_follows_the_contract(tiny_chat_model, tmp_path, lathe_home):
    data = variable_chat_data(tmp_path / "chat.jsonl", n=30)
    proc = start_worker(
        [
            "--model",
            str(tiny_chat_model),
            "--data",
            str(data),
            "--iters",
            "12",
            "--steps-per-report",
            "2",
            "--steps-per-eval",
            "6",
            "--save-every",
            "6",
            "--events",
        ],
        lathe_home,
        stdin=subprocess.DEVNULL,
    )
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    stream = [json.loads(line) for line in out.splitlines()]  # every line is one JSON object
    for event in stream:
        assert events.check(event) == [], event
    kinds = [e["event"] for e in stream]
    assert kinds.index("started") < kinds.index("progress") and kinds[-1] == "finished"
    assert [e["step"] for e in stream if e["event"] == "progress"] == [2, 4, 6, 8, 10, 12]
    assert [e["step"] for e in stream if e["event"] == "eval"] == [0, 6, 12]
    assert [e["step"] for e in stream if e["event"] == "checkpoint"] == [6, 12]
    finished = stream[-1]
    assert finished["status"] == "completed" and Path(finished["adapter_path"]).is_dir()
    # The run folder's events.jsonl holds the same events.
    run_dir = Path(stream[kinds.index("started")]["run_dir"])
    assert events.read_log(run_dir / "events.jsonl") == stream
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stdin", "sigterm", "stdin-closed"])
def test_stop_ends_cleanly_with_a_usable_checkpoint(how, tiny_chat_model, tmp_path, lathe_home):
    import mlx_lm

    data = variable_chat_data(tmp_path / "chat.jsonl", n=30)
    proc = start_worker(
        [
            "--model",
            str(tiny_chat_model),
            "--data",
            str(data),
            "--iters",
            "5000",
            "--steps-per-report",
            "1",
            "--save-every",
            "1000",
            "--events",
        ],
        lathe_home,
    )
    read_until(proc, "progress")
    if how == "stdin":
        proc.stdin.write("stop\n")
        proc.stdin.flush()
    elif how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        proc.stdin.close()  # what happens when the app that started the worker dies
    rest = read_until(proc, "finished", timeout=60)
    assert proc.wait(timeout=30) == 0
    assert rest[-1]["status"] == "stopped"
    checkpoint = [e for e in rest if e["event"] == "checkpoint"][-1]
    step = checkpoint["step"]
    assert 0 < step < 5000
    run_dir = Path(checkpoint["path"]).parents[1]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"
    model, tok = mlx_lm.load(str(tiny_chat_model), adapter_path=checkpoint["path"])
    assert isinstance(mlx_lm.generate(model, tok, "Hi", max_tokens=3), str)


@pytest.mark.slow
def test_resume_from_the_command_line_finishes_the_run(tiny_chat_model, tmp_path, lathe_home):
    data = variable_chat_data(tmp_path / "chat.jsonl", n=30)
    proc = start_worker(
        [
            "--model",
            str(tiny_chat_model),
            "--data",
            str(data),
            "--iters",
            "40",
            "--steps-per-report",
            "1",
            "--events",
        ],
        lathe_home,
    )
    read_until(proc, "progress")
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    proc.communicate(timeout=60)
    run_dir = next((lathe_home / "runs").iterdir())
    resumed = start_worker(
        ["--resume", run_dir.name, "--events"], lathe_home, stdin=subprocess.DEVNULL
    )
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    stream = [json.loads(line) for line in out.splitlines()]
    assert stream[-1]["status"] == "completed"
    first = next(e for e in stream if e["event"] == "started")
    assert first["resumed_from"] and first["resumed_from"] > 0
    assert [e["step"] for e in stream if e["event"] == "progress"][0] == first["resumed_from"] + 1


def test_cli_errors_are_one_sentence_without_traceback(tmp_path, lathe_home):
    env = dict(os.environ, LATHE_HOME=str(lathe_home))
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "train",
            "--model",
            str(tmp_path / "nope"),
            "--data",
            str(tmp_path / "nope.jsonl"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr
    assert "does not exist" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  batch_size: [1, 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--config", str(bad)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        result.returncode == 1
        and "not valid YAML" in result.stderr
        and "Traceback" not in result.stderr
    )


def test_cli_writes_a_config_mlx_lm_reads(tmp_path):
    out = tmp_path / "mlx.yaml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "train",
            "--model",
            "m",
            "--data",
            "d",
            "--iters",
            "7",
            "--learning-rate",
            "3e-5",
            "--write-mlx-lm-config",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    import yaml

    flat = yaml.safe_load(out.read_text())
    assert (
        flat["iters"] == 7 and flat["learning_rate"] == pytest.approx(3e-5) and flat["model"] == "m"
    )
