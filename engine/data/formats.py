"""Record formats: which one a file uses, and turning each record into a normalised record.

Normalised records are the three shapes training reads (docs/CONTRACTS.md):
`{"messages": [...], "tools"?: [...]}`, `{"prompt", "completion"}` and `{"text"}`. Normalisers
raise `RecordProblem` with the field and a fix; they never see the file or the line number.
"""

from __future__ import annotations

import contextvars
import json
import math
import re
from collections import Counter
from collections.abc import Callable

from engine.data.problems import DataError, RecordProblem

FORMATS = {
    "chat": "OpenAI chat (messages)",
    "completion": "prompt/completion",
    "alpaca": "Alpaca (instruction/input/output)",
    "sharegpt": "ShareGPT (conversations)",
    "preference": "preference pairs (chosen/rejected)",
    "text": "plain text",
}
FORMAT_ALIASES = {
    "openai": "chat",
    "messages": "chat",
    "prompt-completion": "completion",
    "prompt_completion": "completion",
    "bedrock": "completion",
    "conversations": "sharegpt",
    "dpo": "preference",
    "pairs": "preference",
}
# `--map TARGET=COLUMN`: the targets a column can be mapped to.
MAP_TARGETS = {
    "system",
    "prompt",
    "completion",
    "text",
    "messages",
    "conversations",
    "instruction",
    "input",
    "output",
    "tools",
}
MAP_ALIASES = {
    "response": "completion",
    "answer": "completion",
    "question": "prompt",
    "user": "prompt",
}

# Column names that make the mapping clear (compared lower-cased, without spaces/underscores).
_SYNONYMS = {
    "system": ("system", "systemprompt", "systemmessage", "sys", "persona"),
    "prompt": (
        "prompt",
        "question",
        "query",
        "input",
        "user",
        "human",
        "instruction",
        "request",
        "q",
        "usermessage",
        "inputtext",
    ),
    "completion": (
        "completion",
        "response",
        "answer",
        "output",
        "assistant",
        "gpt",
        "reply",
        "target",
        "a",
        "chosen",
        "assistantmessage",
        "outputtext",
        "bot",
    ),
    "text": ("text", "content", "body", "document", "passage", "article"),
}

CHAT_ROLES = {"system", "user", "assistant", "tool"}
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


def canonical_format(name: str) -> str:
    """The format name for a user's `--format` value, or a DataError listing the choices."""
    key = name.strip().lower()
    key = FORMAT_ALIASES.get(key, key)
    if key not in FORMATS:
        raise DataError(f"Unknown format '{name}'.", f"Choose one of: {', '.join(FORMATS)}.")
    return key


def parse_mapping(spec: str | dict | None) -> dict[str, str]:
    """`"prompt=question,completion=answer"` -> {"prompt": "question", "completion": "answer"}.
    A JSON object (`{"prompt": "question, asked"}`) says the same for names with commas."""
    if not spec:
        return {}
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        try:
            decoded = json.loads(spec)
        except json.JSONDecodeError:
            decoded = None
        if isinstance(decoded, dict):
            spec = {str(k): str(v) for k, v in decoded.items()}
    items = (
        spec.items()
        if isinstance(spec, dict)
        else (part.split("=", 1) if "=" in part else (part, "") for part in spec.split(","))
    )
    mapping = {}
    for target, column in items:
        target = MAP_ALIASES.get(target.strip().lower(), target.strip().lower())
        column = column.strip()
        if target not in MAP_TARGETS or not column:
            raise DataError(
                f"Cannot read the mapping '{target}={column}'.",
                "Write it as TARGET=COLUMN pairs, e.g. --map prompt=question,"
                "completion=answer (targets: system, prompt, completion, text).",
            )
        mapping[target] = column
    return mapping


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).lower())


def auto_mapping(columns: list[str]) -> tuple[dict[str, str], str] | None:
    """A mapping of columns to prompt/completion (and system) or text when the names make it clear."""
    found: dict[str, list[str]] = {}
    for col in columns:
        for target, names in _SYNONYMS.items():
            if _norm(col) in names:
                found.setdefault(target, []).append(col)
    if any(len(v) > 1 for k, v in found.items() if k in ("prompt", "completion")):
        return None
    if "prompt" in found and "completion" in found:
        mapping = {"prompt": found["prompt"][0], "completion": found["completion"][0]}
        if len(found.get("system", [])) == 1:
            mapping["system"] = found["system"][0]
        why = ", ".join(f"'{c}' as {t}" for t, c in mapping.items())
        return mapping, f"column names read as {why}"
    if len(found.get("text", [])) == 1 and "prompt" not in found and "completion" not in found:
        return {"text": found["text"][0]}, f"column '{found['text'][0]}' read as text"
    return None


def shown_key(key: object) -> str:
    """A field name from the data as a message shows it: as it is when it is plain, else quoted
    and escaped (a name with a line break or control characters would break the message)."""
    text = str(key)
    if text.isprintable() and text.strip() == text and 0 < len(text) <= 40:
        return text
    return json.dumps(text[:40])


def detect(rows: list, mapping: dict[str, str]) -> tuple[str, str]:
    """(format, why) from the first rows of a file (after `mapping` renamed their keys)."""
    dicts = [apply_mapping(r, mapping) for r in rows if isinstance(r, dict)]
    if not dicts:
        raise DataError(
            "the first records are not JSON objects, so the format cannot be told.",
            'Each example must be an object such as {"messages": [...]}.',
        )
    votes = Counter(_guess(d) for d in dicts)
    votes.pop(None, None)
    if not votes:
        keys = sorted({k for d in dicts[:20] for k in d})[:12]
        raise DataError(
            f"the format cannot be told from the fields ({', '.join(map(shown_key, keys)) or 'none'}).",
            "Name the fields with --map (e.g. --map prompt=question,completion=answer) or pick "
            f"the format with --format ({', '.join(FORMATS)}).",
        )
    fmt, n = votes.most_common(1)[0]
    return fmt, f"{n} of the first {len(dicts)} records {_REASONS[fmt]}"


_REASONS = {
    "chat": "have a 'messages' list of role/content turns",
    "sharegpt": "have a 'conversations' list of from/value turns",
    "completion": "have 'prompt' and 'completion' fields",
    "alpaca": "have 'instruction' and 'output' fields",
    "text": "have a 'text' field",
    "preference": "have 'chosen' and 'rejected' answers",
}


def _guess(d: dict) -> str | None:
    if ("chosen" in d and "rejected" in d) or (
        "preferred_output" in d and "non_preferred_output" in d
    ):
        return "preference"
    if isinstance(d.get("messages"), list):
        return "chat"
    conv = d.get("conversations", d.get("conversation"))
    if isinstance(conv, list):
        return "sharegpt"
    if "prompt" in d and "completion" in d:
        return "completion"
    if "instruction" in d and "output" in d:
        return "alpaca"
    if "text" in d:
        return "text"
    return None


def apply_mapping(row, mapping: dict[str, str]):
    """The row with mapped columns renamed to their targets (other keys kept)."""
    if not mapping or not isinstance(row, dict):
        return row
    out = {k: v for k, v in row.items() if k not in mapping.values()}
    for target, column in mapping.items():
        if column in row:
            out[target] = row[column]
    return out


def normaliser(fmt: str) -> Callable[[dict], dict]:
    return {
        "chat": norm_chat,
        "completion": norm_completion,
        "alpaca": norm_alpaca,
        "sharegpt": norm_sharegpt,
        "preference": norm_preference,
        "text": norm_text,
    }[fmt]


# Things a normaliser did that the user should hear about once, counted over the whole dataset
# (a double-encoded value decoded, a weight that cannot apply). Collected per record through a
# context variable, so the helpers deep inside a normaliser need no extra parameter.
REMARKS = {
    "double_encoded": "tool-call arguments were JSON text encoded twice; Lathe decoded them once",
    "weight_not_assistant": "a loss weight above 0 on a non-assistant turn was ignored (only "
    "assistant turns are trained)",
    "prompt_turns_masked": "assistant turns inside a preference pair's prompt are context, not "
    "trained",
}
_remarks: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "lathe_data_remarks", default=None
)


def _remark(code: str) -> None:
    found = _remarks.get()
    if found is not None and code not in found:
        found.append(code)


def normalise(fmt_or_fn, record: dict) -> tuple[dict, list[str]]:
    """(normalised record, remark codes) for one record; RecordProblem when it cannot be used."""
    fn = normaliser(fmt_or_fn) if isinstance(fmt_or_fn, str) else fmt_or_fn
    token = _remarks.set([])
    try:
        out = fn(record)
        return out, list(_remarks.get() or [])
    finally:
        _remarks.reset(token)


# Keys each format reads; any other key is reported once per key (and otherwise ignored).
KNOWN_KEYS = {
    "chat": {"messages", "tools", "parallel_tool_calls"},
    "completion": {"prompt", "completion", "system"},
    "alpaca": {"instruction", "input", "output", "system", "history"},
    "sharegpt": {"conversations", "conversation", "system", "tools"},
    "text": {"text"},
    "preference": {
        "chosen",
        "rejected",
        "prompt",
        "messages",
        "conversations",
        "conversation",
        "instruction",
        "input",
        "system",
        "history",
        "tools",
        "preferred_output",
        "non_preferred_output",
    },
}
MESSAGE_KEYS = {
    "role",
    "content",
    "weight",
    "loss_weight",
    "tool_calls",
    "tool_call_id",
    "name",
    "from",
    "value",
}


def unknown_keys(fmt: str, row: dict) -> set[str]:
    """Keys of a (mapped) row that the format does not read, e.g. {"id", "messages[].score"}."""
    known = KNOWN_KEYS.get(fmt, set())
    out = {str(k) for k in row if k not in known}
    for key in ("messages", "conversations", "conversation"):
        turns = row.get(key)
        if key in known and isinstance(turns, list):
            for turn in turns:
                if isinstance(turn, dict):
                    out.update(f"{key}[].{k}" for k in turn if k not in MESSAGE_KEYS)
    return out


# ---------------------------------------------------------------------------------------------
# Placeholders: `{{word}}` left in data (identity datasets ship `{{name}}` for the user to fill).

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def parse_fill(spec) -> dict[str, str]:
    """`["name=Lathe", "author=Ada"]` (or one comma-free string, or a dict) -> {"name": "Lathe", ...}."""
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, dict) else None
    if items is None:
        parts = [spec] if isinstance(spec, str) else list(spec)
        items = []
        for part in parts:
            word, sep, value = str(part).partition("=")
            if not sep:
                raise DataError(
                    f"Cannot read '--set {part}'.",
                    "Write it as WORD=VALUE, e.g. --set name=Lathe (one --set per placeholder).",
                )
            items.append((word, value))
    out = {}
    for word, value in items:
        word = str(word).strip().strip("{} ")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", word):
            raise DataError(
                f"'{word}' is not a placeholder name.",
                "Placeholders look like {{name}}: letters, digits and underscores.",
            )
        out[word] = str(value)
    return out


def fill_placeholders(value, fill: dict[str, str]):
    """`value` (a record or any part of it) with every `{{word}}` in `fill` replaced by its value."""
    if isinstance(value, str):
        if "{{" not in value:
            return value
        return PLACEHOLDER.sub(lambda m: fill.get(m.group(1), m.group(0)), value)
    if isinstance(value, list):
        return [fill_placeholders(v, fill) for v in value]
    if isinstance(value, dict):
        return {k: fill_placeholders(v, fill) for k, v in value.items()}
    return value


def find_placeholders(value, found: set[str] | None = None) -> set[str]:
    """The placeholder words (`{{word}}`) anywhere in the text of `value`."""
    found = set() if found is None else found
    if isinstance(value, str):
        if "{{" in value:
            found.update(PLACEHOLDER.findall(value))
    elif isinstance(value, list):
        for v in value:
            find_placeholders(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            find_placeholders(v, found)
    return found


# ---------------------------------------------------------------------------------------------
# Field helpers


def _type_name(v) -> str:
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _text(
    record: dict,
    key: str,
    *,
    required: bool = True,
    allow_empty: bool = False,
    field: str | None = None,
) -> str:
    field = field or key
    if key not in record or record[key] is None:
        if required:
            raise RecordProblem(
                "missing_field",
                f"the field '{key}' is missing",
                f"Add '{key}' with the text.",
                field,
            )
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise RecordProblem(
            "not_text",
            f"is {_type_name(value)}, not text",
            "Put the text in quotes (a JSON string).",
            field,
        )
    if not allow_empty and required and not value.strip():
        raise RecordProblem("empty_field", "is empty", "Fill it in or remove the example.", field)
    return value


# ---------------------------------------------------------------------------------------------
# Normalisers


def norm_text(record: dict) -> dict:
    return {"text": _text(record, "text")}


def norm_completion(record: dict) -> dict:
    prompt = _text(record, "prompt", allow_empty=True)
    completion = _text(record, "completion")
    system = _text(record, "system", required=False)
    if system.strip():
        # The completion shape has no system prompt; a chat keeps it.
        return {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": completion},
            ]
        }
    return {"prompt": prompt, "completion": completion}


def norm_alpaca(record: dict) -> dict:
    instruction = _text(record, "instruction", allow_empty=True)
    extra = _text(record, "input", required=False)
    output = _text(record, "output")
    prompt = (
        f"{instruction}\n\n{extra}"
        if instruction.strip() and extra.strip()
        else (instruction or extra)
    )
    if not prompt.strip():
        raise RecordProblem(
            "empty_field",
            "both 'instruction' and 'input' are empty",
            "Write the instruction for this example.",
            "instruction",
        )
    system = _text(record, "system", required=False)
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordProblem(
            "bad_value",
            f"is {_type_name(history)}, not a list of [prompt, response] pairs",
            'Write history as [["question", "answer"], ...].',
            "history",
        )
    if not system.strip() and not history:
        return {"prompt": prompt, "completion": output}
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for i, pair in enumerate(history):
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(isinstance(x, str) for x in pair)
        ):
            raise RecordProblem(
                "bad_value",
                "is not a [prompt, response] pair of texts",
                'Write history as [["question", "answer"], ...].',
                f"history[{i}]",
            )
        messages += [
            {"role": "user", "content": pair[0]},
            {"role": "assistant", "content": pair[1]},
        ]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    check_messages(messages, "history")  # built in order from validated pairs: a safety net
    return {"messages": messages}


def norm_chat(record: dict) -> dict:
    messages = record.get("messages")
    if messages is None:
        raise RecordProblem(
            "missing_field",
            "the field 'messages' is missing",
            "Every example in this file needs a 'messages' list.",
            "messages",
        )
    if not isinstance(messages, list):
        raise RecordProblem(
            "bad_value",
            f"is {_type_name(messages)}, not a list of messages",
            'Write messages as [{"role": "user", "content": "..."}, ...].',
            "messages",
        )
    out = [_chat_message(m, i) for i, m in enumerate(messages)]
    check_messages(out, "messages")
    result: dict = {"messages": out}
    tools = normalise_tools(record.get("tools"))
    if tools:
        result["tools"] = tools
    return result


def _chat_message(m, i: int) -> dict:
    f = f"messages[{i}]"
    if not isinstance(m, dict):
        raise RecordProblem(
            "bad_value",
            f"is {_type_name(m)}, not a message object",
            'Write each message as {"role": ..., "content": ...}.',
            f,
        )
    role = m.get("role")
    if not isinstance(role, str) or not role:
        raise RecordProblem(
            "missing_field",
            "has no role",
            'Give it "role": "user", "assistant", "system" or "tool".',
            f"{f}.role",
        )
    role = role.lower().strip()
    if role == "developer":  # OpenAI's newer name for the system message
        role = "system"
    if role not in CHAT_ROLES:
        raise RecordProblem(
            "bad_role",
            f"has the unknown role '{m.get('role')}'",
            "Use user, assistant, system or tool.",
            f"{f}.role",
        )
    out: dict = {"role": role}
    tool_calls = m.get("tool_calls")
    content = _content(m.get("content"), f"{f}.content")
    if role == "assistant" and tool_calls:
        out["content"] = content or ""
        out["tool_calls"] = _tool_calls(tool_calls, f"{f}.tool_calls")
    else:
        if content is None:
            raise RecordProblem(
                "missing_field", "has no content", "Add the message text.", f"{f}.content"
            )
        if not content.strip() and role != "system":
            raise RecordProblem(
                "empty_field", "is empty", "Fill in the message or remove it.", f"{f}.content"
            )
        out["content"] = content
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(m.get(key), str):
                out[key] = m[key]
    weight = _weight(m, role, f)
    if weight is not None:
        out["weight"] = weight
    return out


def _weight(m: dict, role: str, field: str) -> int | float | None:
    """A turn's loss weight from OpenAI's `weight` (0 or 1) or LLaMA-Factory's `loss_weight` (a
    number from 0 up); None when it has none. Only assistant turns are trained, so a weight on
    another turn is accepted when 0 (it says what masking does anyway) and otherwise remarked."""
    found = {}
    if m.get("weight") is not None:
        w = m["weight"]
        if isinstance(w, bool) or w not in (0, 1):
            raise RecordProblem(
                "bad_value",
                f"is {w!r}; a weight must be 0 or 1",
                "Use 0 to skip learning this turn, 1 to learn it.",
                f"{field}.weight",
            )
        found["weight"] = int(w)
    if m.get("loss_weight") is not None:
        w = m["loss_weight"]
        if isinstance(w, str):
            try:
                w = float(w)
            except ValueError:
                pass
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise RecordProblem(
                "bad_value",
                f"is {m['loss_weight']!r}; a loss weight must be a number from 0 up",
                "Use 0 to skip learning this turn, 1 to learn it.",
                f"{field}.loss_weight",
            )
        found["loss_weight"] = int(w) if float(w).is_integer() else float(w)
    if not found:
        return None
    if len(set(found.values())) > 1:
        raise RecordProblem(
            "bad_value",
            f"has weight {found['weight']} and loss_weight {found['loss_weight']}",
            "Keep one of them.",
            f"{field}.loss_weight",
        )
    value = next(iter(found.values()))
    if role != "assistant":
        if value:
            _remark("weight_not_assistant")
        return None
    return value


def _content(value, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        # OpenAI content parts: keep text, refuse images and audio rather than drop them silently.
        # LLaMA-Factory writes {"type": "text", "value": ...}; OpenAI {"type": "text", "text": ...}.
        texts = []
        for j, part in enumerate(value):
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type", "text") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text", part.get("value"))
                if not isinstance(text, str):
                    raise RecordProblem(
                        "not_text",
                        "has a text part without its text",
                        'Write text parts as {"type": "text", "text": "..."}.',
                        f"{field}[{j}]",
                    )
                texts.append(text)
                continue
            raise RecordProblem(
                "unsupported",
                f"has {'a ' + repr(kind) if kind else _type_name(part)} part; only text parts "
                "can be trained",
                "Remove the image, audio or file parts from this example.",
                f"{field}[{j}]",
            )
        return "".join(texts)
    raise RecordProblem(
        "not_text",
        f"is {_type_name(value)}, not text",
        "Put the message text in quotes (a JSON string).",
        field,
    )


def _tool_calls(calls, field: str) -> list[dict]:
    if not isinstance(calls, list):
        raise RecordProblem(
            "bad_value", f"is {_type_name(calls)}, not a list", "Write tool_calls as a list.", field
        )
    out = []
    for j, call in enumerate(calls):
        f = f"{field}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RecordProblem(
                "bad_value",
                "has no function name",
                'Write {"type": "function", "function": {"name": ..., "arguments": ...}}.',
                f,
            )
        args = fn.get("arguments", {})
        for attempt in range(2):
            if not isinstance(args, str):
                break
            # OpenAI sends arguments as a JSON string; chat templates expect an object. A string
            # that decodes to another string was encoded twice: decode once more and say so.
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise RecordProblem(
                    "invalid_json",
                    "the arguments are not valid JSON",
                    "Write the arguments as a JSON object.",
                    f"{f}.function.arguments",
                ) from None
            if attempt == 1 and isinstance(args, dict):
                _remark("double_encoded")
        if isinstance(args, str):
            raise RecordProblem(
                "bad_value",
                "the arguments are JSON text encoded more than twice, not an object",
                "Write the arguments as a JSON object.",
                f"{f}.function.arguments",
            )
        if not isinstance(args, dict):
            raise RecordProblem(
                "bad_value",
                f"the arguments are {_type_name(args)}, not an object",
                "Write the arguments as a JSON object.",
                f"{f}.function.arguments",
            )
        item = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call.get("id"), str):
            item["id"] = call["id"]
        out.append(item)
    return out


def normalise_tools(tools) -> list[dict] | None:
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise RecordProblem(
                "invalid_json", "is not valid JSON", "Write tools as a JSON list.", "tools"
            ) from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RecordProblem(
            "bad_value",
            "is not a list of tool definitions",
            'Write tools as [{"type": "function", "function": {...}}].',
            "tools",
        )
    return [t if "function" in t else {"type": "function", "function": t} for t in tools]


def check_messages(messages: list[dict], field: str, positions: list | None = None) -> None:
    """Roles in a trainable order, with at least one assistant turn to learn. `positions` maps each
    message to its index in the user's list (None for one Lathe added, such as a system field)."""
    if not messages:
        raise RecordProblem(
            "empty_field", "has no messages", "Add a user and an assistant message.", field
        )
    seen_other = False
    prev = None
    for i, m in enumerate(messages):
        role = m["role"]
        pos = positions[i] if positions is not None else i
        f = f"{field}[{pos}].role" if pos is not None else "system"
        if role == "system":
            if seen_other:
                raise RecordProblem(
                    "role_order",
                    "a system message comes after the conversation started",
                    "Move the system message to the start.",
                    f,
                )
        elif role == "tool":
            if prev not in ("assistant", "tool") or (
                prev == "assistant" and not messages[i - 1].get("tool_calls")
            ):
                raise RecordProblem(
                    "role_order",
                    "a tool result does not follow an assistant tool call",
                    "Put tool messages right after the assistant message with tool_calls.",
                    f,
                )
        elif role == "assistant":
            if prev in (None, "system"):
                raise RecordProblem(
                    "role_order",
                    "the conversation starts with the assistant",
                    "Start with a user message.",
                    f,
                )
            if prev == "assistant" and not messages[i - 1].get("tool_calls"):
                raise RecordProblem(
                    "role_order",
                    "two assistant messages in a row",
                    "Merge them, or put a user message between them.",
                    f,
                )
        elif role == "user" and prev == "user":
            raise RecordProblem(
                "role_order",
                "two user messages in a row",
                "Merge them, or put the assistant's reply between them.",
                f,
            )
        if role != "system":
            seen_other = True
        prev = role
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        raise RecordProblem(
            "no_assistant",
            "the conversation has no assistant turn, so there is nothing to learn",
            "Add the assistant's reply.",
            field,
        )
    if all(m.get("weight", 1) == 0 for m in assistants):
        raise RecordProblem(
            "nothing_trained",
            "every assistant turn has weight 0, so nothing is learned",
            "Set weight 1 on at least one assistant turn.",
            field,
        )


def norm_sharegpt(record: dict) -> dict:
    key = "conversations" if "conversations" in record else "conversation"
    messages, positions = _sharegpt_messages(record, key)
    check_messages(messages, key, positions)
    result: dict = {"messages": messages}
    tools = normalise_tools(record.get("tools"))
    if tools:
        result["tools"] = tools
    return result


def _sharegpt_messages(record: dict, key: str) -> tuple[list[dict], list[int | None]]:
    """The turns of a ShareGPT record (after its `system` field) as chat messages, with each
    message's index in the user's list (None for the system field)."""
    conv = record.get(key)
    if conv is None:
        raise RecordProblem(
            "missing_field",
            "the field 'conversations' is missing",
            "Every example in this file needs a 'conversations' list.",
            "conversations",
        )
    if not isinstance(conv, list):
        raise RecordProblem(
            "bad_value",
            f"is {_type_name(conv)}, not a list of turns",
            'Write [{"from": "human", "value": "..."}, ...].',
            key,
        )
    messages: list[dict] = []
    positions: list[int | None] = []
    system = _text(record, "system", required=False)
    if system.strip():
        messages.append({"role": "system", "content": system})
        positions.append(None)
    for i, turn in enumerate(conv):
        msg = _sharegpt_turn(turn, f"{key}[{i}]")
        if msg["role"] == "system" and messages and messages[-1]["role"] == "system":
            messages[-1]["content"] += "\n\n" + msg["content"]
            continue
        messages.append(msg)
        positions.append(i)
    return messages, positions


def _sharegpt_turn(turn, f: str) -> dict:
    if not isinstance(turn, dict):
        raise RecordProblem(
            "bad_value",
            f"is {_type_name(turn)}, not a turn object",
            'Write each turn as {"from": ..., "value": ...}.',
            f,
        )
    who = turn.get("from", turn.get("role"))
    value = turn.get("value", turn.get("content"))
    if not isinstance(who, str):
        raise RecordProblem(
            "missing_field",
            "has no 'from'",
            "Say who speaks: human, gpt or system.",
            f"{f}.from",
        )
    role = _SHAREGPT_ROLES.get(who.lower().strip())
    if role is None:
        raise RecordProblem(
            "bad_role",
            f"has the unknown speaker '{who}'",
            "Use human, gpt, system, function_call or observation.",
            f"{f}.from",
        )
    if isinstance(value, list):
        value = _content(value, f"{f}.value")
    if not isinstance(value, str):
        raise RecordProblem(
            "not_text" if value is not None else "missing_field",
            "has no 'value'" if value is None else f"is {_type_name(value)}, not text",
            "Put the turn's text in 'value' as a string.",
            f"{f}.value",
        )
    if not value.strip() and role != "system":
        raise RecordProblem(
            "empty_field", "is empty", "Fill in the turn or remove it.", f"{f}.value"
        )
    if role == "function_call":
        try:
            call = json.loads(value)
        except json.JSONDecodeError:
            raise RecordProblem(
                "invalid_json",
                "a function_call value must be JSON with name and arguments",
                'Write {"name": ..., "arguments": {...}}.',
                f"{f}.value",
            ) from None
        calls = call if isinstance(call, list) else [call]
        msg = {
            "role": "assistant",
            "content": "",
            "tool_calls": _tool_calls(
                [{"function": c} if isinstance(c, dict) else c for c in calls], f"{f}.value"
            ),
        }
    else:
        msg = {"role": role, "content": value}
    weight = _weight(turn, msg["role"], f)
    if weight is not None:
        msg["weight"] = weight
    return msg


# ---------------------------------------------------------------------------------------------
# Preference pairs


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")


def norm_preference(record: dict) -> dict:
    """A chosen/rejected pair as `{"messages": prompt + chosen, "rejected": [...], "chosen_start":
    len(prompt)}`: supervised training reads `messages` (the chosen answer), a preference method
    reads the prompt, the chosen and the rejected continuation.

    Shapes: LLaMA-Factory (`conversations` or `instruction`/`input` + `chosen` + `rejected`), TRL
    (`prompt` text or messages + `chosen` + `rejected`, or only `chosen`/`rejected` conversations
    sharing their start), Anthropic HH (`chosen`/`rejected` texts of "Human:"/"Assistant:" turns)
    and OpenAI (`input` + `preferred_output` + `non_preferred_output`).
    """
    if "preferred_output" in record:  # OpenAI preference fine-tuning
        inp = record.get("input")
        if not isinstance(inp, dict):
            raise RecordProblem(
                "bad_value",
                "is not an object with 'messages'",
                'Write "input": {"messages": [...]}.',
                "input",
            )
        record = {
            "messages": inp.get("messages"),
            "tools": inp.get("tools", record.get("tools")),
            "chosen": record["preferred_output"],
            "rejected": record.get("non_preferred_output"),
        }
        chosen_key, rejected_key = "preferred_output", "non_preferred_output"
    else:
        chosen_key, rejected_key = "chosen", "rejected"
    prompt = _preference_prompt(record)
    chosen = _answer(record.get("chosen"), chosen_key)
    rejected = _answer(record.get("rejected"), rejected_key)
    if prompt is None:
        # No separate prompt: both sides are whole conversations that share their start.
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        while k > 0 and chosen[k]["role"] != "assistant":
            k -= 1
        prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
    if not prompt:
        raise RecordProblem(
            "missing_field",
            "the pair has no prompt",
            "Add the prompt ('prompt', 'conversations' or 'instruction') the answers reply to.",
            chosen_key,
        )
    prompt = [dict(m) for m in prompt]
    for m in prompt:
        if m["role"] == "assistant" and m.get("weight", 1) != 0:
            m["weight"] = 0
            _remark("prompt_turns_masked")
    for side, key in ((chosen, chosen_key), (rejected, rejected_key)):
        if not any(m["role"] == "assistant" for m in side):
            raise RecordProblem(
                "no_assistant",
                "has no assistant answer",
                "Give the answer as text or as an assistant message.",
                key,
            )
        check_messages(prompt + side, key)
    result: dict = {"messages": prompt + chosen, "rejected": rejected, "chosen_start": len(prompt)}
    tools = normalise_tools(record.get("tools"))
    if tools:
        result["tools"] = tools
    return result


def _preference_prompt(record: dict) -> list[dict] | None:
    for key in ("conversations", "conversation"):
        if key in record:
            return _sharegpt_messages(record, key)[0]
    system = _text(record, "system", required=False)
    head = [{"role": "system", "content": system}] if system.strip() else []
    if isinstance(record.get("messages"), list):
        return [_chat_message(m, i) for i, m in enumerate(record["messages"])]
    if "prompt" in record:
        value = record["prompt"]
        if isinstance(value, list):
            return head + [_chat_message(m, i) for i, m in enumerate(value)]
        return head + [{"role": "user", "content": _text(record, "prompt")}]
    if "instruction" in record or "input" in record:
        # Alpaca with history: norm_alpaca builds the messages; its output is the chosen answer.
        built = norm_alpaca(dict(record, output="-"))
        if "messages" in built:
            return built["messages"][:-1]
        return head + [{"role": "user", "content": built["prompt"]}]
    return None


def _answer(value, key: str) -> list[dict]:
    """One side of a pair as assistant (and tool) messages."""
    if value is None:
        raise RecordProblem(
            "missing_field", f"the field '{key}' is missing", f"Add the '{key}' answer.", key
        )
    if isinstance(value, str):
        if _HH_TURN.match(value) and "Assistant:" in value:
            return _hh_turns(value, key)
        if not value.strip():
            raise RecordProblem("empty_field", "is empty", "Fill in the answer.", key)
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RecordProblem(
            "bad_value",
            f"is {_type_name(value)}, not an answer",
            'Write the answer as text or as [{"role": "assistant", "content": "..."}].',
            key,
        )
    out = []
    for i, m in enumerate(value):
        f = f"{key}[{i}]"
        if isinstance(m, dict) and "from" in m:
            out.append(_sharegpt_turn(m, f))
        else:
            msg = _chat_message(m, i)
            out.append(msg)
    return out


def _hh_turns(text: str, key: str) -> list[dict]:
    parts = _HH_TURN.split(text)
    messages = []
    # split gives ["", "Human", "text", "Assistant", "text", ...]
    for who, body in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if who == "Human" else "assistant"
        body = body.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + body
        else:
            messages.append({"role": role, "content": body})
    if not messages or not messages[-1]["content"]:
        raise RecordProblem("empty_field", "the last turn is empty", "Fill in the answer.", key)
    return messages
