"""`python -m app --screenshot PAGE FILE.png`: render one page offscreen with demo data.

Demo data lives in a fresh temporary workspace (never the user's): a few run folders made through
engine.runs with synthetic curves, the bundled sample dataset imported for real, and the demo
model in the library when it is on this machine.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

PAGES = ("welcome", "models", "data", "train", "runs", "chat")


def synthetic_events(
    run_id: str,
    run_dir: Path,
    total: int,
    stop_at: int | None = None,
    seed: int = 0,
    finish: str | None = "completed",
) -> list[dict]:
    """A plausible loss curve (demo data for screenshots only)."""
    rng = random.Random(seed)
    t = time.time() - 3600
    events = [
        {
            "event": "started",
            "time": t,
            "run_id": run_id,
            "run_dir": str(run_dir),
            "total_steps": total,
            "resumed_from": None,
            "config": {
                "model": "mlx-community/Qwen2.5-0.5B-Instruct-4bit",
                "data": "bank-support",
                "method": "lora",
                "train_examples": 288,
            },
        }
    ]
    end = stop_at or total
    best = None
    for step in range(1, end + 1):
        base = 0.55 + 2.1 * math.exp(-step / (total / 6))
        loss = base * (1 + rng.gauss(0, 0.07))
        events.append(
            {
                "event": "progress",
                "time": t + step * 2.1,
                "step": step,
                "total": total,
                "train_loss": loss,
                "learning_rate": 1e-4 * min(1, step / 30),
                "tokens_per_second": 812 + rng.gauss(0, 30),
                "trained_tokens": step * 900,
                "peak_memory_gb": 3.7,
                "eta_seconds": (total - step) * 2.1,
            }
        )
        if step % 50 == 0:
            v = 0.62 + 2.0 * math.exp(-step / (total / 5)) + 0.03 * step / total
            best = v if best is None else min(best, v)
            events.append({"event": "eval", "time": t + step * 2.1, "step": step, "val_loss": v})
    if finish:
        events.append(
            {
                "event": "finished",
                "time": t + end * 2.1 + 5,
                "status": finish,
                "adapter_path": str(run_dir / "adapters"),
                "summary": {"steps": end, "best_val_loss": best, "wall_seconds": end * 2.1 + 20},
            }
        )
    return events


def make_demo_runs() -> list[Path]:
    from engine.config import RunConfig
    from engine.runs import create_run, write_status

    out = []
    specs = [
        ("bank-support", 600, None, "completed", 1),
        ("support-style", 900, 420, "stopped", 2),
        ("faq-long", 1200, 260, None, 3),
    ]
    for name, total, stop_at, finish, seed in specs:
        cfg = RunConfig()
        cfg.name = name
        cfg.model.path = "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
        cfg.data.path = f"/Users/demo/Datasets/{name}.jsonl"
        run_dir = create_run(cfg)
        events = synthetic_events(run_dir.name, run_dir, total, stop_at, seed, finish)
        with open(run_dir / "events.jsonl", "w", encoding="utf-8") as fh:
            for e in events:
                fh.write(json.dumps(e) + "\n")
        evals = [e["val_loss"] for e in events if e["event"] == "eval"]
        steps = stop_at or total
        state = finish or "running"
        extra = {"pid": 999_999_999} if state == "running" else {}
        start = events[0]["time"]
        write_status(
            run_dir,
            state,
            "" if state != "stopped" else "stop requested",
            step=steps,
            total_steps=total,
            best_val_loss=min(evals) if evals else None,
            created=start,
            started=start,
            finished=start + steps * 2.1 + 20,
            **extra,
        )
        if finish:
            (run_dir / "adapters").mkdir(exist_ok=True)
            (run_dir / "adapters" / "adapters.safetensors").write_bytes(b"")
        out.append(run_dir)
    return out


def _wait(app, cond, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while time.time() < end and not cond():
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()


def offscreen_window(home_prefix: str):
    """(QApplication, MainWindow) drawn offscreen at 1280x820, in a fresh throwaway workspace.

    For screenshots and benchmarks: nothing of the user's (workspace, window geometry) is touched.
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["LATHE_HOME"] = tempfile.mkdtemp(prefix=home_prefix)
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(["lathe"])
    from app.theme import apply_theme
    from app.window import MainWindow

    apply_theme(app)
    window = MainWindow(remember=False)
    window.resize(1280, 820)
    return app, window


def render(page: str, file: str) -> int:
    if page not in PAGES:
        print(f"Unknown page '{page}'. Choose one of: {', '.join(PAGES)}.", file=sys.stderr)
        return 2
    app, window = offscreen_window("lathe-screenshot-")
    from PySide6.QtCore import QThreadPool

    pool = QThreadPool.globalInstance()

    if page in ("runs", "train"):
        runs = make_demo_runs()
    if page == "models":
        from engine.workspace import shared_stories_model

        stories = shared_stories_model()
        if stories is not None:
            from engine.models import import_model

            import_model(stories)
    window.show()
    window.load_initial_data()
    _wait(app, lambda: pool.activeThreadCount() == 0, 30)
    window.show_page(page)

    if page == "data":
        from app.services import sample_dataset

        window.data.open_path(sample_dataset())
        _wait(app, lambda: window.data.report is not None or window.data.error.isVisible(), 120)
        items = window.data.problems
        if items.count():
            items.setCurrentRow(0)
        _wait(app, lambda: pool.activeThreadCount() == 0, 10)
    elif page == "train":
        # A run in progress, replayed from demo events through the controller's parser.
        from app.controller import RUNNING

        c = window.controller
        c.state = RUNNING
        c.run_dir = runs[1]
        window.train._on_controller_state_changed(RUNNING)
        window.train._reset_view("bank-support")
        events = synthetic_events("demo", runs[1], 900, 420, 2, finish=None)
        for e in events:
            c.handle_line(json.dumps(e))
        window.train.settings.model.setEditText("mlx-community/Qwen2.5-0.5B-Instruct-4bit")
        window.train.settings.data.setEditText("bank-support")
        window.train.settings.fields["data.max_seq_length"].setValue(512)
        window.train.settings.fields["training.batch_size"].setValue(2)
        window.train.refresh_fit()
        window.train.log_toggle.setChecked(True)
        _wait(app, lambda: window.train.fit_report is not None, 20)
        _wait(app, lambda: False, 0.4)
    elif page == "runs":
        _wait(app, lambda: window.runs.rows, 20)
        window.runs.table.topLevelItem(0).setSelected(True)
        _wait(app, lambda: window.runs.chart.point_count > 0, 20)
    elif page == "chat":
        # A real short exchange with stories260K when it is on this machine (the demo model may
        # be SmolLM2 now, which takes minutes to load and answer on a loaded CPU).
        from engine.workspace import shared_stories_model

        chat = window.chat
        chat.set_run(None)
        _wait(app, lambda: pool.activeThreadCount() == 0, 10)
        demo = shared_stories_model()
        if demo is not None:
            chat.model.setEditText(str(demo))
            chat.load()
            _wait(app, lambda: chat.controller.model is not None or chat.error.isVisible(), 60)
            chat.temperature.setValue(0.0)
            chat.max_tokens.setValue(60)
            chat.system_prompt.setPlainText("You tell short stories for children.")
            chat.send("Tell me a story about a cat.")
            _wait(app, lambda: chat.controller.busy, 5)
            _wait(app, lambda: not chat.controller.busy, 60)
    _wait(app, lambda: False, 0.3)
    image = window.grab()
    Path(file).parent.mkdir(parents=True, exist_ok=True)
    ok = image.save(str(file))
    if page == "train":
        window.controller.state = "idle"
    window.quit_confirmed = True
    window.close()
    print(f"{'Saved' if ok else 'Could not save'} {file}")
    return 0 if ok else 1
