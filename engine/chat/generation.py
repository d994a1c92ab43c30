"""One loaded model (with an optional adapter) that streams chat replies through mlx-lm.

Generation is mlx-lm's `stream_generate` with mlx-lm's samplers and logits processors; this module
adds what a chat needs around it: the chat template, trimming the history to the context, user stop
strings, cancelling between tokens, switching the adapter off and on, and per-reply stats.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.chat.adapters import (
    AdapterInfo,
    AdapterSwitch,
    ChatError,
    adapter_config,
    resolve_adapter,
)
from engine.config import MAX_SEED
from engine.errors import Cancelled, ModelError
from engine.templates import DEFAULT_CHAT_TEMPLATE, resolve

# Lathe's default template marks turns with plain-text headers, so a model that was never tuned to
# emit EOS after an answer would go on to write the next question itself.
DEFAULT_TEMPLATE_STOPS = ("\n### Question:",)
FALLBACK_CONTEXT = 4096


@dataclass
class ChatSettings:
    """Sampling controls for one reply. temperature 0 is greedy (deterministic)."""

    temperature: float = 0.7
    top_p: float = 1.0
    min_p: float = 0.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    repetition_context_size: int = 20
    max_tokens: int = 512
    seed: int | None = None
    # None: the template's own turn markers (Lathe's default template); [] stops only at EOS.
    stop: list[str] | None = None

    def validate(self) -> None:
        checks = [
            (
                self.temperature >= 0,
                "Temperature must be 0 or more (0 always picks the likeliest token).",
            ),
            (0 < self.top_p <= 1, "Top-p must be more than 0 and at most 1."),
            (0 <= self.min_p < 1, "Min-p must be between 0 and 1."),
            (self.top_k >= 0, "Top-k must be 0 (off) or more."),
            (self.repetition_penalty > 0, "Repetition penalty must be more than 0 (1 is off)."),
            (self.max_tokens >= 1, "Max tokens must be at least 1."),
            (
                self.seed is None or 0 <= self.seed <= MAX_SEED,
                f"Seed must be between 0 and {MAX_SEED:,}, not {self.seed}.",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ChatError(message)


@dataclass
class ReplyStats:
    prompt_tokens: int = 0
    tokens: int = 0  # tokens the model generated for this reply (an EOS included)
    time_to_first_token: float = 0.0  # seconds from the request to the first generated token
    tokens_per_second: float = 0.0  # decoding speed after the first token
    seconds: float = 0.0
    stop_reason: str = ""  # eos | stop_string | length | cancelled
    trimmed_messages: int = 0  # oldest messages left out to fit the context
    peak_memory_gb: float = 0.0


@dataclass
class Reply:
    text: str
    stats: ReplyStats
    label: str  # exactly what produced the reply: model, and run/step or "base"
    adapter: bool  # whether the adapter was on
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ChatEvent:
    """What a reply stream yields: `notice` (a message for the user), `text` (a piece of the reply,
    in order) and finally `done` (the whole Reply)."""

    kind: str
    text: str = ""
    token: int | None = None
    reply: Reply | None = None


class StopMatcher:
    """Holds back text that may be the start of a stop string, so a stop string is never shown."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to show now, whether a stop string was reached)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(stop[:k]):
                    hold = k
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class ChatModel:
    """A base model loaded once, with an optional adapter that can be switched off and on.

    Thread use: load, generate and switch on one worker thread; `cancel()` may be called from any
    thread. Generations on one ChatModel run one at a time (a lock), since they share the model.
    """

    def __init__(self, model, tokenizer, config: dict, model_path: str, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_path = model_path
        self.name = name
        self.context_length = _context_length(config, tokenizer)
        self._adapter: AdapterSwitch | None = None
        # A plain Lock: a reply stream abandoned by one thread may be closed by the garbage collector
        # on another, and an RLock cannot be released there.
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self.compute = None  # engine.models.precision.ComputePlan, set by load()

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls, model: str | Path | None = None, adapter: str | Path | AdapterInfo | None = None
    ) -> ChatModel:
        """Load `model` (a folder or Hugging Face repo id) and attach `adapter` (RUN[:STEP] or a folder).

        Without `model`, the model the adapter's run was trained on is loaded.
        """
        info = _as_info(adapter) if adapter is not None else None
        if not model:
            if info is None or not info.base_model:
                raise ChatError(
                    "No model given.", "Pass --model, or a run whose config names its model."
                )
            model = info.base_model
        from mlx_lm import load

        from engine.models.loading import resolve_model

        text = str(model)
        # Like training, chat never downloads: a local folder, a library name or an already
        # downloaded repo, validated first (safetensors only, a supported architecture).
        local = resolve_model(text)
        try:
            mlx_model, tokenizer, config = load(str(local), return_config=True)
        except FileNotFoundError as exc:
            raise ModelError(
                f"The model '{text}' could not be loaded: {_first_line(exc)}",
                "Check the folder, or download the model from the Models page first.",
            ) from None
        except Exception as exc:  # noqa: BLE001 - mlx-lm and huggingface_hub raise many kinds
            raise ModelError(
                f"The model '{text}' could not be loaded: {_first_line(exc)}",
                "Check that it is an MLX or Hugging Face model folder.",
            ) from None
        # On a CPU a quantized or half-precision model is computed in float32, as training does
        # (engine.models.precision): the same answers, seconds instead of minutes per reply.
        from engine.models.precision import prepare_for_backend

        kind = adapter_config(info.path).get("fine_tune_type", "lora") if info else "lora"
        mlx_model, compute = prepare_for_backend(mlx_model, kind)
        name = Path(text).name if Path(text).expanduser().exists() else text
        chat_model = cls(mlx_model, tokenizer, config, text, name)
        chat_model.compute = compute
        if info is not None:
            chat_model.set_adapter(info)
        return chat_model

    def set_adapter(self, adapter: str | Path | AdapterInfo | None) -> AdapterInfo | None:
        """Replace the adapter (None removes it). The base model stays loaded."""
        info = _as_info(adapter) if adapter is not None else None
        with self._lock:
            self._require_open()
            if self._adapter is not None:
                self._adapter.detach()
                self._adapter = None
            if info is not None:
                dequantized = self.compute is not None and self.compute.action == "dequantize"
                if dequantized and adapter_config(info.path).get("fine_tune_type") == "full":
                    # A full fine-tune's weights replace quantized layers; this copy of the model
                    # was dequantized for the CPU, so those weights have nowhere to go.
                    raise ChatError(
                        f"The adapter {info.label} is a full fine-tune of a quantized model, and "
                        "this chat loaded that model dequantized for the CPU.",
                        "Open the chat with this run selected from the start, so the model is "
                        "loaded to fit it.",
                    )
                self._adapter = AdapterSwitch(self.model, info)
            gc.collect()
        return info

    @property
    def adapter(self) -> AdapterInfo | None:
        return self._adapter.info if self._adapter else None

    @property
    def adapter_enabled(self) -> bool:
        return bool(self._adapter and self._adapter.enabled)

    def close(self) -> None:
        """Free the model's memory. Cancels and waits for a reply in progress."""
        self._cancel.set()
        # A reply stream that its caller abandoned without closing holds the lock until it is
        # garbage collected; do not hang the app on it (the stream keeps its own reference).
        locked = self._lock.acquire(timeout=10)
        try:
            self._adapter = None
            self.model = None
            self.tokenizer = None
            gc.collect()
            import mlx.core as mx

            mx.clear_cache()
        finally:
            if locked:
                self._lock.release()

    @property
    def closed(self) -> bool:
        return self.model is None

    # -- what a reply is made with ---------------------------------------------------------
    def template(self) -> tuple[str, str]:
        """(chat template, source): the run's, else the model's own, else Lathe's default."""
        override = self.adapter.chat_template if self.adapter else None
        template, source = resolve(self.tokenizer, override)
        return template, ("run" if source == "config" else source)

    def label(self, use_adapter: bool) -> str:
        if use_adapter and self._adapter is not None:
            return f"{self.name} + {self._adapter.info.label}"
        return f"{self.name} (base)"

    def prompt_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Tokens of `messages` (and the `tools` the model may call) through the chat template,
        ending with the assistant's turn."""
        template, _ = self.template()
        return _render(self.tokenizer, messages, template, tools)

    # -- generation ------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the reply in progress after the token being computed. Safe from any thread."""
        self._cancel.set()

    def stream(
        self,
        messages: list[dict],
        settings: ChatSettings | None = None,
        *,
        use_adapter: bool = True,
        cancel: threading.Event | None = None,
        tools: list[dict] | None = None,
    ) -> Iterator[ChatEvent]:
        """Stream a reply to `messages` (system/user/assistant dicts, the last one from the user).
        `tools`: tool definitions (OpenAI's shape) rendered through the chat template, as in
        training.

        `cancel`: an event the caller owns, for a cancel that must not race the start of the reply;
        without it, `cancel()` stops this reply.
        """
        settings = settings or ChatSettings()
        settings.validate()
        if not messages or messages[-1].get("role") != "user":
            raise ChatError("A reply needs a conversation that ends with a user message.")
        self._require_open()
        # The event is made here, not when iteration starts, so a cancel() right after this call
        # is never lost.
        event = cancel if cancel is not None else threading.Event()
        self._cancel = event
        return self._stream(list(messages), settings, use_adapter, event, tools or None)

    def _stream(self, messages, settings, use_adapter, cancel, tools=None) -> Iterator[ChatEvent]:
        with self._lock:
            self._require_open()
            tuned = use_adapter and self._adapter is not None
            if self._adapter is not None:
                self._adapter.set_enabled(tuned)
            yield from self._stream_locked(messages, settings, tuned, cancel, tools)

    def reply(
        self,
        messages: list[dict],
        settings: ChatSettings | None = None,
        *,
        use_adapter: bool = True,
        tools: list[dict] | None = None,
    ) -> Reply:
        """The whole reply at once (no streaming)."""
        for event in self.stream(messages, settings, use_adapter=use_adapter, tools=tools):
            if event.kind == "done":
                return event.reply
        raise AssertionError("a reply stream always ends with a done event")

    def _stream_locked(
        self, messages, settings: ChatSettings, tuned: bool, cancel: threading.Event, tools=None
    ) -> Iterator[ChatEvent]:
        import mlx.core as mx
        from mlx_lm.generate import stream_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        start = time.perf_counter()
        label = self.label(tuned)
        template, _ = self.template()
        notices: list[str] = []
        budget = self.context_length - settings.max_tokens
        if budget < 1:
            raise ChatError(
                f"Max tokens ({settings.max_tokens}) leaves no room for the conversation in this "
                f"model's {self.context_length}-token context.",
                "Lower max tokens.",
            )
        tokens, dropped = _fit(self.tokenizer, messages, template, budget, tools)
        if dropped:
            notice = (
                f"Left out the {dropped} oldest message{'s' if dropped != 1 else ''} to fit "
                f"the model's {self.context_length}-token context."
            )
            notices.append(notice)
            yield ChatEvent("notice", notice)
        if (
            self.adapter
            and self.adapter.base_model
            and tuned
            and not _same_model(self.adapter.base_model, self.model_path)
        ):
            notice = (
                f"This run was trained on {self.adapter.base_model}, not on {self.name}; "
                "its replies may not mean much."
            )
            notices.append(notice)
            yield ChatEvent("notice", notice)

        stops = (
            list(settings.stop)
            if settings.stop is not None
            else (list(DEFAULT_TEMPLATE_STOPS) if template == DEFAULT_CHAT_TEMPLATE else [])
        )
        matcher = StopMatcher(stops)
        if settings.seed is not None:
            mx.random.seed(settings.seed)
        sampler = make_sampler(
            settings.temperature, settings.top_p, settings.min_p, top_k=settings.top_k
        )
        processors = make_logits_processors(
            repetition_penalty=settings.repetition_penalty
            if settings.repetition_penalty != 1.0
            else None,
            repetition_context_size=settings.repetition_context_size,
        )

        def check_cancel(_done: int, _total: int) -> None:
            # Called between prompt chunks, so a long prompt can be cancelled too.
            if cancel.is_set():
                raise Cancelled("Generation stopped.")

        stats = ReplyStats(prompt_tokens=len(tokens), trimmed_messages=dropped)
        text_parts: list[str] = []
        first = last = None
        reason = "length"
        generator = stream_generate(
            self.model,
            self.tokenizer,
            tokens,
            max_tokens=settings.max_tokens,
            sampler=sampler,
            logits_processors=processors or None,
            prompt_progress_callback=check_cancel,
        )
        try:
            for response in generator:
                now = time.perf_counter()
                if first is None:
                    first = now
                last = now
                stats.tokens = response.generation_tokens
                stats.peak_memory_gb = response.peak_memory
                if cancel.is_set():
                    reason = "cancelled"
                    break
                shown, stopped = matcher.feed(response.text)
                if shown:
                    text_parts.append(shown)
                    yield ChatEvent("text", shown, token=response.token)
                if stopped:
                    reason = "stop_string"
                    break
                if response.finish_reason is not None:
                    reason = "eos" if response.finish_reason == "stop" else "length"
        except Cancelled:
            reason = "cancelled"
        finally:
            generator.close()
        if reason in ("eos", "length"):
            rest = matcher.flush()
            if rest:
                text_parts.append(rest)
                yield ChatEvent("text", rest)
        end = time.perf_counter()
        stats.seconds = end - start
        stats.stop_reason = reason
        if first is not None:
            stats.time_to_first_token = first - start
            if stats.tokens > 1 and last > first:
                stats.tokens_per_second = (stats.tokens - 1) / (last - first)
        yield ChatEvent("done", reply=Reply("".join(text_parts), stats, label, tuned, notices))

    def _require_open(self) -> None:
        if self.model is None:
            raise ChatError("This chat model was closed.", "Load a model again.")


# ---------------------------------------------------------------------------------------------


def _as_info(adapter) -> AdapterInfo:
    return adapter if isinstance(adapter, AdapterInfo) else resolve_adapter(adapter)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def _context_length(config: dict, tokenizer) -> int:
    configs = [config, config.get("text_config") or {}]
    for cfg in configs:
        for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_ctx"):
            value = cfg.get(key)
            if isinstance(value, int) and value > 0:
                return value
    # Tokenizers without a real limit report a huge sentinel (1e30).
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    return FALLBACK_CONTEXT


_MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


def _render(tokenizer, messages: list[dict], template: str, tools=None) -> list[int]:
    clean = [{k: m[k] for k in _MESSAGE_KEYS if k in m} for m in messages]
    extra = {"tools": tools} if tools else {}
    try:
        out = tokenizer.apply_chat_template(
            clean, chat_template=template, add_generation_prompt=True, tokenize=True, **extra
        )
    except Exception as exc:  # noqa: BLE001 - jinja raises TemplateError from the template itself
        if clean and clean[0]["role"] == "system" and len(clean) > 1:
            # Some templates (Gemma, Mistral) refuse a system role; fold it into the first turn.
            merged = dict(clean[1], content=f"{clean[0]['content']}\n\n{clean[1]['content']}")
            return _render(tokenizer, [merged] + clean[2:], template, tools)
        raise ChatError(f"The chat template could not be applied: {_first_line(exc)}") from None
    if isinstance(out, dict):
        out = out["input_ids"]
    return list(out)


def _fit(
    tokenizer, messages: list[dict], template: str, budget: int, tools=None
) -> tuple[list[int], int]:
    """Tokens of the conversation after dropping the oldest turns until it fits `budget`.

    The system prompt and the newest user message are always kept; whole turns are dropped, so
    the model never sees a reply without its question.
    """
    system = [m for m in messages[:1] if m.get("role") == "system"]
    rest = list(messages[len(system) :])
    dropped = 0
    while True:
        tokens = _render(tokenizer, system + rest, template, tools)
        if len(tokens) <= budget:
            return tokens, dropped
        if len(rest) <= 1:
            raise ChatError(
                f"The message is too long for the model's context ({len(tokens)} tokens; "
                f"{budget} fit after reserving max tokens for the reply).",
                "Shorten the message or the system prompt, or lower max tokens.",
            )
        cut = 1
        while cut < len(rest) - 1 and rest[cut].get("role") != "user":
            cut += 1
        rest = rest[cut:]
        dropped += cut
