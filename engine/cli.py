"""`python -m engine` / `lathe-engine`: everything the app can do, from the command line.

Each sub-command lives in its own module that exposes `register(subparsers)`; the handler it sets
(`parser.set_defaults(handler=...)`) imports heavy modules (MLX) only when it runs, so `--help`
stays instant. Errors exit non-zero with one clear sentence on stderr, never a bare traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

# Sub-command modules, in the order `--help` lists them. A module missing from a build is skipped.
COMMAND_MODULES = (
    "engine.commands.train",
    "engine.commands.data",
    "engine.commands.models",
    "engine.commands.chat",
    "engine.commands.export",
    "engine.commands.eval",
    "engine.commands.runs",
)


# True when main() parses the real command line (the engine is its own process), so a sub-command
# may restart the process (e.g. with OpenBLAS preloaded); False when called in-process with argv.
FROM_COMMAND_LINE = False


class UserError(Exception):
    """An error whose message is meant for the user as it is (no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    from engine import __version__

    parser = argparse.ArgumentParser(
        prog="lathe-engine",
        description="Lathe's engine: fine-tune language models on your own data with MLX.",
    )
    parser.add_argument("--version", action="version", version=f"lathe-engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def add_json_flag(parser: argparse.ArgumentParser, progress: bool = False) -> None:
    parser.add_argument("--json", action="store_true", help="Print machine-readable JSON.")
    if progress:
        parser.add_argument(
            "--progress",
            action="store_true",
            help='Also print progress on stdout, one JSON line each: {"progress": {...}}.',
        )


_last_progress = {"stage": None, "time": 0.0}
PROGRESS_INTERVAL_S = 0.1  # at most ten lines a second within one stage


def print_progress(p) -> None:
    """One progress line for `--progress` (the app's job controller reads them): a dict, or an
    object with to_dict() or dataclass fields, as {"progress": {...}} on one line of stdout.
    Within a stage, reports closer than PROGRESS_INTERVAL_S are dropped (never the last one)."""
    import dataclasses
    import time

    if isinstance(p, dict):
        data = p
    elif hasattr(p, "to_dict"):
        data = p.to_dict()
    elif dataclasses.is_dataclass(p):
        data = dataclasses.asdict(p)
    else:
        data = {"message": str(p)}
    if "fraction" not in data and hasattr(p, "fraction"):
        data = {**data, "fraction": p.fraction}
    now, stage = time.monotonic(), data.get("stage")
    last = data.get("fraction") == 1 or data.get("done") == data.get("total", object())
    if stage == _last_progress["stage"] and not last:
        if now - _last_progress["time"] < PROGRESS_INTERVAL_S:
            return
    _last_progress.update(stage=stage, time=now)
    print(json.dumps({"progress": data}, ensure_ascii=False, default=str), flush=True)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def main(argv: list[str] | None = None) -> int:
    global FROM_COMMAND_LINE
    FROM_COMMAND_LINE = argv is None
    if FROM_COMMAND_LINE:
        lower_priority()
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    tidy_workspace()
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into sentences
        message = _user_message(exc)
        if os.environ.get("LATHE_DEBUG"):
            raise
        print(f"lathe-engine: {message}", file=sys.stderr)
        if getattr(args, "json", False):
            # --json callers read stdout only: the error comes there too, as one object.
            print(json.dumps({"error": _error_dict(exc, message)}, ensure_ascii=False), flush=True)
        return 1


NICE_ENV = "LATHE_WORKER_NICE"


def lower_priority() -> None:
    """A worker the app started (training, import, export...) runs at a lower CPU priority than
    the window (`LATHE_WORKER_NICE`, set by the app): when the cores are busy the OS runs the
    window first, so it keeps responding while the worker computes. Once per process tree: the
    variable is removed, and child processes inherit the priority."""
    value = os.environ.pop(NICE_ENV, "")
    if not value or not hasattr(os, "nice"):
        return
    try:
        os.nice(max(0, min(19, int(value))))
    except (ValueError, OSError):
        pass


def _error_dict(exc: Exception, message: str) -> dict:
    """An error for --json output: kind, message and hint (the hint also ends `message`)."""
    from engine.errors import LatheError

    if isinstance(exc, LatheError):
        return {"kind": exc.kind, "message": str(exc.args[0]) if exc.args else "", "hint": exc.hint}
    return {"kind": "internal", "message": message, "hint": ""}


def tidy_workspace() -> None:
    """Remove what killed Lathe processes left in the workspace's temporary places (best effort:
    a start is never held up by it)."""
    from engine.workspace import tidy

    try:
        tidy()
    except OSError:
        pass


def _user_message(exc: Exception) -> str:
    # Engine error types carry sentences meant for users; anything else gets its type named.
    from engine.errors import LatheError, disk_full, is_disk_full

    if isinstance(exc, (UserError, LatheError)):
        return str(exc)
    if is_disk_full(exc):
        what = f"write {exc.filename}" if getattr(exc, "filename", None) else "write its files"
        return str(disk_full(what))
    if isinstance(exc, FileNotFoundError):
        return f"File not found: {exc.filename or exc}. Check the path."
    if isinstance(exc, PermissionError):
        return f"Permission denied: {exc.filename or exc}."
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{text} ({type(exc).__name__}; set LATHE_DEBUG=1 for the full traceback)."


if __name__ == "__main__":
    sys.exit(main())
