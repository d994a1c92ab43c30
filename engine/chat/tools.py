"""Tool definitions for a chat: read from a JSON file, in the shape training data uses."""

from __future__ import annotations

import json
from pathlib import Path

from engine.chat.adapters import ChatError


def load_tools(path: str | Path) -> list[dict]:
    """The tool definitions in a JSON file: a list of OpenAI tool objects (`{"type": "function",
    "function": {...}}` or just the function), or an object with such a list under "tools"."""
    from engine.data.formats import normalise_tools
    from engine.data.problems import RecordProblem

    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChatError(f"The tools file {p} does not exist.", "Check the path.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ChatError(f"The tools file {p} cannot be read ({exc}).", "Check the file.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChatError(
            f"The tools file {p.name} is not valid JSON (line {exc.lineno}: {exc.msg}).",
            'Write a JSON list of tools: [{"type": "function", "function": {"name": ...}}].',
        ) from None
    if isinstance(data, dict):
        data = data.get("tools", [data] if "name" in data or "function" in data else None)
    try:
        tools = normalise_tools(data)
    except RecordProblem as exc:
        raise ChatError(f"The tools file {p.name} {exc.message}.", exc.hint) from None
    if not tools:
        raise ChatError(f"The tools file {p.name} has no tools.", "Add at least one tool.")
    for i, tool in enumerate(tools):
        name = tool["function"].get("name") if isinstance(tool["function"], dict) else None
        if not isinstance(name, str) or not name:
            raise ChatError(
                f"Tool {i + 1} in {p.name} has no name.",
                'Give each tool a "name" in its "function" object.',
            )
    return tools
