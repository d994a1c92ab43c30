"""Turn one normalised record into token ids and a per-token training weight.

Normalised records (the contract between data import and training) are the three shapes mlx-lm
reads: `{"messages": [...], "tools"?: [...]}`, `{"prompt": ..., "completion": ...}` and
`{"text": ...}`. A weight of 1 means "learn to predict this token", 0 means "context only". Unlike
mlx-lm, nothing after the last real token is ever trained (no learning to predict padding), and
with prompt masking every assistant turn is trained, not only the last one.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.templates import resolve


@dataclass
class Encoded:
    tokens: list[int]
    weights: list[int]  # 1 = trained, 0 = masked; same length as tokens
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def trained_tokens(self) -> int:
        # The first token is never a target (nothing predicts it).
        return sum(self.weights[1:])


class Encoder:
    """Encodes records for one tokenizer and chat template."""

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
            if message.get("role") != "assistant" or message.get("weight", 1) == 0:
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
                weights[j] = 1
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
