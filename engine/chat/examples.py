""" "Add to dataset": a chat turn the user liked (or corrected) becomes a training example.

Examples are appended only to Lathe's own copy of a dataset in the workspace
(`datasets/<id>/train.jsonl`), never to the file the user imported, and the file is rewritten
through a temporary file and a rename, so a crash leaves either the old or the new file.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from engine import workspace
from engine.chat.adapters import ChatError

ROLES = ("system", "user", "assistant", "tool")
TRAIN_FILE = "train.jsonl"

_write_lock = threading.Lock()


def validate_example(example: dict) -> dict:
    """A clean `{"messages": [...]}` record, or ChatError saying what is wrong with it."""
    messages = example.get("messages") if isinstance(example, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ChatError("The example has no messages.")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ChatError(f"Message {i + 1} has no valid role (one of {', '.join(ROLES)}).")
        content = message.get("content")
        if not isinstance(content, str):
            raise ChatError(f"Message {i + 1} has no text.")
        kept = {"role": message["role"], "content": content}
        if "weight" in message:
            kept["weight"] = message["weight"]
        clean.append(kept)
    if not any(m["role"] == "user" for m in clean):
        raise ChatError(
            "The example has no user message.", "An example teaches a reply to a question."
        )
    if clean[-1]["role"] != "assistant" or not clean[-1]["content"].strip():
        raise ChatError(
            "The example must end with a reply that is not empty.",
            "Wait for the reply, or type the reply you want the model to learn.",
        )
    return {"messages": clean}


def dataset_file(dataset: str | Path, *, create: bool = False) -> Path:
    """The train file of a workspace dataset: an id, its folder, or a .jsonl file inside it."""
    root = workspace.datasets_dir().resolve()
    text = str(dataset).strip()
    if not text:
        raise ChatError("No dataset chosen.", "Pick a dataset to add the example to.")
    path = Path(text).expanduser()
    if not path.is_absolute() and len(path.parts) == 1 and not path.suffix == ".jsonl":
        path = workspace.inside(root, text)
        if not path.is_dir():
            if not create:
                raise ChatError(
                    f"There is no dataset called '{text}'.",
                    "Pick one from the Data page, or create a new one.",
                )
            workspace.ensure_dir(path)
    path = path.resolve()
    if root not in path.parents:
        raise ChatError(
            f"{path} is not one of Lathe's datasets; Lathe never changes files you imported.",
            "Choose a dataset from the Data page (Lathe's copy in its workspace).",
        )
    if path.is_dir():
        path = path / TRAIN_FILE
    if path.suffix != ".jsonl":
        raise ChatError(f"{path.name} is not a JSONL file.", "Choose a dataset's train.jsonl.")
    if not path.parent.is_dir():
        raise ChatError(f"There is no dataset folder {path.parent}.")
    return path


def add_to_dataset(
    dataset: str | Path, messages: list[dict], reply: str | None = None, *, create: bool = False
) -> Path:
    """Append the conversation `messages` (the last reply replaced by `reply` when given) as one
    `{"messages": [...]}` line to the dataset's train file; return that file."""
    messages = [dict(m) for m in messages]
    if reply is not None:
        if messages and messages[-1].get("role") == "assistant":
            messages[-1]["content"] = reply
        else:
            messages.append({"role": "assistant", "content": reply})
    record = validate_example({"messages": messages})
    target = dataset_file(dataset, create=create)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with _write_lock:
        try:
            old = target.read_bytes()
        except FileNotFoundError:
            old = b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        workspace.write_bytes_atomic(target, old + line.encode("utf-8"))
    return target
