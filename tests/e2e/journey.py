"""The first hour with Lathe, driven in a real, shown, focused window (issue 17).

    DISPLAY=:N QT_QPA_PLATFORM=xcb python -m tests.e2e.journey OUT.json WORKDIR

Run it on an X server with a window manager (tests/e2e/xserver.py starts Xvfb and openbox). It
launches the app as a first launch in a fresh workspace (LATHE_HOME=WORKDIR/home), then goes
through a new user's journey with real Qt input events (QTest mouse clicks and key presses on the
real window) and a real drag and drop sequence (QDragEnterEvent, QDragMoveEvent and QDropEvent
with the sample folder's file URL, sent to the window: Xvfb has no second application that could
start an X drag). It writes what it saw to OUT.json; tests/e2e/test_journey.py asserts on it and
bench/gui_responsiveness.py --journey reports its timings.

Every step is recorded even when an earlier one failed, so one bug does not hide the others.
Throughout, a probe samples which pages are visible (every 10 ms, and after every page's show or
hide event) and a 5 ms timer measures how long the GUI thread goes without running its loop.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

STARTED_AT = time.time()  # before Qt and the app are imported: the launch starts here

ROOT = Path(__file__).resolve().parents[2]
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
DEADLINE_S = float(os.environ.get("LATHE_JOURNEY_DEADLINE", "300"))
# Native-code packages whose first import in the window's process holds the GIL (issue 17: the
# import runs in a worker process, so the drop must not load any of these here).
HEAVY_MODULES = ("tokenizers", "transformers", "mlx", "mlx_lm", "numpy", "jinja2", "safetensors")

# The journey's own training run: few steps, an evaluation and a checkpoint every 20 steps.
TRAIN_VALUES = {
    "training.iters": 40,
    "training.batch_size": 2,
    "training.steps_per_report": 2,
    "training.steps_per_eval": 10,
    "training.save_every": 10,
    "data.max_seq_length": 128,
    "lora.rank": 4,
}
STOP_AFTER_STEP = 26


class StallSampler(threading.Thread):
    """LATHE_TRACE_STALLS=1: while the GUI thread has not run its loop for over `threshold_s`, take
    its Python stack every few ms; the stacks seen most often, per step, say what the stall was.
    (Native code that holds the GIL shows as the Python line that called it.)"""

    def __init__(self, probe, threshold_s: float = 0.03):
        super().__init__(daemon=True, name="stall-sampler")
        self.probe = probe
        self.threshold = threshold_s
        self.main = threading.main_thread().ident
        self.samples: Counter = Counter()
        self.stopped = False

    def run(self) -> None:
        while not self.stopped:
            time.sleep(0.004)
            last = self.probe.last
            if last is None or time.perf_counter() - last < self.threshold:
                continue
            frames = sys._current_frames()
            frame = frames.get(self.main)
            if frame is None:
                continue
            where = self._where(frame, 8)
            others = tuple(
                sorted(
                    self._where(f, 5)
                    for ident, f in frames.items()
                    if ident not in (self.main, threading.get_ident())
                )
            )
            self.samples[(self.probe.label, where, others)] += 1

    @staticmethod
    def _where(frame, depth: int) -> tuple[str, ...]:
        stack = traceback.extract_stack(frame)[-depth:]
        return tuple(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack)

    def report(self, top: int = 15) -> list[dict]:
        return [
            {"step": step, "samples": n, "stack": list(where), "other_threads": list(others)}
            for (step, where, others), n in self.samples.most_common(top)
        ]


def trace_heavy_imports(record: dict) -> None:
    """LATHE_TRACE_STALLS=1: the thread and stack that first imported each heavy package."""

    def hook(event, args):
        if event != "import":
            return
        top = str(args[0]).split(".")[0]
        if top in HEAVY_MODULES and top not in record:
            stack = traceback.extract_stack()[-12:-1]
            record[top] = {
                "thread": threading.current_thread().name,
                "stack": [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack],
            }

    sys.addaudithook(hook)


class Journey:
    def __init__(self, out: Path, workdir: Path):
        from PySide6.QtCore import QEvent, QObject, QTimer
        from PySide6.QtWidgets import QApplication

        self.out = out
        self.workdir = workdir
        self.obs: dict = {
            "started_at": STARTED_AT,
            "platform": None,
            "errors": {},
            "steps_done": [],
            "page_violations": [],
            "page_samples": 0,
        }
        self.qapp = QApplication.instance() or QApplication(["lathe"])
        self.qapp.setApplicationName("Lathe")
        self.qapp.setOrganizationName("Lathe")
        self.obs["platform"] = self.qapp.platformName()
        from app.theme import apply_theme
        from app.window import MainWindow

        apply_theme(self.qapp)
        self.window = MainWindow()  # remember=True: a first launch in a fresh workspace
        self.window.controller.stop_wait_ms = 60_000
        self.step = "launch"

        journey = self

        class PaintWatch(QObject):
            def eventFilter(self, obj, event):  # noqa: N802 - Qt API
                if event.type() == QEvent.Type.Paint and "first_paint_at" not in journey.obs:
                    journey.obs["first_paint_at"] = time.time()
                    QTimer.singleShot(0, journey.start_watching)
                elif event.type() in (QEvent.Type.Show, QEvent.Type.Hide) and journey.watching:
                    QTimer.singleShot(0, journey.check_pages)
                return False

        self.watching = False
        self.paint_watch = PaintWatch()
        self.window.installEventFilter(self.paint_watch)
        for page in self.window.pages.values():
            page.installEventFilter(self.paint_watch)
        self.page_timer = QTimer()
        self.page_timer.setInterval(10)
        self.page_timer.timeout.connect(self.check_pages)
        from bench.gui_responsiveness import StallProbe

        self.probe = StallProbe(5)
        self.sampler = None
        if os.environ.get("LATHE_TRACE_STALLS"):
            self.sampler = StallSampler(self.probe)
            trace_heavy_imports(self.obs.setdefault("first_heavy_imports", {}))

    # -- probes -------------------------------------------------------------------------------
    def visible_pages(self) -> list[str]:
        return [k for k, v in self.window.pages.items() if v.isVisible()]

    def start_watching(self) -> None:
        if self.watching:
            return
        self.watching = True
        self.page_timer.start()
        self.probe.start()
        if self.sampler is not None:
            self.sampler.start()

    def check_pages(self) -> None:
        if not self.watching or not self.window.isVisible():
            return
        self.obs["page_samples"] += 1
        pages = self.visible_pages()
        if len(pages) != 1:
            v = self.obs["page_violations"]
            if not v or v[-1]["pages"] != pages or v[-1]["step"] != self.step:
                v.append(
                    {"t": round(time.time() - STARTED_AT, 3), "step": self.step, "pages": pages}
                )

    # -- helpers ------------------------------------------------------------------------------
    def wait_until(self, predicate, timeout: float, poll_ms: int = 20) -> bool:
        from PySide6.QtTest import QTest

        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            QTest.qWait(poll_ms)
        return True

    def click(self, widget) -> None:
        from PySide6.QtCore import Qt
        from PySide6.QtTest import QTest

        if not widget.isVisible() or not widget.isEnabled():
            raise AssertionError(
                f"{type(widget).__name__} '{getattr(widget, 'text', lambda: '')()}' cannot be "
                f"clicked (visible {widget.isVisible()}, enabled {widget.isEnabled()})"
            )
        QTest.mouseClick(widget, Qt.MouseButton.LeftButton)

    def click_sidebar(self, key: str) -> None:
        from PySide6.QtCore import Qt
        from PySide6.QtTest import QTest

        bar = self.window.sidebar
        row = next(
            i for i in range(bar.count()) if bar.item(i).data(Qt.ItemDataRole.UserRole) == key
        )
        rect = bar.visualItemRect(bar.item(row))
        QTest.mouseClick(bar.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())

    def menu_action(self, menu_title: str, text: str):
        for menu_action in self.window.menuBar().actions():
            if menu_action.text().replace("&", "") == menu_title:
                for action in menu_action.menu().actions():
                    if action.text().replace("&", "") == text:
                        return action
        raise AssertionError(f"no menu item {menu_title} > {text}")

    def run_step(self, name: str, fn) -> None:
        self.step = name
        self.probe.label = name
        t = time.monotonic()
        before = set(sys.modules)
        try:
            fn()
            self.obs["steps_done"].append(name)
        except Exception:  # noqa: BLE001 - recorded; the journey goes on
            self.obs["errors"][name] = traceback.format_exc()[-3000:]
        self.obs.setdefault("step_seconds", {})[name] = round(time.monotonic() - t, 2)
        # Which heavy native packages this step loaded into the window's process.
        new = {m.split(".")[0] for m in set(sys.modules) - before}
        self.obs.setdefault("heavy_imports_by_step", {})[name] = sorted(
            m for m in new if m in HEAVY_MODULES
        )
        self.save()

    def save(self) -> None:
        self.obs["stall"] = {
            "max_ms": self.probe.max_stall_ms if self.probe.gaps else None,
            "p99_ms": self.probe.p99_ms() if self.probe.gaps else None,
            "max_busy_ms": self.probe.max_busy_ms if self.probe.cpu else None,
            "ticks": len(self.probe.gaps),
            "worst_by_step_ms": {
                k: round(max(0.0, v - self.probe.interval) * 1000, 1)
                for k, v in self.probe.worst.items()
            },
            # The GUI thread's own CPU time within each step's longest gap: near the gap, the
            # app's work; far below it, the OS ran other processes (a loaded machine).
            "worst_gap_cpu_by_step_ms": {
                k: round(v * 1000, 1) for k, v in self.probe.worst_cpu.items()
            },
            # Linux: each gap without the time the ready GUI thread waited for a core (the OS ran
            # other processes): the stall the app itself caused, whatever the machine's load.
            "max_own_ms": self.probe.max_own_stall_ms,
            "worst_own_by_step_ms": {
                k: round(max(0.0, v - self.probe.interval) * 1000, 1)
                for k, v in self.probe.worst_own.items()
            },
        }
        if self.sampler is not None:
            self.obs["stall_stacks"] = self.sampler.report()
        self.obs["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.obs["cpu_count"] = os.cpu_count()
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.obs, indent=1, default=str))
        tmp.replace(self.out)

    # -- the journey --------------------------------------------------------------------------
    def run(self) -> None:
        c = self.window.controller
        self.segments: list[dict] = []
        self.evals: list[tuple[int, float]] = []
        self.progress_steps: list[int] = []
        c.sig_started.connect(lambda e: self.segments.append({"start": time.time(), "event": e}))
        c.sig_finished.connect(self._on_finished)
        c.sig_eval.connect(lambda e: self.evals.append((int(e.get("step", 0)), e.get("val_loss"))))
        c.sig_progress.connect(lambda e: self.progress_steps.append(int(e.get("step", 0))))
        for name, fn in (
            ("first_launch", self.first_launch),
            ("demo", self.demo),
            ("help_welcome", self.help_welcome),
            ("drop_sample", self.drop_sample),
            ("use_for_training", self.use_for_training),
            ("train_stop_resume", self.train_stop_resume),
            ("runs_row", self.runs_row),
            ("chat_compare", self.chat_compare),
            ("export_twice", self.export_twice),
        ):
            self.run_step(name, fn)
        self.finish()

    def _on_finished(self, state: str, details: dict) -> None:
        if self.segments and "end" not in self.segments[-1]:
            self.segments[-1]["end"] = time.time()
            self.segments[-1]["state"] = state

    def first_launch(self) -> None:
        """A first launch, the window given focus by the window manager; look again after 1 s."""
        from PySide6.QtTest import QTest

        w = self.window
        w.activateWindow()
        w.raise_()
        self.obs["window_active"] = self.wait_until(w.isActiveWindow, 10)
        self.obs["page_at_show"] = w.current_page()
        QTest.qWait(1000)
        focus = self.qapp.focusWidget()
        self.obs["first_launch"] = {
            "page": w.current_page(),
            "visible": self.visible_pages(),
            "focus": type(focus).__name__ if focus is not None else None,
            "focus_name": focus.objectName() if focus is not None else None,
        }

    def demo(self) -> None:
        """Welcome's "Start the demo run": Train, and only Train; then Stop."""
        from PySide6.QtTest import QTest

        w = self.window
        if not w.welcome.demo_button.isVisible():
            # Today's code left Welcome on its own (item 1); Help > Welcome brings it back.
            self.obs["demo_needed_help_welcome"] = True
            self.menu_action("Help", "Welcome").trigger()
            QTest.qWait(200)
        self.click(w.welcome.demo_button)
        self.wait_until(lambda: w.controller.active, 60)
        QTest.qWait(300)
        self.obs["after_demo"] = {"page": w.current_page(), "visible": self.visible_pages()}
        form = w.train.settings
        self.obs["demo_form"] = {
            "epochs": form.fields["training.epochs"].text(),
            "layers": form.fields["lora.num_layers"].text(),
            "steps": form.fields["training.iters"].text(),
        }
        # Stop the demo at once; it winds down (a checkpoint) while the journey goes on.
        self.click(w.train.stop_button)

    def help_welcome(self) -> None:
        """Help > Welcome, then "Go to the app": one page (Data) on screen afterwards."""
        from PySide6.QtTest import QTest
        from PySide6.QtWidgets import QPushButton

        w = self.window
        self.menu_action("Help", "Welcome").trigger()
        QTest.qWait(200)
        skip = next(b for b in w.welcome.findChildren(QPushButton) if b.text() == "Go to the app")
        skip.setFocus()  # where a keyboard user's focus is when leaving Welcome
        self.click(skip)
        QTest.qWait(300)
        self.obs["after_go_to_app"] = {"page": w.current_page(), "visible": self.visible_pages()}
        for key in ("train", "chat", "runs", "data"):
            self.click_sidebar(key)
            QTest.qWait(100)
            self.obs.setdefault("sidebar_pages", []).append(
                {"asked": key, "page": w.current_page(), "visible": self.visible_pages()}
            )

    def drop_sample(self) -> None:
        """Drag the bundled sample folder over the window and drop it."""
        from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
        from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent

        from engine.workspace import resources_dir

        w = self.window
        sample = resources_dir() / "samples" / "bank-support"
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(sample))])
        actions = Qt.DropAction.CopyAction | Qt.DropAction.MoveAction
        pos = w.stack.mapTo(w, w.stack.rect().center())
        # Shift held: Qt then proposes a Move (as a file manager's drag may), which must be
        # taken as a Copy.
        button, mods = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier
        seen = {}
        enter = QDragEnterEvent(pos, actions, mime, button, mods)
        self.qapp.sendEvent(w, enter)
        seen["enter_accepted"] = enter.isAccepted()
        move = QDragMoveEvent(pos + QPoint(10, 10), actions, mime, button, mods)
        self.qapp.sendEvent(w, move)
        seen["move_accepted"] = move.isAccepted()
        drop = QDropEvent((pos + QPoint(10, 10)).toPointF(), actions, mime, button, mods)
        self.qapp.sendEvent(w, drop)
        seen["drop_accepted"] = drop.isAccepted()
        seen["drop_action"] = drop.dropAction().name
        seen["proposed_action"] = drop.proposedAction().name
        seen["sample_still_there"] = (sample / "train.jsonl").is_file()
        self.wait_until(lambda: w.data.report is not None and not w.data.busy, 90)
        report = w.data.report
        seen.update(
            page=w.current_page(),
            visible=self.visible_pages(),
            train_examples=report.splits.get("train") if report else None,
            test_examples=report.splits.get("test", 0) if report else None,
            dataset_path=str(report.dataset_path) if report and report.dataset_path else None,
            use_enabled=w.data.use_button.isEnabled(),
        )
        self.obs["drop"] = seen

    def use_for_training(self) -> None:
        from PySide6.QtTest import QTest

        w = self.window
        self.click(w.data.use_button)
        QTest.qWait(300)
        self.obs["use"] = {
            "page": w.current_page(),
            "visible": self.visible_pages(),
            "dataset_field": w.train.settings.data.currentText(),
        }

    def train_stop_resume(self) -> None:
        """Train stories260K for a few steps, Stop, Resume, let it finish."""
        from PySide6.QtCore import Qt
        from PySide6.QtTest import QTest

        w = self.window
        page, c = w.train, w.controller
        self.obs["demo_stopped"] = self.wait_until(lambda: not c.active, 120)
        self.obs["demo_state"] = page.final_state
        form = page.settings
        line = form.model.lineEdit()
        line.setFocus()
        line.selectAll()
        QTest.keyClicks(line, str(STORIES))
        QTest.keyClick(line, Qt.Key.Key_Tab)
        form.set_values(TRAIN_VALUES)
        n_segments = len(self.segments)
        self.click(page.start_button)
        self.wait_until(lambda: c.active, 30)
        self.obs["train_started"] = c.active
        self.wait_until(
            lambda: (c.last_progress or {}).get("step", 0) >= STOP_AFTER_STEP or not c.active, 120
        )
        self.click(page.stop_button)
        self.wait_until(lambda: not c.active, 90)
        self.wait_until(lambda: not page.result.isHidden(), 20)
        QTest.qWait(300)  # the stats timer runs: the bar must keep the step the message says
        run_dir = Path(str(page.final_details.get("run_dir")))
        self.run_dir = run_dir
        self.obs["stopped"] = {
            "state": page.final_state,
            "message": page.result_text.text(),
            "bar": page.progress.format(),
            "bar_value": page.progress.value(),
            "last_progress_step": (page.final_details.get("last_progress") or {}).get("step"),
            "summary_steps": ((page.final_details.get("finished") or {}).get("summary") or {}).get(
                "steps"
            ),
        }
        QTest.qWait(1500)  # a pause between the two segments: not training time
        self.click(page.resume_button)
        self.wait_until(lambda: c.active, 30)
        self.wait_until(lambda: not c.active, 180)
        self.wait_until(lambda: not page.result.isHidden(), 20)
        xs = list(page.chart.train.xs)
        self.obs["resumed"] = {
            "state": page.final_state,
            "message": page.result_text.text(),
            "bar": page.progress.format(),
            "chart_steps_increase": all(b > a for a, b in zip(xs, xs[1:])),
            "chart_points": len(xs),
        }
        segs = self.segments[n_segments:]
        self.obs["segments"] = [
            {"seconds": round(s.get("end", time.time()) - s["start"], 3), "state": s.get("state")}
            for s in segs
        ]
        self.obs["expected"] = {
            "total_steps": int(segs[-1]["event"].get("total_steps") or 0) if segs else None,
            "final_step": self.progress_steps[-1] if self.progress_steps else None,
            "seconds": round(sum(s.get("end", time.time()) - s["start"] for s in segs), 3),
            "evals": [e for e in self.evals if e[0] > 0],
            "step0_eval": [e for e in self.evals if e[0] == 0],
        }

    def runs_row(self) -> None:
        from PySide6.QtCore import Qt
        from PySide6.QtTest import QTest

        from app.pages.runs import COLUMNS

        w = self.window
        self.click_sidebar("runs")
        QTest.qWait(200)
        run_dir = str(self.run_dir)

        def item():
            t = w.runs.table
            for i in range(t.topLevelItemCount()):
                it = t.topLevelItem(i)
                if it.data(0, Qt.ItemDataRole.UserRole) == run_dir and "completed" in it.text(1):
                    return it
            return None

        if not self.wait_until(lambda: item() is not None, 30):
            w.runs.refresh()
            self.wait_until(lambda: item() is not None, 30)
        it = item()
        self.obs["runs_row"] = {COLUMNS[i]: it.text(i) for i in range(len(COLUMNS))} if it else None
        self.obs["runs_visible"] = self.visible_pages()

    def chat_compare(self) -> None:
        """Open the run in Chat, compare with base, Stop during Regenerate, send again."""
        from PySide6.QtCore import Qt
        from PySide6.QtTest import QTest

        w = self.window
        chat = w.chat
        w.runs.select_run(self.run_dir)
        QTest.qWait(200)
        self.click(w.runs.chat_button)
        self.wait_until(
            lambda: chat.controller.model is not None and not chat.controller.loading, 90
        )
        self.obs["chat_loaded"] = chat.controller.model is not None
        self.obs["chat_visible"] = self.visible_pages()
        self.click(chat.compare_box)
        QTest.qWait(100)
        chat.temperature.setValue(0.0)
        chat.max_tokens.setValue(8)
        chat.input.setFocus()
        QTest.keyClicks(chat.input, "Once upon a time")
        QTest.keyClick(chat.input, Qt.Key.Key_Return)
        self.wait_until(lambda: not chat.controller.busy, 60)
        chat.max_tokens.setValue(400)
        texts: list[str] = []
        chat.controller.sig_text.connect(lambda side, _t: texts.append(side))
        self.click(chat.regenerate_button)
        # Stop while the base side streams (its first piece is on screen): the tuned side has
        # not begun.
        self.wait_until(lambda: len(texts) >= 1 or not chat.controller.busy, 60, poll_ms=2)
        self.obs["stopped_during"] = texts[-1] if texts else None
        if chat.controller.busy:
            self.click(chat.stop_button)
        self.wait_until(lambda: not chat.controller.busy, 60)
        QTest.qWait(300)
        cmp = chat.controller.compare
        self.obs["chat_after_stop"] = {
            "base_pane_waiting": "waiting for" in chat.base_view.toPlainText(),
            "tuned_pane_waiting": "waiting for" in chat.tuned_view.toPlainText(),
            "base_roles": [m["role"] for m in cmp.base.history],
            "tuned_roles": [m["role"] for m in cmp.tuned.history],
        }
        chat.max_tokens.setValue(8)
        chat.input.setFocus()
        QTest.keyClicks(chat.input, "The end")
        QTest.keyClick(chat.input, Qt.Key.Key_Return)
        self.wait_until(lambda: not chat.controller.busy, 60)
        QTest.qWait(200)
        self.obs["chat_after_next"] = {
            "base_users": [m["content"] for m in cmp.base.history if m["role"] == "user"],
            "tuned_users": [m["content"] for m in cmp.tuned.history if m["role"] == "user"],
            "base_roles": [m["role"] for m in cmp.base.history],
            "tuned_roles": [m["role"] for m in cmp.tuned.history],
            "tuned_pane_waiting": "waiting for" in chat.tuned_view.toPlainText(),
        }

    def export_twice(self) -> None:
        """Runs > Export… a fused folder twice into a chosen folder; the second offers Replace."""
        from PySide6.QtTest import QTest

        from app.export_dialog import ExportDialog

        w = self.window
        self.click_sidebar("runs")
        w.runs.select_run(self.run_dir)
        QTest.qWait(200)
        self.click(w.runs.export_button)
        self.wait_until(lambda: w.findChild(ExportDialog) is not None, 10)
        dialog = w.findChild(ExportDialog)
        out = self.workdir / "my exports"
        out.mkdir(parents=True, exist_ok=True)
        dialog.kind.setCurrentIndex(dialog.kind.findData("fuse"))
        record: dict = {}
        self.obs["export"] = record
        if hasattr(dialog, "set_folder"):
            dialog.set_folder(str(out))  # what "Choose…" does once its folder dialog returns
        else:
            record["no_destination_choice"] = True

        def run_once():
            self.click(dialog.export_button)
            QTest.qWait(50)
            self.wait_until(lambda: dialog.task is None and dialog.export_button.isEnabled(), 120)

        run_once()
        record["first"] = dialog.status.text()
        record["first_path"] = str(getattr(dialog, "result_path", "") or "")
        record["reveal_offered"] = bool(getattr(dialog, "reveal_button", None)) and (
            dialog.reveal_button.isVisible() and dialog.copy_button.isVisible()
        )
        run_once()
        record["second"] = dialog.status.text()
        replace = getattr(dialog, "replace_button", None)
        record["replace_offered"] = bool(replace is not None and replace.isVisible())
        if record["replace_offered"]:
            self.click(replace)
            QTest.qWait(50)
            self.wait_until(lambda: dialog.task is None and dialog.export_button.isEnabled(), 120)
        record["after_replace"] = dialog.status.text()
        record["status_fits"] = dialog.status.height() >= dialog.status.heightForWidth(
            dialog.status.width()
        )
        dialog.reject()

    def finish(self) -> None:
        from PySide6.QtTest import QTest

        self.step = "quit"
        self.watching = False
        self.page_timer.stop()
        self.probe.stop()
        if self.sampler is not None:
            self.sampler.stopped = True
        self.obs["finished"] = True
        self.save()
        w = self.window
        if w.controller.active:
            w.controller.kill()
        w.quit_confirmed = True
        w.close()
        QTest.qWait(100)
        self.qapp.quit()


def main(argv: list[str]) -> int:
    out, workdir = Path(argv[0]), Path(argv[1])
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["LATHE_HOME"] = str(workdir / "home")
    sys.path.insert(0, str(ROOT))
    from PySide6.QtCore import QTimer

    import app  # noqa: F401 - the PySide6/Python 3.11 None workaround, before any Qt call

    journey = Journey(out, workdir)
    window = journey.window
    window.show()
    QTimer.singleShot(0, window.load_initial_data)
    QTimer.singleShot(0, journey.run)

    def give_up():
        journey.obs["errors"]["deadline"] = f"the journey ran past {DEADLINE_S:.0f} s"
        journey.save()
        os._exit(3)

    QTimer.singleShot(int(DEADLINE_S * 1000), give_up)
    code = journey.qapp.exec()
    journey.save()
    # MLX ran on worker threads (chat, export): skip its exit-time destructors (see app.__main__).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
