"""Issue 19: evaluation, export and quantization run in worker processes through one JobController
(app/jobs.py). Before, they ran MLX on threads of the window's process, so a worker that died took
the window with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

# Scripts that stand in for `lathe-engine ... --json --progress`: what they print is the protocol.
SUCCEEDS = """
import json, time
for i in range(1, 4):
    print(json.dumps({"progress": {"stage": "work", "fraction": i / 3}}), flush=True)
    time.sleep(0.05)
print(json.dumps({"path": "/tmp/out", "items": [1, 2]}, indent=2))
"""
FAILS = """
import json, sys
print(json.dumps({"error": {"kind": "export", "message": "No adapter.", "hint": "Train first."}}))
sys.exit(1)
"""
KILLS_ITSELF = """
import json, os, signal, sys
print(json.dumps({"progress": {"stage": "fuse", "fraction": 0.5}}), flush=True)
print("fusing layer 3", file=sys.stderr, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
STUBBORN = """
import json, signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(json.dumps({"progress": {"stage": "wait"}}), flush=True)
time.sleep(60)
"""


def _job(qtbot, script: str, **attrs):
    from app.jobs import JobController

    job = JobController("export")
    for k, v in attrs.items():
        setattr(job, k, v)
    seen = {"progress": [], "finished": [], "failed": [], "cancelled": 0}
    job.sig_progress.connect(seen["progress"].append)
    job.sig_finished.connect(seen["finished"].append)
    job.sig_failed.connect(lambda m, h: seen["failed"].append((m, h)))
    job.sig_cancelled.connect(lambda: seen.__setitem__("cancelled", seen["cancelled"] + 1))
    with qtbot.waitSignal(job.sig_started, timeout=20_000):
        job.start_command(sys.executable, ["-c", script])
    return job, seen


def test_a_job_streams_progress_and_finishes_with_its_result(qtbot):
    job, seen = _job(qtbot, SUCCEEDS)
    with qtbot.waitSignal(job.sig_ended, timeout=20_000):
        pass
    assert [p["fraction"] for p in seen["progress"]] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert seen["finished"] == [{"path": "/tmp/out", "items": [1, 2]}]
    assert not seen["failed"] and not job.running


def test_an_engine_error_arrives_as_message_and_hint(qtbot):
    job, seen = _job(qtbot, FAILS)
    with qtbot.waitSignal(job.sig_ended, timeout=20_000):
        pass
    assert seen["failed"] == [("No adapter.", "Train first.")] and not seen["finished"]


def test_a_killed_worker_is_a_clear_failure_and_the_next_job_runs(qtbot):
    job, seen = _job(qtbot, KILLS_ITSELF)
    with qtbot.waitSignal(job.sig_ended, timeout=20_000):
        pass
    ((message, _hint),) = seen["failed"]
    assert message.startswith("The export worker stopped unexpectedly (exit code -9 / signal 9")
    assert "fusing layer 3" in message  # what it said last
    assert seen["progress"] == [{"stage": "fuse", "fraction": 0.5}]
    # The controller (and the window around it) goes on: the next job runs normally.
    with qtbot.waitSignal(job.sig_finished, timeout=20_000):
        job.start_command(sys.executable, ["-c", SUCCEEDS])


def test_cancel_ends_a_worker_that_ignores_it_within_the_bounded_wait(qtbot):
    job, seen = _job(qtbot, STUBBORN, cancel_wait_ms=500, terminate_wait_ms=500)
    with qtbot.waitSignal(job.sig_progress, timeout=20_000):
        pass
    t0 = time.monotonic()
    with qtbot.waitSignal(job.sig_ended, timeout=20_000):
        job.cancel()
    assert time.monotonic() - t0 < 10  # 0.5 s asking + 0.5 s terminating, then killed
    assert seen["cancelled"] == 1 and not seen["failed"] and not job.running


@pytest.mark.slow
def test_quantize_on_the_models_page_runs_in_a_worker_process(window, qtbot, stories_path):
    """Issue 19: the Models page quantized with MLX on a thread of the window's process."""
    import os

    page = window.models
    seen = []
    page.quantize_job.sig_progress.connect(seen.append)
    with qtbot.waitSignal(page.sig_library_changed, timeout=90_000):
        page.quantize(str(stories_path), 4)
        assert page.quantize_job.running and page.status.text().startswith("Quantizing")
    assert page.quantize_job.pid and page.quantize_job.pid != os.getpid()
    assert {"loading", "writing"} <= {p["stage"] for p in seen}
    assert page.status.text().startswith("Wrote stories260K-4bit"), page.status.text()
    qtbot.waitUntil(lambda: any(r.name == "stories260K-4bit" for r in page.library), timeout=30_000)
    row = next(r for r in page.library if r.name == "stories260K-4bit")
    assert "4" in row.quantization and not page.busy.isVisibleTo(page)


def test_workers_run_below_the_windows_cpu_priority():
    """Issue 17: a worker the app starts lowers its own CPU priority (LATHE_WORKER_NICE from
    app.controller.worker_env, applied once by engine.cli.main), so the OS runs the window first
    when the cores are busy."""
    from app.controller import WORKER_NICE, worker_env

    env = worker_env({k: v for k, v in os.environ.items() if k != "LATHE_WORKER_NICE"})
    assert env["LATHE_WORKER_NICE"] == str(WORKER_NICE)
    code = (
        "import os; from engine.cli import lower_priority; lower_priority(); "
        "print(os.nice(0), os.environ.get('LATHE_WORKER_NICE'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    nice, left = out.stdout.split()
    assert int(nice) == min(19, os.nice(0) + WORKER_NICE), out.stderr
    assert left == "None"  # applied once: a re-exec or a child does not lower it again
