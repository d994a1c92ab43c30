"""`python -m engine chat`: talk to a model, base or tuned, from the terminal.

One prompt (`--prompt`) prints one reply; without it, lines are read from stdin until EOF, with
`/reset`, `/base`, `/tuned`, `/system TEXT` and `/help`. `--json` prints each reply as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys

from engine.cli import add_json_flag

HELP = """Commands: /reset (forget the conversation), /base (adapter off), /tuned (adapter on),
/system TEXT (set the system prompt), /help. End with Ctrl-D."""


CHAT_TEMPERATURE = 0.7
# Compare mode answers greedily unless told otherwise: sampled answers change between runs, so two
# runs' comparisons (or a base/tuned pair) would differ by chance rather than by the adapter.
COMPARE_TEMPERATURE = 0.0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "chat",
        help="Chat with a model, with or without a run's adapter.",
        description="Chat with a model, base or tuned. Replies stream to stdout.",
    )
    p.add_argument(
        "--model", help="Model folder or Hugging Face repo id (default: the run's model)."
    )
    p.add_argument(
        "--adapter",
        metavar="RUN[:STEP]",
        help="A run id or folder, optionally with a checkpoint step, or an adapter folder.",
    )
    p.add_argument("--prompt", help="Send one message and exit; without it, chat interactively.")
    p.add_argument("--system", default="", help="System prompt.")
    p.add_argument(
        "--tools",
        metavar="FILE.json",
        help="Tool definitions the model may call (a JSON list in OpenAI's shape), rendered "
        "through the chat template as in training.",
    )
    p.add_argument("--base", action="store_true", help="Start with the adapter switched off.")
    p.add_argument(
        "--compare",
        action="store_true",
        help="Answer each message twice: base model, then with the adapter.",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"0 is greedy (deterministic). Default {CHAT_TEMPERATURE}; with --compare 0, so the "
        "base and tuned answers are the same each time you ask.",
    )
    p.add_argument("--top-p", type=float, default=1.0, help="Nucleus sampling (1 is off).")
    p.add_argument(
        "--min-p", type=float, default=0.0, help="Minimum probability relative to the top token."
    )
    p.add_argument(
        "--top-k", type=int, default=0, help="Sample from the k likeliest tokens (0 is off)."
    )
    p.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="Above 1 discourages repeats."
    )
    p.add_argument("--max-tokens", type=int, default=512, help="Longest reply in tokens.")
    p.add_argument("--seed", type=int, default=None, help="Random seed, for repeatable sampling.")
    p.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="Stop the reply at this text (repeatable).",
    )
    add_json_flag(p)
    p.set_defaults(handler=run)


def chat_settings(args: argparse.Namespace):
    """The sampling settings the flags ask for (greedy by default in compare mode)."""
    from engine.chat import ChatSettings

    temperature = args.temperature
    if temperature is None:
        temperature = COMPARE_TEMPERATURE if args.compare else CHAT_TEMPERATURE
    settings = ChatSettings(
        temperature=temperature,
        top_p=args.top_p,
        min_p=args.min_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        max_tokens=args.max_tokens,
        seed=args.seed,
        stop=args.stop,
    )
    settings.validate()
    return settings


def run(args: argparse.Namespace) -> int:
    from engine.chat import ChatError, ChatModel, ChatSession, CompareSession, load_tools

    if not args.model and not args.adapter:
        raise ChatError("No model given.", "Pass --model, or --adapter with a run.")
    if args.compare and not args.adapter:
        raise ChatError(
            "--compare needs --adapter.", "Pass the run to compare with its base model."
        )
    settings = chat_settings(args)
    tools = load_tools(args.tools) if args.tools else None
    model = ChatModel.load(args.model, args.adapter)
    try:
        if args.compare:
            session = CompareSession(
                model, system_prompt=args.system, settings=settings, tools=tools
            )
        else:
            session = ChatSession(
                model,
                use_adapter=not args.base,
                system_prompt=args.system,
                settings=settings,
                tools=tools,
            )
        out = _Printer(args.json)
        if args.prompt is not None:
            return _turn(session, args.prompt, out)
        return _interactive(session, out)
    finally:
        model.close()


def _turn(session, text: str, out) -> int:
    from engine.chat import ChatError

    if not text.strip():
        raise ChatError("The prompt is empty.", "Pass some text with --prompt.")
    events = session.send(text)
    if hasattr(session, "sides"):  # compare mode yields (side, event)
        current = None
        try:
            for side, event in events:
                if side != current:
                    current = side
                    out.header(session.sides[side].label)
                out.event(event)
        except KeyboardInterrupt:
            session.cancel()
            out.interrupted()
        return 0
    out.header(session.label if out.json else None)
    try:
        for event in events:
            out.event(event)
    except KeyboardInterrupt:
        session.cancel()
        out.interrupted()
    return 0


def _interactive(session, out) -> int:
    tty = sys.stdin.isatty()
    if tty and not out.json:
        print(f"Chatting with {_label(session)}. {HELP}", file=sys.stderr)
    while True:
        if tty:
            print("> ", end="", flush=True, file=sys.stderr)
        line = _read_line()
        if not line:
            return 0
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.startswith("/"):
            out.info(_command(session, text))
            continue
        _turn(session, text, out)


def _read_line() -> str:
    """One line of input. Bytes that are not UTF-8 (a line pasted from a Latin-1 file) become
    U+FFFD with a note, instead of ending the session."""
    raw_in = getattr(sys.stdin, "buffer", None)
    if raw_in is None:
        return sys.stdin.readline()
    raw = raw_in.readline()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        print(
            "[That line is not valid UTF-8; the bytes that are not were replaced with \ufffd.]",
            file=sys.stderr,
            flush=True,
        )
        return raw.decode("utf-8", "replace")


def _command(session, text: str) -> str:
    name, _, rest = text.partition(" ")
    sessions = list(session.sides.values()) if hasattr(session, "sides") else [session]
    if name == "/reset":
        session.reset()
        return "Conversation cleared."
    if name in ("/base", "/tuned"):
        if hasattr(session, "sides"):
            return "Compare mode answers with both; /base and /tuned do not apply."
        if name == "/tuned" and session.model.adapter is None:
            return "No adapter is loaded; pass --adapter to chat with a tuned model."
        session.use_adapter = name == "/tuned"
        return f"Now chatting with {session.label}."
    if name == "/system":
        for s in sessions:
            s.system_prompt = rest.strip()
        return "System prompt set." if rest.strip() else "System prompt cleared."
    if name == "/help":
        return HELP
    return f"Unknown command {name}. {HELP}"


def _label(session) -> str:
    if hasattr(session, "sides"):
        return " and ".join(s.label for s in session.sides.values())
    return session.label


class _Printer:
    """Human output streams text as it comes; --json prints one JSON line per finished reply."""

    def __init__(self, as_json: bool):
        self.json = as_json
        self._label = None

    def header(self, label: str | None) -> None:
        self._label = label
        if label and not self.json:
            print(f"── {label}", flush=True)

    def event(self, event) -> None:
        if event.kind == "notice":
            if not self.json:
                print(f"[{event.text}]", file=sys.stderr, flush=True)
        elif event.kind == "text":
            if not self.json:
                sys.stdout.write(event.text)
                sys.stdout.flush()
        elif event.kind == "done":
            reply = event.reply
            if self.json:
                print(json.dumps(reply.to_dict(), ensure_ascii=False), flush=True)
                return
            s = reply.stats
            print(flush=True)
            print(
                f"[{s.tokens} tokens · {s.tokens_per_second:.1f} tok/s · first token "
                f"{s.time_to_first_token * 1000:.0f} ms · {s.stop_reason}]",
                file=sys.stderr,
                flush=True,
            )

    def info(self, text: str) -> None:
        if self.json:
            print(json.dumps({"info": text}), flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def interrupted(self) -> None:
        if not self.json:
            print("\n[stopped]", file=sys.stderr, flush=True)
