"""Conversations over a ChatModel: history, system prompt, regenerate, edit and resend, compare."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from engine.chat.adapters import ChatError
from engine.chat.generation import ChatEvent, ChatModel, ChatSettings, Reply, ReplyStats


class ChatSession:
    """One conversation with one side of a ChatModel: the base model or the tuned one.

    `send`, `regenerate` and `edit_and_resend` return a stream of ChatEvents; the user's message
    joins the history at once and the reply when the stream ends (also when it is cancelled, with
    what was generated so far, as a chat app shows it). Run them on a worker thread; `cancel()` may
    be called from any thread.
    """

    def __init__(
        self,
        model: ChatModel,
        *,
        use_adapter: bool = True,
        system_prompt: str = "",
        settings: ChatSettings | None = None,
        tools: list[dict] | None = None,
    ):
        self.model = model
        self.use_adapter = use_adapter
        self.system_prompt = system_prompt
        self.settings = settings or ChatSettings()
        # Tool definitions the model may call (OpenAI's shape), rendered by the chat template.
        self.tools: list[dict] | None = tools or None
        self.history: list[
            dict
        ] = []  # user/assistant turns, oldest first, without the system prompt
        self.replies: list[Reply] = []  # the Reply behind each assistant turn, in order
        self._cancel: threading.Event | None = None

    @property
    def label(self) -> str:
        return self.model.label(self.use_adapter)

    def messages(self) -> list[dict]:
        """The conversation as the model sees it: the system prompt first, when there is one."""
        system = (
            [{"role": "system", "content": self.system_prompt}]
            if self.system_prompt.strip()
            else []
        )
        return system + [dict(m) for m in self.history]

    def send(
        self, text: str, settings: ChatSettings | None = None, cancel: threading.Event | None = None
    ) -> Iterator[ChatEvent]:
        if not text.strip():
            raise ChatError("The message is empty.", "Type something to send.")
        self.history.append({"role": "user", "content": text})
        try:
            return self._respond(settings, cancel, sent=True)
        except Exception:
            self.history.pop()
            raise

    def regenerate(
        self, settings: ChatSettings | None = None, cancel: threading.Event | None = None
    ) -> Iterator[ChatEvent]:
        """A new reply to the last user message, in place of the last reply."""
        if self.history and self.history[-1]["role"] == "assistant":
            self.history.pop()
            if self.replies:
                self.replies.pop()
        if not self.history:
            raise ChatError("There is nothing to regenerate yet.", "Send a message first.")
        return self._respond(settings, cancel)

    def edit_and_resend(
        self,
        index: int,
        text: str,
        settings: ChatSettings | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[ChatEvent]:
        """Replace the user message at `index` in `history`, forget everything after it, reply again."""
        if not (0 <= index < len(self.history)) or self.history[index]["role"] != "user":
            raise ChatError("Only a message you sent can be edited.")
        kept_replies = sum(1 for m in self.history[:index] if m["role"] == "assistant")
        del self.history[index:]
        del self.replies[kept_replies:]
        return self.send(text, settings, cancel)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def settle_stopped(self, stream: Iterator[ChatEvent]) -> Reply:
        """Settle a reply that was stopped before it began, without generating: `stream` is what
        send, regenerate or edit_and_resend returned (their change to the history is made). The
        turn is kept as any stopped reply is, with the text generated so far (none), so the two
        sides of a comparison stopped between their replies keep the same turns."""
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        reply = Reply("", ReplyStats(stop_reason="cancelled"), self.label, self.use_adapter)
        self.history.append({"role": "assistant", "content": ""})
        self.replies.append(reply)
        return reply

    def reset(self) -> None:
        """Forget the conversation (the system prompt and settings stay)."""
        self.history.clear()
        self.replies.clear()

    def reply(self, text: str, settings: ChatSettings | None = None) -> Reply:
        """Send `text` and return the whole reply at once."""
        for event in self.send(text, settings):
            if event.kind == "done":
                return event.reply
        raise AssertionError("a reply stream always ends with a done event")

    def example(self, reply_text: str | None = None) -> dict:
        """The conversation as a training example, the last reply replaced by `reply_text` if given."""
        messages = self.messages()
        if reply_text is not None:
            if not messages or messages[-1]["role"] != "assistant":
                raise ChatError("There is no reply to add yet.", "Wait for the model to answer.")
            messages[-1] = {"role": "assistant", "content": reply_text}
        return {"messages": messages}

    def _respond(self, settings, cancel, sent: bool = False) -> Iterator[ChatEvent]:
        self._cancel = cancel if cancel is not None else threading.Event()
        stream = self.model.stream(
            self.messages(),
            settings or self.settings,
            use_adapter=self.use_adapter,
            cancel=self._cancel,
            tools=self.tools,
        )
        return self._record(stream, sent)

    def _record(self, stream: Iterator[ChatEvent], sent: bool) -> Iterator[ChatEvent]:
        try:
            for event in stream:
                if event.kind == "done":
                    self.history.append({"role": "assistant", "content": event.reply.text})
                    self.replies.append(event.reply)
                yield event
        except ChatError:
            # A message that could not be answered (too long for the context) is not kept, so
            # the user can shorten it and send again.
            if sent and self.history and self.history[-1]["role"] == "user":
                self.history.pop()
            raise


class CompareSession:
    """Compare mode: one prompt, two conversations on one loaded model, base then tuned.

    Both sides share the ChatModel, so the model is in memory once; the adapter is switched off
    for the base side's reply and on for the tuned side's.
    """

    def __init__(
        self,
        model: ChatModel,
        *,
        system_prompt: str = "",
        settings: ChatSettings | None = None,
        tools: list[dict] | None = None,
    ):
        if model.adapter is None:
            raise ChatError(
                "Compare mode needs an adapter.", "Pick a run to compare with its base model."
            )
        self.base = ChatSession(
            model, use_adapter=False, system_prompt=system_prompt, settings=settings, tools=tools
        )
        self.tuned = ChatSession(
            model, use_adapter=True, system_prompt=system_prompt, settings=settings, tools=tools
        )
        self._cancel = threading.Event()

    @property
    def sides(self) -> dict[str, ChatSession]:
        return {"base": self.base, "tuned": self.tuned}

    def send(
        self, text: str, settings: ChatSettings | None = None
    ) -> Iterator[tuple[str, ChatEvent]]:
        """(side, event) pairs: the base side's whole reply, then the tuned side's."""
        if not text.strip():
            raise ChatError("The message is empty.", "Type something to send.")
        # One event for both sides, so a cancel at any moment stops this reply and skips the next.
        self._cancel = threading.Event()
        return self._both(text, settings, self._cancel)

    def _both(self, text, settings, cancel):
        for side, session in self.sides.items():
            if cancel.is_set():
                break
            for event in session.send(text, settings, cancel=cancel):
                yield side, event

    def cancel(self) -> None:
        """Stop the reply in progress and skip the other side's."""
        self._cancel.set()

    def reset(self) -> None:
        self.base.reset()
        self.tuned.reset()
