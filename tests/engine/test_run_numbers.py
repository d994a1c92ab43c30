"""Issue 17, item 5: one source of truth for a run's numbers (engine.runs.run_numbers), which the
Runs table (app.services.run_rows) and the Train page both show."""

from __future__ import annotations

import json

from engine.config import RunConfig
from engine.runs import create_run, load_run, run_numbers, write_status


def _run(name: str):
    cfg = RunConfig()
    cfg.model.path, cfg.data.path, cfg.name = "/models/stories260K", "/data/bank.jsonl", name
    return create_run(cfg)


def _write(run_dir, events):
    with open(run_dir / "events.jsonl", "w") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")


def _progress(step, t, total=104):
    return {
        "event": "progress",
        "time": t,
        "step": step,
        "total": total,
        "train_loss": 3.0 - step / 100,
    }


def test_a_killed_run_counts_the_steps_it_reported():
    """A killed run showed Steps 0/104 although its progress events reached step 30: the table
    read status.json, which is only written at checkpoints."""
    run_dir = _run("killed")
    write_status(run_dir, "running", pid=2**22 + 4321, step=0, total_steps=104, started=100.0)
    _write(
        run_dir,
        [{"event": "started", "time": 100.0, "total_steps": 104}]
        + [_progress(s, 100.0 + s) for s in range(1, 31)],
    )
    info = load_run(run_dir)
    assert info.state == "interrupted"
    n = info.numbers()
    assert (n.step, n.total_steps) == (30, 104)
    assert abs(n.active_seconds - 30.0) < 1e-6


def test_duration_sums_every_start_and_resume_and_best_loss_skips_step_zero():
    """A stopped-then-resumed run showed Duration 14 s (the last segment's wall time) after about
    1.5 min of training, and Best val loss was the step-0 value (the untrained model's)."""
    run_dir = _run("resumed")
    events = [{"event": "started", "time": 1000.0, "total_steps": 300}]
    events.append({"event": "eval", "time": 1001.0, "step": 0, "val_loss": 1.5})
    events += [_progress(s, 1000.0 + s, 300) for s in range(1, 81)]
    events.append({"event": "eval", "time": 1060.0, "step": 50, "val_loss": 2.4})
    events.append({"event": "checkpoint", "time": 1080.0, "step": 80, "path": "c"})
    events.append(
        {
            "event": "finished",
            "time": 1080.0,
            "status": "stopped",
            "summary": {"steps": 80, "wall_seconds": 80.0},
        }
    )
    # Paused for an hour, then resumed from the checkpoint at step 80 and stopped at 94; the
    # resumed worker logs while it loads, before its `started` event.
    events.append({"event": "log", "time": 4670.0, "level": "info", "message": "Memory: ..."})
    events.append({"event": "started", "time": 4680.0, "total_steps": 300, "resumed_from": 80})
    events += [_progress(s, 4680.0 + (s - 80), 300) for s in range(81, 95)]
    events.append({"event": "eval", "time": 4690.0, "step": 90, "val_loss": 2.2})
    events.append({"event": "eval", "time": 4691.0, "step": 90, "val_loss": 2.1})  # later wins
    events.append(
        {
            "event": "finished",
            "time": 4694.0,
            "status": "stopped",
            "summary": {"steps": 94, "wall_seconds": 14.0},
        }
    )
    _write(run_dir, events)
    write_status(
        run_dir,
        "stopped",
        step=94,
        total_steps=300,
        best_val_loss=1.5,
        summary={"wall_seconds": 14.0},
    )
    n = run_numbers(run_dir)
    assert n.step == 94
    assert abs(n.active_seconds - (80.0 + 14.0)) < 1e-6
    assert (n.best_val_step, n.best_val_loss) == (90, 2.1)

    from app.services import run_rows

    row = next(r for r in run_rows() if r.path == run_dir)
    assert (row.step, row.total_steps, row.best_val_loss) == (94, 300, 2.1)
    assert abs(row.duration - 94.0) < 1e-6


def test_a_resume_that_goes_back_reports_where_the_run_is_now():
    """A run killed at step 30 with its last checkpoint at 20 resumes from 20: it has reached
    the step of its latest segment, not the highest step it ever printed."""
    run_dir = _run("back")
    events = [{"event": "started", "time": 0.0, "total_steps": 104}]
    events += [_progress(s, float(s)) for s in range(1, 31)]
    events.append({"event": "started", "time": 100.0, "total_steps": 104, "resumed_from": 20})
    events += [_progress(s, 100.0 + s - 20) for s in range(21, 26)]
    _write(run_dir, events)
    write_status(run_dir, "interrupted", step=20, total_steps=104)
    n = run_numbers(run_dir)
    assert n.step == 25 and n.best_val_loss is None
    assert abs(n.active_seconds - 35.0) < 1e-6
