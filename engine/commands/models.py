"""`python -m engine models ...`: list, download, import, quantize, dequantize, inspect, fit, delete."""

from __future__ import annotations

import argparse
import sys

from engine.cli import add_json_flag, print_json, print_progress

GB = 1024**3


def _gb(n: int | float | None) -> str:
    if n is None:
        return "?"
    return f"{n / GB:.2f} GB" if n >= GB / 10 else f"{n / 1024**2:.1f} MB"


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="Download, import, convert, inspect and size models.")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")

    s = sub.add_parser(
        "list",
        help="List downloaded, imported and converted models, and those in the Hugging Face "
        "cache, LM Studio and Ollama.",
    )
    s.add_argument(
        "--recommended", action="store_true", help="List the recommended models instead."
    )
    add_json_flag(s)
    s.set_defaults(handler=_list)

    s = sub.add_parser("download", help="Download a model from the Hugging Face Hub.")
    s.add_argument(
        "repo_id", metavar="ID", help="Hub model id, e.g. mlx-community/Qwen2.5-0.5B-Instruct-4bit."
    )
    s.add_argument("--revision", default=None, help="Branch, tag or commit (default main).")
    add_json_flag(s)
    s.set_defaults(handler=_download)

    s = sub.add_parser(
        "import",
        help="Add a local model folder (Hugging Face or MLX layout, used in place), or convert a "
        "GGUF file (llama.cpp, LM Studio, Ollama) into the library.",
    )
    s.add_argument(
        "path",
        metavar="PATH",
        help="A model folder, a .gguf file, or an LM Studio / Ollama name from `models list`.",
    )
    s.add_argument(
        "--name", default=None, help="Name in the library (default: the folder or file name)."
    )
    add_json_flag(s)
    s.set_defaults(handler=_import)

    s = sub.add_parser("quantize", help="Write a 4- or 8-bit copy of a model to the library.")
    s.add_argument("path", metavar="PATH", help="Model folder or library name.")
    s.add_argument("--bits", type=int, choices=(4, 8), default=4)
    s.add_argument("--group-size", type=int, choices=(32, 64, 128), default=64)
    s.add_argument("--name", default=None)
    add_json_flag(s, progress=True)
    s.set_defaults(handler=_quantize)

    s = sub.add_parser("dequantize", help="Write an unquantized copy of a quantized model.")
    s.add_argument("path", metavar="PATH")
    s.add_argument("--name", default=None)
    add_json_flag(s)
    s.set_defaults(handler=_dequantize)

    s = sub.add_parser("inspect", help="Show a model's architecture, size and quantization.")
    s.add_argument("path", metavar="PATH", help="Model folder or library name.")
    add_json_flag(s)
    s.set_defaults(handler=_inspect)

    s = sub.add_parser(
        "fit", help="Estimate whether training a model with a config fits in memory."
    )
    s.add_argument("path", metavar="PATH", help="Model folder or library name.")
    s.add_argument(
        "--config", metavar="FILE", help="Run config YAML (default: Lathe's default settings)."
    )
    s.add_argument(
        "--data",
        metavar="DATASET",
        help="Dataset (file, folder, or imported dataset's id or name; default: the config's): "
        "the estimate is then for the largest batch this data forms, not the longest possible one.",
    )
    s.add_argument(
        "--budget-gb", type=float, default=None, help="Memory to plan for (default: this machine)."
    )
    s.add_argument(
        "--measure",
        action="store_true",
        help="Also run two real training steps of the largest batch (the data's, when given) and "
        "report the measured peak.",
    )
    add_json_flag(s)
    s.set_defaults(handler=_fit)

    s = sub.add_parser("delete", help="Remove a model from the library (only files Lathe created).")
    s.add_argument("name", metavar="NAME")
    add_json_flag(s)
    s.set_defaults(handler=_delete)

    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _list(args: argparse.Namespace) -> int:
    if args.recommended:
        from engine.models.recommended import recommended_models

        items = [r.to_dict() for r in recommended_models()]
        if args.json:
            print_json(items)
        else:
            for r in items:
                print(
                    f"{r['repo_id']:<48} ~{r['download_gb']:.1f} GB download, ~{r['train_gb']:.1f} GB to train"
                )
        return 0
    from engine.models.library import list_models

    entries = list_models()
    if args.json:
        print_json([e.to_dict() for e in entries])
        return 0
    if not entries:
        print(
            "No models yet. Download one (models download ID) or import a folder (models import PATH)."
        )
    for e in entries:
        flag = "" if e.available else "  (missing)"
        if e.format == "gguf":
            flag += "  (GGUF: `models import NAME` to train it)"
        print(f"{e.kind:<11} {e.name:<48} {_gb(e.size_bytes):>10}  {e.path}{flag}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from engine.models.library import download

    last = [-1.0]

    def progress(p) -> None:
        # One line per percent on a terminal; nothing with --json (stdout is the result).
        if args.json or not sys.stderr.isatty():
            return
        pct = int(p.fraction * 100)
        if pct != last[0]:
            last[0] = pct
            print(
                f"\r{pct:3d}%  {_gb(p.done_bytes)} of {_gb(p.total_bytes)}  {p.filename}",
                end="",
                file=sys.stderr,
            )

    entry = download(args.repo_id, revision=args.revision, progress=progress)
    if not args.json and sys.stderr.isatty():
        print(file=sys.stderr)
    if args.json:
        print_json(entry.to_dict())
    else:
        print(f"Downloaded {entry.name} ({_gb(entry.size_bytes)}) to {entry.path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from engine.models.importing import import_any

    last = [-1]

    def progress(stage: str, fraction: float) -> None:
        if args.json or not sys.stderr.isatty():
            return
        pct = int(fraction * 100)
        if pct != last[0]:
            last[0] = pct
            print(f"\r{pct:3d}%  {stage}", end="", file=sys.stderr)

    entry = import_any(args.path, name=args.name, progress=progress)
    if last[0] >= 0:
        print(file=sys.stderr)
    if args.json:
        print_json(entry.to_dict())
    elif entry.kind == "converted":
        print(
            f"Imported {entry.name} ({_gb(entry.size_bytes)}) into {entry.path}, converted from "
            f"{entry.source}; the GGUF file is unchanged."
        )
    else:
        print(
            f"Imported {entry.name} ({_gb(entry.size_bytes)}) from {entry.path}; the folder stays where it is."
        )
    return 0


def _convert_progress(args):
    def progress(p) -> None:
        if getattr(args, "progress", False):
            print_progress(p)
            return
        if not args.json and p.stage == "writing" and p.total_bytes and sys.stderr.isatty():
            print(f"\r{int(p.fraction * 100):3d}% written", end="", file=sys.stderr)

    return progress


def _quantize(args: argparse.Namespace) -> int:
    from engine.models.convert import quantize

    entry = quantize(
        args.path, args.bits, args.group_size, name=args.name, progress=_convert_progress(args)
    )
    if args.json:
        print_json(entry.to_dict())
    else:
        print(f"Wrote {entry.name} ({_gb(entry.size_bytes)}) to {entry.path}")
    return 0


def _dequantize(args: argparse.Namespace) -> int:
    from engine.models.convert import dequantize

    entry = dequantize(args.path, name=args.name, progress=_convert_progress(args))
    if args.json:
        print_json(entry.to_dict())
    else:
        print(f"Wrote {entry.name} ({_gb(entry.size_bytes)}) to {entry.path}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from engine.models.info import inspect_model
    from engine.models.library import resolve

    info = inspect_model(resolve(args.path))
    if args.json:
        print_json(info.to_dict())
        return 0
    rows = [
        ("architecture", f"{info.architecture} ({info.model_type})"),
        ("parameters", f"{info.parameters / 1e6:,.1f} M"),
        ("layers", info.num_layers),
        ("hidden size", info.hidden_size),
        ("attention heads", f"{info.num_heads} ({info.num_kv_heads} key/value)"),
        ("vocabulary", f"{info.vocab_size:,}"),
        ("quantization", info.quantization_label),
        ("context length", info.context_length or "unknown"),
        ("chat template", "yes" if info.chat_template else "no"),
        ("size on disk", _gb(info.size_on_disk)),
    ]
    for key, value in rows:
        print(f"{key:<16} {value}")
    return 0


def _fit(args: argparse.Namespace) -> int:
    from engine.config import RunConfig
    from engine.models.fit import estimate
    from engine.models.library import resolve

    warnings: list[str] = []
    cfg = RunConfig.load(args.config, warnings) if args.config else RunConfig()
    path = resolve(args.path)
    cfg.model.path = str(path)
    if args.data:
        cfg.data.path = _dataset_path(args.data)
    lengths = None
    if cfg.data.path:
        from engine.training.memory import train_lengths

        lengths = train_lengths(cfg, path)
    budget = int(args.budget_gb * GB) if args.budget_gb else None
    report = estimate(path, cfg, budget_bytes=budget, lengths=lengths)
    out = report.to_dict()
    if args.measure:
        out["measured"] = _measure(cfg, report, path)
    out["config_warnings"] = warnings
    if args.json:
        print_json(out)
        return 0
    print(report.summary())
    for key, value in report.breakdown.items():
        print(f"  {key.replace('_', ' '):<24} {_gb(value)}")
    print(f"chat needs about {_gb(report.chat_peak_bytes)}")
    if report.suggestion:
        s = report.suggestion
        print(f"to make it fit: {s.description} (about {_gb(s.training_peak_bytes)})")
    elif report.verdict != "fits":
        print("no single change makes it fit; choose a smaller model.")
    measured = out.get("measured")
    if measured and measured.get("peak_bytes"):
        print(
            f"measured peak: {_gb(measured['peak_bytes'])} ({measured['described']}, "
            f"{measured['seconds']:.0f} s); the estimate is "
            f"{report.training_peak_bytes / measured['peak_bytes'] - 1:+.0%} of it"
        )
        as_run = measured.get("estimate_bytes") or 0
        if as_run and as_run != report.training_peak_bytes:
            # The run computes differently from the folder as stored (e.g. a 4-bit base in float32
            # on MLX's CPU backend): its own estimate is the one to compare.
            print(
                f"the run computes in {measured.get('compute_dtype') or 'another precision'} on "
                f"this machine; its own estimate, {_gb(as_run)}, is "
                f"{as_run / measured['peak_bytes'] - 1:+.0%} of the measured peak"
            )
    elif measured:
        print(f"not measured: {measured['skipped']}")
    for note in report.notes + warnings:
        print(f"note: {note}")
    return 0


def _dataset_path(ref: str) -> str:
    """A dataset argument as training reads it: a path, or an imported dataset's id or name."""
    from pathlib import Path

    from engine.data.importer import dataset_dir

    if Path(ref).expanduser().exists():
        return ref
    folder = dataset_dir(ref)
    return str(folder) if folder is not None else ref


def _measure(cfg, report, path) -> dict:
    """Real steps of what the run will do: its data's largest batch when the data is known, else
    the longest possible batch. Only when the estimate says it fits: measuring a run that does not
    fit would push the machine into swap."""
    if report.verdict == "will not fit":
        which = "the data's largest batch" if cfg.data.path else "the longest possible batch"
        return {
            "skipped": f"{which} would not fit in memory ({report.summary()})"
            + (
                ""
                if cfg.data.path
                else "; give --data to measure the largest batch your data forms"
            )
        }
    if cfg.data.path:
        from engine.models.measure import measure_run

        return measure_run(cfg).to_dict()
    from engine.models.measure import measure_training

    cfg = _with_automatic(cfg, report)
    return measure_training(
        path,
        batch_size=report.batch["rows"],
        seq_length=report.batch["width"],
        rank=cfg.lora.rank,
        num_layers=cfg.lora.num_layers,
        fine_tune_type=cfg.lora.fine_tune_type,
        grad_checkpoint=cfg.training.grad_checkpoint,
        keys=cfg.lora.keys,
    ).to_dict()


def _with_automatic(cfg, report):
    import copy

    return copy.deepcopy(cfg).apply(report.automatic)


def _delete(args: argparse.Namespace) -> int:
    from engine.models.library import delete

    result = delete(args.name)
    if args.json:
        print_json(result)
    elif result["removed_files"]:
        print(f"Deleted {result['name']} and freed {_gb(result['freed_bytes'])}.")
    else:
        print(
            f"Removed {result['name']} from the library; its files were not Lathe's, so they stay."
        )
    return 0
