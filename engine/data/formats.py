"""Record formats: which one a file uses, and turning each record into a normalised record.

Normalised records are the three shapes training reads (docs/CONTRACTS.md):
`{"messages": [...], "tools"?: [...]}`, `{"prompt", "completion"}` and `{"text"}`. Normalisers
raise `RecordProblem` with the field and a fix; they never see the file or the line number.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable

from engine.data.problems import DataError, RecordProblem

FORMATS = {
    "chat": "OpenAI chat (messages)",
    "completion": "prompt/completion",
    "alpaca": "Alpaca (instruction/input/output)",
    "sharegpt": "ShareGPT (conversations)",
    "text": "plain text",
}
FORMAT_ALIASES = {
    "openai": "chat",
    "messages": "chat",
    "prompt-completion": "completion",
    "prompt_completion": "completion",
    "bedrock": "completion",
    "conversations": "sharegpt",
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
    """`"prompt=question,completion=answer"` -> {"prompt": "question", "completion": "answer"}."""
    if not spec:
        return {}
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
}


def _guess(d: dict) -> str | None:
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
        "text": norm_text,
    }[fmt]


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
    tools = _tools(record.get("tools"))
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
    if "weight" in m and m["weight"] is not None:
        w = m["weight"]
        if role != "assistant":
            raise RecordProblem(
                "bad_value",
                "a weight is only allowed on assistant messages",
                "Remove the weight.",
                f"{f}.weight",
            )
        if isinstance(w, bool) or w not in (0, 1):
            raise RecordProblem(
                "bad_value",
                f"is {w!r}; a weight must be 0 or 1",
                "Use 0 to skip learning this turn, 1 to learn it.",
                f"{f}.weight",
            )
        out["weight"] = int(w)
    return out


def _content(value, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        # OpenAI content parts: keep text, refuse images and audio rather than drop them silently.
        texts = []
        for part in value:
            if (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
            else:
                kind = part.get("type") if isinstance(part, dict) else _type_name(part)
                raise RecordProblem(
                    "unsupported",
                    f"has a '{kind}' part; only text can be trained",
                    "Remove image or audio parts from this example.",
                    field,
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
        if isinstance(args, str):
            # OpenAI sends arguments as a JSON string; chat templates expect an object.
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise RecordProblem(
                    "invalid_json",
                    "the arguments are not valid JSON",
                    "Write the arguments as a JSON object.",
                    f"{f}.function.arguments",
                ) from None
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


def _tools(tools) -> list[dict] | None:
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
        f = f"{key}[{i}]"
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
        if role in ("assistant", "function_call") and turn.get("weight") in (0, 1):
            msg["weight"] = int(turn["weight"])
        if role == "system" and messages and messages[-1]["role"] == "system":
            messages[-1]["content"] += "\n\n" + value
            continue
        messages.append(msg)
        positions.append(i)
    check_messages(messages, key, positions)
    result: dict = {"messages": messages}
    tools = _tools(record.get("tools"))
    if tools:
        result["tools"] = tools
    return result
