"""Chat with a model, base or tuned: streamed replies, compare mode, and "add to dataset".

The GUI's chat page and `python -m engine chat` both use this package:

    model = ChatModel.load("path/or/repo", adapter="RUN[:STEP]")     # on a worker thread
    session = ChatSession(model, use_adapter=True, system_prompt="...")
    for event in session.send("Hello", ChatSettings(temperature=0.7)):
        ...  # event.kind: notice | text | done (event.reply has the text and stats)
    model.close()                                                     # frees the memory

MLX is imported only when a model is loaded or a reply is generated.
"""

from engine.chat.adapters import AdapterInfo, ChatError, checkpoint_steps, resolve_adapter
from engine.chat.examples import add_to_dataset, dataset_file, validate_example
from engine.chat.generation import (
    ChatEvent,
    ChatModel,
    ChatSettings,
    Reply,
    ReplyStats,
    StopMatcher,
)
from engine.chat.session import ChatSession, CompareSession
from engine.chat.tools import load_tools

__all__ = [
    "AdapterInfo",
    "ChatError",
    "ChatEvent",
    "ChatModel",
    "ChatSession",
    "ChatSettings",
    "CompareSession",
    "Reply",
    "ReplyStats",
    "StopMatcher",
    "add_to_dataset",
    "checkpoint_steps",
    "dataset_file",
    "load_tools",
    "resolve_adapter",
    "validate_example",
]
