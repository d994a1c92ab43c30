"""The chat page's controller: owns the loaded ChatModel and the conversations, runs loading and
generation on worker threads (app.tasks.Task) and re-emits what happens as typed signals.

All of it runs on one dedicated worker thread: MLX arrays and streams belong to the thread that
made them (arrays loaded lazily on one thread cannot be evaluated on another), so loading, adapter
switches, generation and freeing never hop threads.

Widgets never touch the model: they call `load`, `send`, `regenerate`, `edit_and_resend`, `stop`
and listen. One operation at a time: a load asked for while a reply streams stops the reply first
and starts when it has ended; switching to another model closes (frees) the old one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from PySide6.QtCore import QObject, QThreadPool, Signal

from app import tasks
from app.tasks import Task

SIDES = ("single", "base", "tuned")


class ChatController(QObject):
    sig_loading = Signal(str)  # what is being loaded, in words
    sig_loaded = Signal(object)  # ModelState
    sig_load_failed = Signal(str, str)  # message, hint
    sig_busy_changed = Signal(bool)  # a reply is streaming
    sig_reply_started = Signal(str, str)  # side, label of what produces it
    sig_text = Signal(str, str)  # side, piece of text
    sig_notice = Signal(str, str)  # side, notice
    sig_reply_done = Signal(str, object)  # side, engine Reply
    sig_failed = Signal(str, str)  # message, hint (a reply that could not be made)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.model = None  # engine.chat.ChatModel
        self.model_ref: str | None = None
        self.adapter_spec: str | None = None
        self.single = None  # ChatSession with the adapter on (or the base model when there is none)
        self.compare = None  # CompareSession, when the model has an adapter
        self.system_prompt = ""
        self.tools: list[dict] | None = None  # tool definitions rendered by the chat template
        self.busy = False
        self.loading = False
        self._task: Task | None = None
        self._cancel: threading.Event | None = None
        self._after_reply: Callable[[], None] | None = None
        # One thread that never expires: every MLX call of the chat happens on it.
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._pool.setExpiryTimeout(-1)

    def _run(self, task: Task, owner: QObject | None = None) -> Task:
        """Task.start, on the chat's own thread instead of the shared pool."""
        if self._pool is None:  # shut down: nothing more runs
            return task
        if owner is not None:
            task.signals.setParent(owner)
        task.running = True
        tasks._live.add(task)
        self._pool.start(task)
        return task

    def wait(self, timeout_ms: int = 20_000) -> bool:
        """Wait for the chat thread's work (tests, quitting)."""
        return self._pool is None or self._pool.waitForDone(timeout_ms)

    # -- model --------------------------------------------------------------------------------
    @property
    def has_adapter(self) -> bool:
        return self.model is not None and self.model.adapter is not None

    def load(self, model_ref: str | None, adapter_spec: str | None) -> None:
        """Load `model_ref` with `adapter_spec` (RUN[:STEP] or None) on a worker thread. The same model
        with another adapter swaps only the adapter; another model frees the old one first."""
        if self.busy:
            self.stop()
            self._after_reply = lambda: self.load(model_ref, adapter_spec)
            return
        if self.loading:
            return
        model_ref = (model_ref or "").strip() or None
        adapter_spec = (adapter_spec or "").strip() or None
        old = self.model
        same = (
            old is not None
            and not old.closed
            and model_ref is not None
            and model_ref == self.model_ref
        )

        def work():
            from engine.chat import ChatModel

            if same:
                old.set_adapter(adapter_spec)
                return old
            if old is not None:
                old.close()  # frees the old model before the new one takes its memory
            return ChatModel.load(model_ref, adapter_spec)

        if not same:
            self.model = None
            self.single = self.compare = None
        self.loading = True
        what = model_ref or "the run's model"
        self.sig_loading.emit(
            f"Loading {what}" + (f" with {adapter_spec}" if adapter_spec else "") + "…"
        )
        task = Task(work)
        task.sig_done.connect(lambda m: self._on_load_done(m, model_ref, adapter_spec))
        task.sig_failed.connect(self._on_load_failed)
        self._load_task = self._run(task, self)

    def _on_load_done(self, model, model_ref, adapter_spec) -> None:
        from engine.chat import ChatSession, CompareSession

        self.loading = False
        history = list(self.single.history) if self.single is not None else []
        self.model = model
        self.model_ref = model_ref or model.model_path
        self.adapter_spec = adapter_spec
        self.single = ChatSession(
            model, use_adapter=True, system_prompt=self.system_prompt, tools=self.tools
        )
        self.single.history = history  # the conversation goes on with the new model or adapter
        self.compare = (
            CompareSession(model, system_prompt=self.system_prompt, tools=self.tools)
            if model.adapter is not None
            else None
        )
        self.sig_loaded.emit(self.state())

    def _on_load_failed(self, message: str, hint: str) -> None:
        self.loading = False
        self.sig_load_failed.emit(message, hint)

    def state(self) -> dict:
        m = self.model
        if m is None:
            return {}
        template, source = m.template()
        return {
            "name": m.name,
            "model": m.model_path,
            "base_label": m.label(False),
            "tuned_label": m.label(True) if m.adapter is not None else None,
            "adapter": str(m.adapter.path) if m.adapter is not None else None,
            "template_source": source,
            "context_length": m.context_length,
        }

    def close(self) -> None:
        """Free the model (on a worker thread; never blocks the GUI)."""
        self.stop()
        model, self.model = self.model, None
        self.single = self.compare = None
        if model is not None:
            task = Task(model.close)
            self._close_task = self._run(task)

    def shutdown(self, timeout_ms: int = 20_000) -> None:
        """Free the model and end the chat thread (window closing, app quitting).

        The thread must be gone before the interpreter exits: MLX's per-thread streams outliving
        MLX's own teardown crash the process at exit.
        """
        self.close()
        self._pool.waitForDone(timeout_ms)
        pool, self._pool = self._pool, None
        if pool is not None:
            import shiboken6

            pool.setParent(None)
            shiboken6.delete(pool)  # the destructor wakes and joins the idle thread

    # -- conversation -------------------------------------------------------------------------
    def set_system_prompt(self, text: str) -> None:
        self.system_prompt = text
        for session in self._sessions():
            session.system_prompt = text

    def set_tools(self, tools: list[dict] | None) -> None:
        self.tools = tools or None
        for session in self._sessions():
            session.tools = self.tools

    def _sessions(self):
        out = [self.single] if self.single is not None else []
        if self.compare is not None:
            out += [self.compare.base, self.compare.tuned]
        return out

    def session(self, side: str):
        if side == "single":
            return self.single
        return getattr(self.compare, side) if self.compare is not None else None

    def reset(self, compare: bool | None = None) -> None:
        """Forget the conversation of one mode (None: both)."""
        if compare in (None, False) and self.single is not None:
            self.single.reset()
        if compare in (None, True) and self.compare is not None:
            self.compare.reset()

    def send(self, text: str, settings, compare: bool = False) -> bool:
        return self._start(lambda s, c: s.send(text, settings, cancel=c), compare)

    def regenerate(self, settings, compare: bool = False) -> bool:
        return self._start(lambda s, c: s.regenerate(settings, cancel=c), compare)

    def edit_and_resend(self, index: int, text: str, settings, compare: bool = False) -> bool:
        return self._start(lambda s, c: s.edit_and_resend(index, text, settings, cancel=c), compare)

    def stop(self) -> None:
        """Cancel the reply in progress (after the token being computed) and skip the other side's."""
        if self._cancel is not None:
            self._cancel.set()

    def _start(self, op: Callable, compare: bool) -> bool:
        if self.busy or self.loading or self.model is None:
            return False
        if compare and self.compare is None:
            self.sig_failed.emit(
                "Compare mode needs a run.", "Pick a run to compare with its base model."
            )
            return False
        sides = ["base", "tuned"] if compare else ["single"]
        cancel = threading.Event()
        self._cancel = cancel

        def stream(progress) -> None:  # worker thread
            for side in sides:
                session = self.session(side)
                events: Iterator = op(session, cancel)
                progress(("start", side, session.label))
                if cancel.is_set():
                    # Stopped before this side began (compare mode, during the base reply):
                    # it takes the same turn with an empty stopped reply, so both sides settle
                    # and their histories keep the same messages.
                    progress(("done", side, session.settle_stopped(events)))
                    continue
                for event in events:
                    progress(
                        (event.kind, side, event.reply if event.kind == "done" else event.text)
                    )

        task = Task(stream)
        task.sig_progress.connect(self._on_task_progress)
        task.sig_failed.connect(self.sig_failed)
        task.sig_ended.connect(self._on_task_ended)
        self.busy = True
        self.sig_busy_changed.emit(True)
        self._task = self._run(task, self)
        return True

    def _on_task_progress(self, item) -> None:
        kind, side, payload = item
        if kind == "start":
            self.sig_reply_started.emit(side, payload)
        elif kind == "text":
            self.sig_text.emit(side, payload)
        elif kind == "notice":
            self.sig_notice.emit(side, payload)
        elif kind == "done":
            self.sig_reply_done.emit(side, payload)

    def _on_task_ended(self) -> None:
        self.busy = False
        self._task = None
        self.sig_busy_changed.emit(False)
        after, self._after_reply = self._after_reply, None
        if after is not None:
            after()
