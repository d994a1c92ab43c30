"""Killing the training worker: SIGKILL at random moments, and the app that started it dying.

Real workers (`python -m engine train --events`) on a tiny model with frequent checkpoints. The
test-only hook LATHE_TEST_SLOW_CHECKPOINT makes each checkpoint take a little longer to write, so
that kills land inside checkpoint writes often enough to be tested every time.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine.runs import _pid_alive, load_run
from engine.training.checkpoint import is_temp_name
from tests.helpers import variable_chat_data

pytestmark = pytest.mark.slow  # minutes of real training on the 2-core machine

ROOT = Path(__file__).resolve().parents[2]
ITERS = 60
SAVE_EVERY = 3
# One chain of trials on one run: kills at random moments, a kill during the final save, then a
# resume that finishes the run. "checkpoint" kills land while a checkpoint is being written,
# "step" kills between checkpoints, "random" anywhere after the first step.
CHAIN = ("random", "checkpoint", "step", "random", "checkpoint", "step", "final")
CHAINS = 3  # 21 kills in all


def worker_env(home: Path, **extra) -> dict:
    return dict(os.environ, LATHE_HOME=str(home), PYTHONUNBUFFERED="1", **extra)


class Worker:
    """A worker process whose events are read on a thread as they arrive."""

    def __init__(self, args: list[str], home: Path, log: Path):
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._stderr = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "train", *args, "--events"],
            cwd=ROOT,
            env=worker_env(home, LATHE_TEST_SLOW_CHECKPOINT="0.01"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.events.append(json.loads(line))
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "<eof>"})
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float = 120) -> dict | None:
        """The first event matching `pred` (None when the worker ended without one)."""
        deadline = time.time() + timeout
        seen = 0
        with self._cond:
            while time.time() < deadline:
                for event in self.events[seen:]:
                    if event["event"] == "<eof>":
                        return None
                    if pred(event):
                        return event
                seen = len(self.events)
                self._cond.wait(0.5)
        raise AssertionError(f"timed out; events: {[e['event'] for e in self.events]}")

    def kill(self) -> list[dict]:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._thread.join(timeout=30)
        self._stderr.close()
        return [e for e in self.events if e["event"] != "<eof>"]


def newest_step(run_dir: Path) -> int | None:
    steps = load_run(run_dir).checkpoints
    return steps[-1] if steps else None


def assert_consistent(run_dir: Path, seen: list[dict]) -> bool:
    """The state a kill may leave: returns whether it landed inside a checkpoint write."""
    import mlx.core as mx

    finished = any(e["event"] == "finished" for e in seen)
    info = load_run(run_dir)
    assert info.state == ("completed" if finished else "interrupted"), info.status
    in_checkpoint = False
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if any(part.startswith(".tmp-") for part in rel.parts):
            in_checkpoint = True
            continue  # an unfinished checkpoint folder: ignored, and removed by resume
        if not path.is_file():
            continue
        if is_temp_name(path.name):
            continue  # an unfinished atomic write: never under a real name, removed by resume
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            assert mx.load(str(path)), rel
    text = (run_dir / "events.jsonl").read_text()
    assert text.endswith("\n"), "torn last line"
    for line in text.splitlines():
        json.loads(line)
    json.loads((run_dir / "status.json").read_text())
    # Every checkpoint the worker announced is there, complete, and describes its own step.
    announced = [e["step"] for e in seen if e["event"] == "checkpoint"]
    newest = newest_step(run_dir)
    if announced:
        assert newest is not None and newest >= max(announced)
    if newest is not None:
        folder = run_dir / "checkpoints" / f"{newest:07d}"
        assert json.loads((folder / "state.json").read_text())["step"] == newest
        assert mx.load(str(folder / "optimizer.safetensors"))
        # The run's adapter is one of its checkpoints' adapters (the newest, or the one before if
        # the kill came between writing a checkpoint and publishing it).
        published = run_dir / "adapters" / "adapters.safetensors"
        if published.exists():
            assert any(
                published.read_bytes() == (c / "adapters.safetensors").read_bytes()
                for c in (run_dir / "checkpoints").iterdir()
                if c.name.isdigit()
            )
        else:  # killed between the first checkpoint and its publication
            assert len(load_run(run_dir).checkpoints) == 1
    return in_checkpoint


def finish_run(run_dir: Path, home: Path, progress: set[int]) -> None:
    """Resume `run_dir` to completion (unless it completed already) and check the finished folder."""
    if load_run(run_dir).state != "completed":
        before = newest_step(run_dir)
        proc = subprocess.run(
            [sys.executable, "-m", "engine", "train", "--resume", str(run_dir), "--events"],
            cwd=ROOT,
            env=worker_env(home),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr
        stream = [json.loads(line) for line in proc.stdout.splitlines()]
        assert next(e for e in stream if e["event"] == "started")["resumed_from"] == before
        assert stream[-1]["event"] == "finished" and stream[-1]["status"] == "completed"
        progress.update(e["step"] for e in stream if e["event"] == "progress")
    info = load_run(run_dir)
    assert info.state == "completed" and info.checkpoints[-1] == ITERS
    assert not [
        p
        for p in run_dir.rglob("*")
        if p.name.startswith((".tmp-", ".old-")) or is_temp_name(p.name)
    ]
    assert progress == set(range(1, ITERS + 1))  # every step was trained (some twice)


def run_chain(index: int, model: Path, data: Path, home: Path, logs: Path) -> dict:
    """The trials of CHAIN on one run (a new run when a kill came only after the end)."""
    rng = random.Random(1000 + index)
    run_dir, progress = None, set()
    outcome = {"kills": 0, "in_checkpoint": 0, "runs": 0}
    for trial, kind in enumerate(CHAIN):
        if run_dir is None:
            outcome["runs"] += 1
            args = [
                "--model",
                str(model),
                "--data",
                str(data),
                "--name",
                f"chain-{index}-{outcome['runs']}",
                "--iters",
                str(ITERS),
                "--save-every",
                str(SAVE_EVERY),
                "--steps-per-report",
                "1",
                "--steps-per-eval",
                "1000",
                "--batch-size",
                "2",
                "--max-seq-length",
                "48",
            ]
        else:
            args = ["--resume", str(run_dir)]
        before = newest_step(run_dir) if run_dir else None
        log = logs / f"chain-{index}-{trial}.txt"
        w = Worker(args, home, log)
        first = w.wait_for(lambda e: e["event"] == "progress")
        assert first is not None, log.read_text()
        if kind == "random":
            time.sleep(rng.uniform(0, 0.4))
        elif kind == "checkpoint":  # a checkpoint write starts right after these steps' progress
            w.wait_for(lambda e: e["event"] == "progress" and e["step"] % SAVE_EVERY == 0)
            time.sleep(rng.uniform(0, 0.03))
        elif kind == "step":  # steps run right after a checkpoint
            w.wait_for(lambda e: e["event"] == "checkpoint")
            time.sleep(rng.uniform(0, 0.02))
        else:  # the final save: the last step's checkpoint, adapter, status and finished event
            w.wait_for(lambda e: e["event"] == "progress" and e["step"] == ITERS)
            time.sleep(rng.uniform(0, 0.05))
        seen = w.kill()
        started = next(e for e in seen if e["event"] == "started")
        run_dir = run_dir or Path(started["run_dir"])
        # Each resume continues from the newest complete checkpoint the previous kill left.
        assert started["resumed_from"] == before, (trial, started["resumed_from"], before)
        assert first["step"] == (before or 0) + 1
        progress.update(e["step"] for e in seen if e["event"] == "progress")
        outcome["kills"] += 1
        outcome["in_checkpoint"] += assert_consistent(run_dir, seen)
        if any(e["event"] == "finished" for e in seen):  # the kill came after the end
            finish_run(run_dir, home, progress)
            run_dir, progress = None, set()
    if run_dir is not None:
        finish_run(run_dir, home, progress)  # a last resume finishes the run
    return outcome


def test_sigkill_at_random_moments_never_loses_work(tiny_chat_model, tmp_path, lathe_home):
    data = variable_chat_data(tmp_path / "chat.jsonl", n=30)
    logs = tmp_path / "logs"
    logs.mkdir()
    tic = time.time()
    with ThreadPoolExecutor(max_workers=CHAINS) as pool:
        outcomes = list(
            pool.map(lambda i: run_chain(i, tiny_chat_model, data, lathe_home, logs), range(CHAINS))
        )
    kills = sum(o["kills"] for o in outcomes)
    in_checkpoint = sum(o["in_checkpoint"] for o in outcomes)
    print(f"{kills} kills, {in_checkpoint} inside a checkpoint write, {time.time() - tic:.1f}s")
    assert kills >= 20
    assert in_checkpoint >= 3 and kills - in_checkpoint >= 3  # both kinds of moment were hit


PARENT = r"""
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-m", "engine", "train", *sys.argv[1:], "--events"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
print(worker.pid, flush=True)
for line in worker.stdout:
    if '"progress"' in line:
        print("training", flush=True)
        break
import time
time.sleep(600)
"""


def test_worker_stops_with_a_checkpoint_when_the_app_dies(tiny_chat_model, tmp_path, lathe_home):
    """The app (here a stand-in parent) starts the worker with a pipe and is killed: the worker sees
    stdin close, saves a checkpoint, ends as `stopped`, and does not stay behind as an orphan."""
    data = variable_chat_data(tmp_path / "chat.jsonl", n=30)
    app = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PARENT,
            "--model",
            str(tiny_chat_model),
            "--data",
            str(data),
            "--iters",
            "100000",
            "--steps-per-report",
            "1",
            "--save-every",
            "100000",
            "--max-seq-length",
            "48",
        ],
        cwd=ROOT,
        env=worker_env(lathe_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = int(app.stdout.readline())
    assert app.stdout.readline().strip() == "training"
    app.send_signal(signal.SIGKILL)
    app.wait(timeout=30)

    deadline = time.time() + 60
    while _pid_alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _pid_alive(pid), "the worker outlived the app"
    run_dir = next((lathe_home / "runs").iterdir())
    info = load_run(run_dir)
    assert info.state == "stopped" and "app closed" in info.status["reason"]
    assert info.checkpoints and info.checkpoints[-1] > 0
    log = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "finished" and log[-1]["status"] == "stopped"
    assert [e["step"] for e in log if e["event"] == "checkpoint"] == info.checkpoints
