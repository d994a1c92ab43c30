"""Held-out prompts with reference answers, and a run's golden prompts.

An evaluation prompt is a conversation that ends with a user message, plus the reference answer
when there is one. They come from a JSONL file (`--prompts`, or `data.eval_prompts`) whose lines
are prompt/completion records (`reference` or `answer` also name the reference), chat records whose
last assistant turn is the reference, or bare `{"prompt": ...}`; or, without a file, from the run's
test split (its validation split when it has no test split).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig
from engine.evaluate.metrics import EvalError

REFERENCE_KEYS = ("reference", "answer", "expected", "response", "output")


@dataclass
class EvalPrompt:
    messages: list[dict]  # system/user/assistant turns, the last one from the user
    reference: str | None = None

    @property
    def prompt(self) -> str:
        """The last user message: what a table shows as 'the prompt'."""
        return self.messages[-1]["content"]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "messages": self.messages, "reference": self.reference}


def from_record(record: dict, config: RunConfig | None = None) -> EvalPrompt | None:
    """An EvalPrompt from one normalised (or prompt/reference) record; None for plain text."""
    d = config.data if config else None
    prompt_key = d.prompt_feature if d else "prompt"
    completion_key = d.completion_feature if d else "completion"
    chat_key = d.chat_feature if d else "messages"
    if isinstance(record.get(chat_key), list):
        messages = [
            {"role": m.get("role"), "content": m.get("content") or ""}
            for m in record[chat_key]
            if isinstance(m, dict)
        ]
        reference = None
        if messages and messages[-1]["role"] == "assistant":
            reference = messages.pop()["content"]
        if not messages or messages[-1]["role"] != "user":
            return None
        return EvalPrompt(messages, reference)
    if prompt_key in record or "prompt" in record:
        prompt = record.get(prompt_key, record.get("prompt"))
        reference = record.get(completion_key)
        for key in REFERENCE_KEYS:
            if reference is None:
                reference = record.get(key)
        messages = (
            [{"role": "system", "content": str(record["system"])}] if record.get("system") else []
        )
        messages.append({"role": "user", "content": str(prompt)})
        return EvalPrompt(messages, None if reference is None else str(reference))
    return None


def load_prompt_file(path: str | Path, config: RunConfig | None = None) -> list[EvalPrompt]:
    """Prompts from a JSONL file (or a .txt file, one prompt per line, without references)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise EvalError(
            f"Prompt file {p} does not exist.", "Check the path given to --prompts."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"Prompt file {p} cannot be read: {exc}.") from None
    items: list[EvalPrompt] = []
    if p.suffix.lower() == ".txt":
        items = [
            EvalPrompt([{"role": "user", "content": line.strip()}])
            for line in text.splitlines()
            if line.strip()
        ]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalError(
                    f"Line {number} of {p.name} is not valid JSON ({exc.msg}).",
                    "Each line must be one JSON object with a prompt.",
                ) from None
            item = from_record(record, config) if isinstance(record, dict) else None
            if item is None:
                raise EvalError(
                    f"Line {number} of {p.name} has no prompt.",
                    "Give each line a 'prompt' (and a 'completion' as the reference), "
                    "or 'messages' ending with the reference answer.",
                )
            items.append(item)
    if not items:
        raise EvalError(
            f"Prompt file {p} has no prompts.", "Add one JSON object with a prompt per line."
        )
    return items


def split_prompts(config: RunConfig) -> tuple[list[EvalPrompt], str]:
    """Held-out prompts from the run's dataset: its test split, else its validation split."""
    from engine.data import load_splits

    splits = load_splits(
        config.data.path, valid_fraction=config.data.valid_fraction, seed=config.training.seed
    )
    for name, records in (("test", splits.test), ("valid", splits.valid)):
        items = [item for item in (from_record(r, config) for r in records) if item is not None]
        if items:
            return items, name
    raise EvalError(
        "The run's dataset has no held-out prompts with answers (no test or validation examples).",
        "Pass a file of prompts with reference answers with --prompts.",
    )


def golden_prompts(config: RunConfig, base_dir: Path | None = None) -> list[str]:
    """The run's golden prompts: `training.golden_prompts`, then those in `golden_prompts_file`."""
    t = config.training
    prompts = [p for p in t.golden_prompts if str(p).strip()]
    if t.golden_prompts_file:
        path = Path(t.golden_prompts_file).expanduser()
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        prompts += [item.prompt for item in load_prompt_file(path)]
    return prompts
