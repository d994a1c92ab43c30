"""GUI responsiveness: does the window stay smooth while a training worker floods it with events,
and how fast does it appear?

1. Startup: `python -m app --probe-startup` (a fresh process each time) prints the moment its main
   window is shown; the time from spawning the process to then is the launch time (target < 1.5 s).
2. Stall under a real run: the app starts `python -m engine train` on a tiny model with
   --steps-per-report 1 (a progress event per step) through the Train page, exactly as a user
   does; a QTimer probe on the GUI thread records the longest gap between its ticks beyond its
   interval (target < 50 ms).
3. Stall under a firehose: a small script replays that run's real events.jsonl to stdout as fast
   as it can, parsed by the same TrainingController and drawn by the same Train page.

4. A large import: a generated JSONL of --import-mb MB is imported on the Data page (in a worker
   process, `lathe-engine data import --progress`) for --import-seconds, then cancelled; the same
   probe measures the stall, and the time Cancel takes is reported.
5. The first-hour journey (--journey, or --journey-only): tests/e2e/journey.py drives a new
   user's journey (Welcome, demo, drop the sample, train, stop, resume, Runs, Chat compare,
   export twice) in a real window on a private Xvfb + openbox; reported: launch to the window's
   first paint (target < 1.5 s) and the GUI-thread stall over the whole journey (target < 100 ms),
   each step's worst, with the machine's load average beside them.

    python bench/gui_responsiveness.py [--runs 3] [--iters 400] [--replay-events 200000]
    python bench/gui_responsiveness.py --journey-only

Runs offscreen when there is no display (QT_QPA_PLATFORM=offscreen).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REPLAY = r"""
import json, sys
events = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
progress = [e for e in events if e["event"] == "progress"]
evals = [e for e in events if e["event"] == "eval"]
n = int(sys.argv[2])
out = sys.stdout
start = next(e for e in events if e["event"] == "started")
start["total_steps"] = n
out.write(json.dumps(start) + "\n")
# The recorded run's events, over and over, renumbered so steps keep increasing as in a long run.
for i in range(n):
    e = dict(progress[i % len(progress)], step=i + 1, total=n)
    out.write(json.dumps(e) + "\n")
    if (i + 1) % 500 == 0 and evals:
        out.write(json.dumps(dict(evals[(i // 500) % len(evals)], step=i + 1)) + "\n")
out.write(json.dumps({"event": "finished", "time": 0, "status": "completed", "adapter_path": "",
                      "summary": {"steps": n}}) + "\n")
out.flush()
"""


def measure_startup(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        env = dict(os.environ, LATHE_HOME=tempfile.mkdtemp(prefix="lathe-bench-"))
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
        t0 = time.time()
        out = subprocess.run(
            [sys.executable, "-m", "app", "--probe-startup"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("window_shown_at=")), None)
        if line is None:
            raise SystemExit(f"the app did not report its window:\n{out.stderr[-2000:]}")
        shown = float(line.split()[0].split("=")[1])
        times.append(shown - t0)
    return times


class StallProbe:
    """A 5 ms QTimer on the GUI thread; the longest gap between ticks beyond 5 ms is the stall."""

    def __init__(self, interval_ms: int = 5):
        from PySide6.QtCore import QTimer

        self.interval = interval_ms / 1000
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.last_cpu = 0.0
        self.gaps: list[float] = []
        self.cpu: list[float] = []  # GUI-thread CPU time used within each gap
        self.label = ""  # what the app is doing now (a journey step); stalls are kept per label
        self.worst: dict[str, float] = {}  # label -> longest gap (s)
        self.worst_cpu: dict[str, float] = {}  # label -> GUI-thread CPU time within that gap (s)
        # Linux: time the GUI thread was ready to run but waited for a core (other processes ran):
        # a gap minus this is the stall the app itself caused (its work, or waiting on the GIL,
        # a lock or the disk).
        self._schedstat: str | None = None
        self.last_wait = 0.0
        self.own: list[float] = []  # each gap without its run-queue wait (s)
        self.worst_own: dict[str, float] = {}  # label -> longest such gap (s)

    def start(self) -> None:
        import threading

        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._schedstat = path if os.path.exists(path) else None
        self.last = time.perf_counter()
        self.last_cpu = time.thread_time()
        self.last_wait = self._run_queue_wait()
        self.timer.start()

    def _run_queue_wait(self) -> float:
        if self._schedstat is None:
            return 0.0
        try:
            with open(self._schedstat) as fh:
                return int(fh.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(self) -> None:
        self.timer.stop()

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        self.gaps.append(now - self.last)
        self.cpu.append(cpu - self.last_cpu)
        if now - self.last > self.worst.get(self.label, 0.0):
            self.worst[self.label] = now - self.last
            self.worst_cpu[self.label] = cpu - self.last_cpu
        if self._schedstat is not None:
            wait = self._run_queue_wait()
            own = max(0.0, now - self.last - (wait - self.last_wait))
            self.own.append(own)
            self.worst_own[self.label] = max(self.worst_own.get(self.label, 0.0), own)
            self.last_wait = wait
        self.last, self.last_cpu = now, cpu

    @property
    def max_stall_ms(self) -> float:
        return max(0.0, (max(self.gaps) - self.interval) * 1000) if self.gaps else float("nan")

    @property
    def max_own_stall_ms(self) -> float | None:
        """The longest gap without the time the OS kept the ready GUI thread off the cores
        (Linux; None elsewhere): the stall Lathe itself caused, whatever the machine's load."""
        if not self.own:
            return None
        return max(0.0, (max(self.own) - self.interval) * 1000)

    @property
    def max_busy_ms(self) -> float:
        """The most GUI-thread CPU time spent inside one gap: the part of a stall that is the
        app's own work, as opposed to the OS giving the CPU to other processes."""
        return max(self.cpu) * 1000 if self.cpu else float("nan")

    def p99_ms(self) -> float:
        if not self.gaps:
            return float("nan")
        g = sorted(self.gaps)
        return max(0.0, (g[int(0.99 * (len(g) - 1))] - self.interval) * 1000)


class GcWatch:
    """The longest garbage-collector pause while it is installed (a hidden source of stalls)."""

    def __init__(self):
        import gc

        self.gc = gc
        self.longest = 0.0
        self._t = 0.0

    def __enter__(self):
        self.gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc):
        self.gc.callbacks.remove(self._cb)

    def _cb(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._t)


def run_window(args) -> dict:
    from app.screenshot import offscreen_window
    from engine.config import RunConfig
    from engine.tinymodel import build_tiny_model

    app, window = offscreen_window("lathe-bench-")
    window.show()
    window.show_page("train")
    page, controller = window.train, window.controller

    model = build_tiny_model(Path(os.environ["LATHE_HOME"]) / "tiny-model")
    from app.services import sample_dataset

    cfg = RunConfig()
    cfg.model.path, cfg.data.path = str(model), str(sample_dataset())
    cfg.data.max_seq_length = 256
    cfg.lora.rank, cfg.lora.num_layers = 4, -1
    t = cfg.training
    t.iters, t.batch_size, t.steps_per_report = args.iters, 2, 1
    t.steps_per_eval, t.save_every = 50, 10_000

    def wait_finished(timeout: float) -> tuple[str, dict]:
        box: list = []
        controller.sig_finished.connect(lambda s, d: box.append((s, d)))
        end = time.time() + timeout
        while not box and time.time() < end:
            app.processEvents()
            time.sleep(0.0005)
        if not box:
            raise SystemExit("the worker did not finish in time")
        return box[0]

    results = {}
    # 2. a real training run
    page.settings.set_config(cfg)
    probe = StallProbe()
    events_before = 0
    first_progress = {}
    controller.sig_progress.connect(lambda e: first_progress.setdefault("t", time.perf_counter()))
    if not page.start():
        raise SystemExit(page.result_text.text())
    probe.start()
    state, details = wait_finished(600)
    probe.stop()
    elapsed = time.perf_counter() - first_progress.get("t", time.perf_counter())
    results["real"] = {
        "state": state,
        "events": controller.events_seen - events_before,
        "progress_per_s": args.iters / elapsed if elapsed > 0 else float("nan"),
        "max_stall_ms": probe.max_stall_ms,
        "p99_stall_ms": probe.p99_ms(),
        "max_busy_ms": probe.max_busy_ms,
        "chart_points": page.chart.point_count,
        "paints": page.chart.paints,
    }
    events_file = Path(details["run_dir"]) / "events.jsonl"

    # 3. a firehose replaying that run's events
    probe = StallProbe()
    paints_before = page.chart.paints
    page._reset_view("replay")
    t0 = time.perf_counter()
    controller.start_command(
        sys.executable, ["-c", REPLAY, str(events_file), str(args.replay_events)]
    )
    probe.start()
    with GcWatch() as gcw:
        state, _ = wait_finished(600)
    probe.stop()
    elapsed = time.perf_counter() - t0
    results["replay"] = {
        "state": state,
        "events": controller.events_seen,
        "events_per_s": controller.events_seen / elapsed,
        "max_stall_ms": probe.max_stall_ms,
        "p99_stall_ms": probe.p99_ms(),
        "max_busy_ms": probe.max_busy_ms,
        "chart_points": page.chart.point_count,
        "gc_pause_ms": gcw.longest * 1000,
        "paints": page.chart.paints - paints_before,
    }
    # 4. a large dataset import on the Data page (worker process), cancelled after a while
    if args.import_mb > 0:
        big = Path(os.environ["LATHE_HOME"]) / "big.jsonl"
        line = {
            "messages": [
                {"role": "user", "content": "How do I change my card's PIN? " * 3},
                {"role": "assistant", "content": "Open the app, tap Cards, then PIN. " * 3},
            ]
        }
        with open(big, "w", encoding="utf-8") as fh:
            i = 0
            while fh.tell() < args.import_mb * 1024 * 1024:
                line["messages"][0]["content"] = f"Question {i}: how do I change my card's PIN?"
                fh.write(json.dumps(line) + "\n")
                i += 1
        window.show_page("data")
        data = window.data
        data.preferred_model = str(model)
        probe = StallProbe()
        probe.start()
        t0 = time.perf_counter()
        data.open_path(big)
        end = t0 + args.import_seconds
        while time.perf_counter() < end and data.busy:
            app.processEvents()
            time.sleep(0.0005)
        read = data.progress_label.text()
        t_cancel = time.perf_counter()
        data.cancel()
        while data.busy and time.perf_counter() < t_cancel + 120:
            app.processEvents()
            time.sleep(0.0005)
        probe.stop()
        results["import"] = {
            "file_mb": big.stat().st_size / 2**20,
            "progress": read,
            "cancel_s": time.perf_counter() - t_cancel,
            "max_stall_ms": probe.max_stall_ms,
            "p99_stall_ms": probe.p99_ms(),
            "max_busy_ms": probe.max_busy_ms,
        }
    window.quit_confirmed = True
    window.close()
    return results


def run_journey() -> dict:
    """The e2e journey in a real window (tests/e2e/journey.py) on a private X server."""
    from tests.e2e import xserver

    why = xserver.missing()
    if why:
        return {"skipped": why}
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    server = xserver.start(1440, 900)
    try:
        with tempfile.TemporaryDirectory(prefix="lathe-journey-") as work:
            out = Path(work) / "journey.json"
            spawned = time.time()
            proc = subprocess.run(
                [sys.executable, "-m", "tests.e2e.journey", str(out), str(Path(work) / "w")],
                cwd=ROOT,
                env=server.env(),
                capture_output=True,
                text=True,
                timeout=900,
            )
            if not out.exists():
                raise SystemExit(f"the journey wrote nothing:\n{proc.stderr[-2000:]}")
            obs = json.loads(out.read_text())
            took = time.time() - spawned
    finally:
        server.stop()
    return {
        "window_appeared_s": obs["first_paint_at"] - spawned,
        "stall": obs["stall"],
        "steps_done": obs["steps_done"],
        "errors": sorted(obs["errors"]),
        "step_seconds": obs.get("step_seconds", {}),
        "page_violations": len(obs["page_violations"]),
        "seconds": took,
        "load_before": load_before,
        "load_after": obs.get("load_average"),
        "cpu_count": os.cpu_count(),
    }


def print_journey(j: dict) -> bool:
    if "skipped" in j:
        print(f"journey: skipped ({j['skipped']})")
        return True
    st = j["stall"]
    worst = sorted(st["worst_by_step_ms"].items(), key=lambda kv: -kv[1])[:3]
    cpu = st.get("worst_gap_cpu_by_step_ms") or {}
    own = st.get("max_own_ms")
    own_by = st.get("worst_own_by_step_ms") or {}
    load = j["load_before"] or [float("nan")]
    print(
        f"journey in a real window (Xvfb + openbox, {len(j['steps_done'])} steps, "
        f"{j['seconds']:.0f} s{', errors in ' + ', '.join(j['errors']) if j['errors'] else ''}): "
        f"window's first paint {j['window_appeared_s']:.2f} s after launch (target < 1.5 s); "
        f"max GUI stall {st['max_ms']:.0f} ms, p99 {st['p99_ms']:.0f} ms, longest GUI-thread work "
        f"in one gap {st['max_busy_ms']:.0f} ms"
        + (
            f", longest stall without the time the OS kept the ready GUI thread waiting for a "
            f"core {own:.0f} ms (worst step "
            + max(st["worst_own_by_step_ms"].items(), key=lambda kv: kv[1])[0]
            + ")"
            if own is not None
            else ""
        )
        + " (target < 100 ms); worst steps "
        + ", ".join(
            f"{k} {v:.0f} ms"
            + (f" ({cpu[k]:.0f} ms of it GUI-thread work" if k in cpu else " (")
            + (f", {own_by[k]:.0f} ms without core waits)" if k in own_by else ")")
            for k, v in worst
        )
        + f"; {j['page_violations']} moments with other than one page visible; "
        f"load average {load[0]:.1f} before, {(j['load_after'] or [float('nan')])[0]:.1f} after, "
        f"on {j['cpu_count']} cores"
    )
    return j["window_appeared_s"] < 1.5 and st["max_ms"] < 100 and not j["errors"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="launches to time")
    ap.add_argument("--iters", type=int, default=400, help="steps of the real training run")
    ap.add_argument("--replay-events", type=int, default=200_000, help="progress events replayed")
    ap.add_argument(
        "--import-mb", type=int, default=300, help="size of the dataset imported (0: skip)"
    )
    ap.add_argument("--import-seconds", type=float, default=15, help="import time before Cancel")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--journey", action="store_true", help="also run the real-window journey")
    ap.add_argument("--journey-only", action="store_true", help="only the real-window journey")
    args = ap.parse_args()
    if args.journey_only:
        j = run_journey()
        if args.json:
            print(json.dumps(j, indent=2))
            return 0
        ok = print_journey(j)
        print(
            ("PASS" if ok else "OVER TARGET")
            + " (on a busy machine the OS preempts the GUI: compare the stall with the "
            "GUI-thread work)"
        )
        return 0

    startup = measure_startup(args.runs)
    res = run_window(args)
    res["startup_s"] = {"median": statistics.median(startup), "max": max(startup), "all": startup}
    if args.journey:
        res["journey"] = run_journey()
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    s = res["startup_s"]
    print(
        f"launch to main window shown: median {s['median']:.2f} s, max {s['max']:.2f} s "
        f"over {len(startup)} launches (target < 1.5 s)"
    )
    r = res["real"]
    print(
        f"real worker (engine train, tiny model, a progress event per step): {r['events']} events, "
        f"{r['progress_per_s']:.0f} steps/s, max GUI stall {r['max_stall_ms']:.1f} ms, "
        f"p99 {r['p99_stall_ms']:.1f} ms, longest GUI-thread work in one gap {r['max_busy_ms']:.1f} ms "
        f"(target < 50 ms); run {r['state']}"
    )
    f = res["replay"]
    print(
        f"replayed events.jsonl at full speed: {f['events']} events at {f['events_per_s']:,.0f}/s, "
        f"max GUI stall {f['max_stall_ms']:.1f} ms, p99 {f['p99_stall_ms']:.1f} ms, longest GUI-thread "
        f"work in one gap {f['max_busy_ms']:.1f} ms; "
        f"longest GC pause {f['gc_pause_ms']:.0f} ms; {f['paints']} chart repaints (timer-capped at 20/s), {f['chart_points']} points kept"
    )
    if "import" in res:
        m = res["import"]
        print(
            f"importing a {m['file_mb']:.0f} MB JSONL on the Data page ({m['progress']!r} when "
            f"cancelled): max GUI stall {m['max_stall_ms']:.1f} ms, p99 {m['p99_stall_ms']:.1f} ms, "
            f"longest GUI-thread work in one gap {m['max_busy_ms']:.1f} ms; Cancel took "
            f"{m['cancel_s']:.2f} s"
        )
    ok = s["median"] < 1.5 and r["max_stall_ms"] < 50 and f["max_stall_ms"] < 50
    if "journey" in res:
        ok = print_journey(res["journey"]) and ok
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        ("PASS" if ok else "OVER TARGET") + f" (load average {load:.1f} on {os.cpu_count()} cores: "
        "on a busy machine the OS preempts the GUI; compare stall with GUI-thread work)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
