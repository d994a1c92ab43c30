"""Turn one normalised record into token ids and a per-token training weight.

Normalised records (the contract between data import and training) are the three shapes mlx-lm
reads: `{"messages": [...], "tools"?: [...]}`, `{"prompt": ..., "completion": ...}` and
`{"text": ...}`. A weight of 1 means "learn to predict this token", 0 means "context only". Unlike
mlx-lm, nothing after the last real token is ever trained (no learning to predict padding), and
with prompt masking every assistant turn is trained, not only the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.templates import resolve

# What a chat template can leave out of a record, in the order reports name them.
DROP_PARTS = (
    "tool definitions",
    "tool calls",
    "tool results",
    "system messages",
    "user messages",
    "assistant messages",
)
_PROBE = "LatheProbe{}Q"  # survives JSON, trimming and Jinja escaping, and no real text holds it


@dataclass
class Drops:
    """What the chat template leaves out of one record."""

    parts: list[str] = field(default_factory=list)  # from DROP_PARTS
    # Every trained assistant turn is lost (a tool call the template does not render): the record
    # would train only end-of-turn tokens.
    hollow: bool = False

    def __bool__(self) -> bool:
        return bool(self.parts)


@dataclass
class Encoded:
    tokens: list[int]
    # 1 = trained, 0 = masked, a fraction = trained at that loss weight; same length as tokens
    weights: list[float]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def trained_tokens(self) -> int:
        # The first token is never a target (nothing predicts it).
        return sum(1 for w in self.weights[1:] if w)


class Encoder:
    """Encodes records for one tokenizer and chat template."""

    @classmethod
    def for_data(cls, tokenizer, data, chat_template: str | None) -> Encoder:
        """The encoder a run's `data` settings (engine.config.DataConfig) describe: training, the
        memory estimate and evaluation all encode with this one."""
        return cls(
            tokenizer,
            chat_template=chat_template,
            mask_prompt=data.mask_prompt,
            max_seq_length=data.max_seq_length,
            prompt_feature=data.prompt_feature,
            completion_feature=data.completion_feature,
            chat_feature=data.chat_feature,
            text_feature=data.text_feature,
        )

    def __init__(
        self,
        tokenizer,
        *,
        chat_template: str | None = None,
        mask_prompt: bool = True,
        max_seq_length: int = 2048,
        prompt_feature: str = "prompt",
        completion_feature: str = "completion",
        chat_feature: str = "messages",
        text_feature: str = "text",
    ):
        self.tokenizer = tokenizer
        self.template, self.template_source = resolve(tokenizer, chat_template)
        self.mask_prompt = mask_prompt
        self.max_seq_length = max_seq_length
        self.prompt_feature = prompt_feature
        self.completion_feature = completion_feature
        self.chat_feature = chat_feature
        self.text_feature = text_feature
        self.eos_id = tokenizer.eos_token_id
        self._drops_cache: dict = {}  # record shape -> parts the template drops (template_drops)

    # -- public ----------------------------------------------------------------------------
    def kind(self, record: dict) -> str:
        if self.chat_feature in record:
            return "chat"
        if self.prompt_feature in record and self.completion_feature in record:
            return "completion"
        if self.text_feature in record:
            return "text"
        raise ValueError(
            f"record has none of the keys '{self.chat_feature}', "
            f"'{self.prompt_feature}'+'{self.completion_feature}' or '{self.text_feature}'"
        )

    def encode(self, record: dict) -> Encoded:
        kind = self.kind(record)
        if kind == "text":
            tokens = list(self.tokenizer.encode(record[self.text_feature]))
            if self.eos_id is not None and (not tokens or tokens[-1] != self.eos_id):
                tokens.append(self.eos_id)
            enc = Encoded(tokens, [1] * len(tokens))
        else:
            if kind == "completion":
                messages = [
                    {"role": "user", "content": record[self.prompt_feature]},
                    {"role": "assistant", "content": record[self.completion_feature]},
                ]
            else:
                messages = record[self.chat_feature]
            enc = self._encode_chat(messages, record.get("tools"))
        return self._truncate(enc)

    def render(self, record: dict) -> str:
        """The exact text the model sees for a record (after the chat template)."""
        kind = self.kind(record)
        if kind == "text":
            return record[self.text_feature]
        if kind == "completion":
            messages = [
                {"role": "user", "content": record[self.prompt_feature]},
                {"role": "assistant", "content": record[self.completion_feature]},
            ]
        else:
            messages = record[self.chat_feature]
        return self._apply(messages, record.get("tools"), tokenize=False)

    def template_drops(self, record: dict) -> Drops:
        """Which parts of a chat record (tool definitions, tool calls, tool results, turns) the
        chat template does not render. Each part's text is replaced by a unique marker and the
        record is rendered once; a marker missing from the text is a part the template dropped.
        Templates behave the same for records of the same shape, so shapes are cached."""
        if self.kind(record) != "chat":
            return Drops()
        messages = record[self.chat_feature]
        tools = record.get("tools") or []
        shape = (
            bool(tools),
            tuple(
                (m.get("role"), bool(m.get("content")), len(m.get("tool_calls") or ()))
                for m in messages
            ),
        )
        lost = self._drops_cache.get(shape)
        if lost is None:
            lost = self._drops_cache[shape] = self._probe(messages, tools)
        if not lost:
            return Drops()
        parts = [p for p in DROP_PARTS if any(part == p for part, _ in lost)]
        lost_turns = {i for part, i in lost if i is not None}
        trained = [
            i
            for i, m in enumerate(messages)
            if m.get("role") == "assistant" and m.get("weight", 1) != 0
        ]
        hollow = bool(trained) and all(i in lost_turns for i in trained)
        return Drops(parts, hollow)

    def _probe(self, messages: list[dict], tools: list) -> list[tuple[str, int | None]]:
        markers: list[tuple[str, str, int | None]] = []  # (marker, part, message index)

        def mark(part: str, index: int | None) -> str:
            marker = _PROBE.format(len(markers))
            markers.append((marker, part, index))
            return marker

        probe_tools = []
        for tool in tools:
            fn = dict(tool.get("function") or {})
            fn["name"] = mark("tool definitions", None)
            probe_tools.append(dict(tool, function=fn))
        probe = []
        for i, m in enumerate(messages):
            m = dict(m)
            role = m.get("role")
            if m.get("tool_calls"):
                calls = []
                for call in m["tool_calls"]:
                    fn = dict(call.get("function") or {})
                    fn["name"] = mark("tool calls", i)
                    calls.append(dict(call, function=fn))
                m["tool_calls"] = calls
            if isinstance(m.get("content"), str) and m["content"].strip():
                part = "tool results" if role == "tool" else f"{role} messages"
                m["content"] = mark(part, i if role == "assistant" else None)
            probe.append(m)
        try:
            text = self._apply(probe, probe_tools, tokenize=False)
        except Exception:  # noqa: BLE001 - a template that rejects the record is reported by encode
            return []
        missing = [(part, i) for marker, part, i in markers if marker not in text]
        # An assistant turn is lost only when nothing of it is rendered (text and calls).
        shown = {i for marker, part, i in markers if i is not None and marker in text}
        return [(part, None if i in shown else i) for part, i in missing]

    def prompt_tokens(self, messages: list[dict], tools=None) -> list[int]:
        """Tokens of a conversation ending with the generation prompt (for chat and eval)."""
        return self._apply(messages, tools, add_generation_prompt=True)

    # -- internals -------------------------------------------------------------------------
    def _apply(self, messages, tools=None, add_generation_prompt=False, tokenize=True):
        kwargs = {
            "chat_template": self.template,
            "add_generation_prompt": add_generation_prompt,
            "tokenize": tokenize,
        }
        if tools:
            kwargs["tools"] = tools
        if tokenize:
            kwargs["return_dict"] = False
        out = self.tokenizer.apply_chat_template(messages, **kwargs)
        if tokenize and isinstance(out, dict):  # some tokenizers ignore return_dict=False
            out = out["input_ids"]
        return list(out) if tokenize else out

    def _encode_chat(self, messages: list[dict], tools) -> Encoded:
        tokens = self._apply(messages, tools)
        if not self.mask_prompt:
            return Encoded(tokens, [1] * len(tokens))
        weights = [0] * len(tokens)
        for i, message in enumerate(messages):
            # A turn's loss weight (OpenAI `weight`, LLaMA-Factory `loss_weight`): 0 = context only.
            weight = message.get("weight", 1)
            if message.get("role") != "assistant" or not weight:
                continue
            # The assistant turn i spans from the end of the prompt that precedes it to the end of
            # the conversation rendered up to and including it.
            start = _common_prefix(
                tokens, self._apply(messages[:i], tools, add_generation_prompt=True)
            )
            if i == len(messages) - 1:
                end = len(
                    tokens
                )  # the last turn runs to the end: no need to render and tokenize again
            else:
                end = _common_prefix(tokens, self._apply(messages[: i + 1], tools))
            for j in range(start, max(start, end)):
                weights[j] = weight
        return Encoded(tokens, weights)

    def _truncate(self, enc: Encoded) -> Encoded:
        if len(enc.tokens) <= self.max_seq_length:
            return enc
        n = self.max_seq_length
        return Encoded(enc.tokens[:n], enc.weights[:n], truncated=True)


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix; tokenizers may merge differently across the boundary."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
