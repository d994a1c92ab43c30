"""`python -m engine data inspect|import|show|lengths|list`: datasets from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.cli import add_json_flag, print_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="Inspect, import and look inside datasets.",
        description="Read a dataset in any common format, report what was found and what is "
        "wrong, and import it into the workspace.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)

    p = sub.add_parser("inspect", help="Report on a dataset without importing it.")
    _source_args(p)
    _token_args(p)
    add_json_flag(p)
    p.set_defaults(handler=_inspect)

    p = sub.add_parser(
        "import", help="Import a dataset into the workspace (the original is not changed)."
    )
    _source_args(p)
    _token_args(p)
    p.add_argument("--name", help="A name for the dataset (default: the file's name).")
    p.add_argument(
        "--or-demo-model",
        action="store_true",
        help="When --model is not given or not on this Mac, measure tokens with the demo model "
        "(built on first use), as the app does.",
    )
    add_json_flag(p, progress=True)
    p.set_defaults(handler=_import)

    p = sub.add_parser("show", help="Show one example token by token: trained or masked.")
    _source_args(p)
    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="Model folder whose tokenizer and chat template to use.",
    )
    p.add_argument(
        "--index", "-n", type=int, default=0, help="Which example, counting from 0 (default 0)."
    )
    p.add_argument(
        "--split",
        choices=("train", "valid", "test"),
        help="Count within this split (after held-out splits are chosen) instead of file order.",
    )
    p.add_argument(
        "--max-seq-length",
        type=int,
        default=2048,
        help="Longer examples are truncated (default 2048).",
    )
    p.add_argument("--no-mask-prompt", action="store_true", help="Train on prompts too.")
    _template_arg(p)
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="Colour trained/masked tokens (default: when printing to a terminal).",
    )
    add_json_flag(p)
    p.set_defaults(handler=_show)

    p = sub.add_parser(
        "lengths",
        help="Token lengths of a run's training examples, as training encodes them (what the "
        "memory estimate's largest batch is made of).",
    )
    p.add_argument("--config", "-c", required=True, help="The run's config (YAML).")
    p.add_argument("--model", "-m", help="Model folder (default: the config's model.path).")
    add_json_flag(p)
    p.set_defaults(handler=_lengths)

    p = sub.add_parser("list", help="List imported datasets.")
    add_json_flag(p)
    p.set_defaults(handler=_list)


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        metavar="FILE",
        help="A data file, a folder with train/valid/test files, a .zip, or an imported dataset id.",
    )
    p.add_argument(
        "--format", "-f", help="Skip detection: chat, completion, alpaca, sharegpt or text."
    )
    p.add_argument(
        "--map",
        dest="mapping",
        metavar="TARGET=COLUMN,...",
        help="Which columns or fields hold what, e.g. prompt=question,completion=answer "
        "(targets: system, prompt, completion, text); or a JSON object for names with commas.",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="Stop at the first bad example instead of skipping it.",
    )
    p.add_argument("--keep-duplicates", action="store_true", help="Keep repeated examples.")
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="Share held out for validation when the data has no valid split (default 0.1).",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="Share held out for testing when the data has no test split (default 0.05, from 20 "
        "examples up), so evaluation scores examples training never saw; 0 holds none out.",
    )
    p.add_argument("--seed", type=int, default=0, help="Seed for the held-out splits (default 0).")
    p.add_argument(
        "--set",
        dest="fill",
        action="append",
        metavar="WORD=VALUE",
        help="Fill the placeholder {{WORD}} with VALUE in every example (repeatable), e.g. "
        "--set name=Lathe.",
    )


def _token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", "-m", help="Model folder: adds token lengths and trained tokens to the report."
    )
    p.add_argument(
        "--max-seq-length",
        type=int,
        default=2048,
        help="Longer examples are truncated (default 2048).",
    )
    p.add_argument(
        "--batch-size", type=int, default=4, help="For the steps-per-epoch estimate (default 4)."
    )
    p.add_argument("--no-mask-prompt", action="store_true", help="Train on prompts too.")
    _template_arg(p)


def _template_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chat-template",
        metavar="lathe|FILE.jinja",
        help="Chat template instead of the model's own: 'lathe' (Lathe's default, which renders "
        "tools) or a Jinja file.",
    )


def _template(args) -> str | None:
    from engine.data import DataError

    value = getattr(args, "chat_template", None)
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"Cannot read the chat template {path} ({exc}).", "") from None
    from engine.templates import DEFAULT_TEMPLATE_NAMES

    if value.strip().lower() in DEFAULT_TEMPLATE_NAMES:
        return value
    raise DataError(
        f"The chat template '{value}' is neither 'lathe' nor a file.",
        "Give --chat-template lathe or the path of a .jinja file.",
    )


def _options(args):
    from engine.data import Options
    from engine.data.pipeline import IMPORT_TEST_FRACTION, IMPORT_TEST_MIN_EXAMPLES

    default_test = args.test_fraction is None
    return Options(
        format=args.format,
        mapping=args.mapping,
        strict=args.strict,
        valid_fraction=args.valid_fraction,
        test_fraction=IMPORT_TEST_FRACTION if default_test else args.test_fraction,
        test_min_examples=IMPORT_TEST_MIN_EXAMPLES if default_test else 0,
        seed=args.seed,
        dedupe=not args.keep_duplicates,
        fill=args.fill or {},
    )


def _tokens(args):
    from engine.data import TokenSettings

    model = args.model
    if getattr(args, "or_demo_model", False):
        from engine.demo import reference_model

        model = str(reference_model(model))
    if not model:
        return None
    return TokenSettings(
        model,
        max_seq_length=args.max_seq_length,
        batch_size=args.batch_size,
        mask_prompt=not args.no_mask_prompt,
        chat_template=_template(args),
    )


def _source(text: str) -> Path:
    from engine.data import DataError, dataset_dir

    path = Path(text).expanduser()
    if path.exists():
        return path
    folder = dataset_dir(text)
    if folder is None:
        raise DataError(
            f"{text} does not exist.", "Check the path, or see `python -m engine data list`."
        )
    return folder


def _inspect(args) -> int:
    from engine.data import inspect_dataset

    report = inspect_dataset(_source(args.file), _options(args), tokens=_tokens(args))
    print_json(report.to_dict()) if args.json else print(report.to_text())
    return 0


def _import(args) -> int:
    from engine.cli import print_progress
    from engine.data import import_dataset

    report = import_dataset(
        _source(args.file),
        _options(args),
        name=args.name,
        tokens=_tokens(args),
        progress=print_progress if args.progress else None,
    )
    print_json(report.to_dict()) if args.json else print(report.to_text())
    return 0


def _lengths(args) -> int:
    from engine.config import RunConfig
    from engine.models import resolve
    from engine.training.memory import train_lengths

    cfg = RunConfig.load(args.config)
    lengths = train_lengths(cfg, resolve(args.model or cfg.model.path))
    if args.json:
        print_json({"examples": len(lengths), "lengths": lengths})
    elif lengths:
        ordered = sorted(lengths)
        print(
            f"{len(lengths)} training examples: {ordered[0]} to {ordered[-1]} tokens, median "
            f"{ordered[len(ordered) // 2]}."
        )
    else:
        print("No training example trains a token.")
    return 0


def _list(args) -> int:
    from engine.data import list_datasets

    items = list_datasets()
    if args.json:
        print_json([d.__dict__ | {"path": str(d.path)} for d in items])
        return 0
    if not items:
        print("No datasets imported yet. Import one with: python -m engine data import FILE")
        return 0
    for d in items:
        counts = " ".join(f"{k} {v}" for k, v in d.splits.items())
        print(f"{d.id}  {d.format:<10} {counts}  (from {d.original_name})")
    return 0


# Trained tokens on green, masked tokens grey; two shades each so token boundaries show.
_TRAINED = ("\x1b[30;48;5;114m", "\x1b[30;48;5;150m")
_MASKED = ("\x1b[38;5;250;48;5;236m", "\x1b[38;5;250;48;5;239m")
_RESET = "\x1b[0m"


def _show(args) -> int:
    from engine.data import token_view

    view = token_view(
        _source(args.file),
        args.model,
        args.index,
        split=args.split,
        options=_options(args),
        max_seq_length=args.max_seq_length,
        mask_prompt=not args.no_mask_prompt,
        chat_template=_template(args),
    )
    if args.json:
        print_json(view.to_dict())
        return 0
    color = args.color == "always" or (
        args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    print(
        f"Example {view.index} ({view.where}): {view.length} tokens, {view.trained_tokens} trained"
        + (f", truncated to {view.max_seq_length}" if view.truncated else "")
        + "."
    )
    if color:
        print(f"Legend: {_TRAINED[0]} trained {_RESET} {_MASKED[0]} masked {_RESET}\n")
    else:
        print("Trained tokens are between [[ and ]].\n")
    print(render_pieces(view.pieces, color))
    return 0


def render_pieces(pieces, color: bool) -> str:
    """The token view as terminal text: colours, or [[...]] around trained runs without them."""
    out = []
    if color:
        for i, p in enumerate(pieces):
            style = (_TRAINED if p.trained else _MASKED)[i % 2]
            # Newlines are shown and kept, so the colour does not bleed across lines.
            for j, part in enumerate(p.text.split("\n")):
                if j:
                    out.append(f"{style}↵{_RESET}\n")
                if part:
                    out.append(f"{style}{part}{_RESET}")
        return "".join(out)
    inside = False
    for p in pieces:
        if p.trained and not inside:
            out.append("[[")
            inside = True
        elif not p.trained and inside:
            out.append("]]")
            inside = False
        out.append(p.text)
    if inside:
        out.append("]]")
    return "".join(out)
