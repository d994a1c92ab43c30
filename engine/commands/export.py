"""`python -m engine export fuse|gguf|ollama|upload`: export a tuned model.

python -m engine export fuse RUN[:STEP] [--dequantize] [--out DIR]
python -m engine export gguf RUN[:STEP]|MODEL_DIR [--dtype f16|f32] [--out FILE]
python -m engine export ollama RUN[:STEP]|MODEL_DIR [--out DIR]
python -m engine export upload RUN[:STEP]|FOLDER --repo USER/NAME [--what mlx|adapter|gguf]
python -m engine export bundle RUN|CONFIG --out DIR [--copy-model]
"""

from __future__ import annotations

import argparse
import signal
import sys

from engine.cli import add_json_flag, print_json, print_progress

SOURCE_HELP = (
    "A run id or run folder, RUN:STEP for a checkpoint, or an adapter folder "
    "(adapters.safetensors + adapter_config.json)."
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="Export a tuned model: fused MLX folder, GGUF, Ollama, Hugging Face Hub.",
        description="Export a tuned model. Each export reports progress and can be stopped with Ctrl-C.",
    )
    sub = parser.add_subparsers(dest="export_command", metavar="KIND", required=True)

    p = sub.add_parser(
        "fuse", help="Fuse the adapter into its base model and save an MLX model folder."
    )
    p.add_argument("source", metavar="RUN[:STEP]", help=SOURCE_HELP)
    p.add_argument("--out", help="Output folder (default: RUN/exports/<name>-fused).")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--dequantize",
        action="store_const",
        const=True,
        default=None,
        help="Write unquantized weights (exact; larger). Default for a quantized base: keep its "
        "quantization when the re-quantized fuse answers a few probe prompts like base + adapter, "
        "else dequantize.",
    )
    which.add_argument(
        "--keep-quantized",
        dest="dequantize",
        action="store_const",
        const=False,
        help="Keep the base's quantization even when the fuse then answers differently.",
    )
    p.add_argument(
        "--no-check", action="store_true", help="Skip the round-trip check after fusing."
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=16,
        help="Greedy tokens per prompt in the round-trip check.",
    )
    _common(p)
    p.set_defaults(handler=_fuse)

    p = sub.add_parser("gguf", help="Write a GGUF file for llama.cpp, LM Studio and Ollama.")
    p.add_argument(
        "source", metavar="RUN[:STEP]|MODEL_DIR", help=SOURCE_HELP + " Or a fused MLX model folder."
    )
    p.add_argument("--out", help="Output file (default: RUN/exports/<name>-f16.gguf).")
    p.add_argument(
        "--dtype", choices=("f16", "f32"), default="f16", help="Tensor type of the weights."
    )
    _common(p)
    p.set_defaults(handler=_gguf)

    p = sub.add_parser(
        "ollama", help="Write a folder with the GGUF and a Modelfile for `ollama create`."
    )
    p.add_argument(
        "source", metavar="RUN[:STEP]|MODEL_DIR", help=SOURCE_HELP + " Or a fused MLX model folder."
    )
    p.add_argument("--out", help="Output folder (default: RUN/exports/<name>-ollama).")
    p.add_argument(
        "--dtype", choices=("f16", "f32"), default="f16", help="Tensor type of the weights."
    )
    p.add_argument("--system", help="A SYSTEM prompt to put in the Modelfile.")
    _common(p)
    p.set_defaults(handler=_ollama)

    p = sub.add_parser("upload", help="Upload to the Hugging Face Hub with a generated model card.")
    p.add_argument(
        "source", metavar="RUN[:STEP]|FOLDER", help=SOURCE_HELP + " Or a folder exported before."
    )
    p.add_argument(
        "--repo", required=True, help="Repository id on the Hub, e.g. your-name/bank-support."
    )
    p.add_argument(
        "--what",
        choices=("mlx", "adapter", "gguf"),
        default="mlx",
        help="What to upload for a run: the fused MLX model, only the adapter, or the GGUF.",
    )
    p.add_argument(
        "--public", action="store_true", help="Make the repository public (default: private)."
    )
    p.add_argument("--dequantize", action="store_true", help="Fuse with unquantized weights.")
    p.add_argument(
        "--model", dest="base_model", help="Base model, when the adapter does not name it."
    )
    p.add_argument(
        "--dry-run", action="store_true", help="Print the model card and upload nothing."
    )
    add_json_flag(p)
    p.set_defaults(handler=_upload)

    p = sub.add_parser(
        "bundle",
        help="Write a folder (config, normalised data, model reference) that "
        "`train --config` runs unchanged on another machine.",
    )
    p.add_argument(
        "source", metavar="RUN|CONFIG", help="A run (id or folder) or a config YAML file."
    )
    p.add_argument("--out", required=True, help="The bundle folder to create.")
    p.add_argument(
        "--copy-model",
        action="store_true",
        help="Copy the model's files into the bundle even when it came from the Hub.",
    )
    add_json_flag(p)
    p.set_defaults(handler=_bundle)


def _bundle(args) -> int:
    from engine.export.bundle import make_bundle

    result = make_bundle(args.source, args.out, copy_model=True if args.copy_model else None)
    if args.json:
        print_json(result.to_dict())
    else:
        c = result.examples
        print(
            f"Bundle: {result.path}  ({c['train']} train, {c['valid']} valid, {c['test']} test examples; "
            f"model {result.model})"
        )
        print(f"On the other machine: lathe-engine train --config {result.path / 'config.yaml'}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", dest="base_model", help="Base model, when the adapter does not name it."
    )
    p.add_argument("--force", action="store_true", help="Replace the output if it exists.")
    p.add_argument(
        "--replace",
        action="store_true",
        help="Replace the output only if it is an earlier export that Lathe wrote; "
        "refuse anything else there.",
    )
    add_json_flag(p, progress=True)


def _run(args, fn, *fn_args, **kwargs):
    """Run an export with a console progress printer; Ctrl-C cancels it cleanly."""
    from engine.export import ExportJob

    job = ExportJob(fn, *fn_args, **kwargs)
    last = {"stage": None}

    def show(p):
        if getattr(args, "progress", False):
            print_progress(p)
            return
        if args.json:
            return
        pct = f"{p.fraction * 100:5.1f}% " if p.fraction is not None else ""
        if p.stage == "fuse" and last["stage"] == "fuse" and not p.message.startswith("Fused"):
            return  # one line per stage, not per layer
        last["stage"] = p.stage
        print(f"{pct}{p.message}", file=sys.stderr, flush=True)

    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        job.cancel()
        print("Cancelling ...", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        return job.run(progress=show)
    finally:
        signal.signal(signal.SIGINT, previous)


def _overwrite(args, kind: str) -> bool:
    """--force replaces anything at --out; --replace only an export Lathe wrote there."""
    if args.force or not args.replace:
        return args.force
    from engine.export.destination import check_replace

    check_replace(kind, args.out or "")
    return True


def _fuse(args) -> int:
    from engine.export import fuse

    result = _run(
        args,
        fuse,
        args.source,
        args.out,
        dequantize=args.dequantize,
        check=not args.no_check,
        max_tokens=args.max_tokens,
        base_model=args.base_model,
        overwrite=_overwrite(args, "fuse"),
    )
    rt = result.round_trip
    if args.json:
        print_json(result.to_dict())
    else:
        print(f"Fused model: {result.path}")
        quant = result.quantization
        print(
            "Weights: "
            + (
                f"{quant['bits']}-bit quantized (as the base)"
                if quant and not result.dequantized
                else "unquantized"
            )
        )
        if result.choice:
            print(result.choice)
        if rt:
            print(rt.summary())
    if rt and not rt.passed:
        print(
            "lathe-engine: the fused model does not reproduce base + adapter; do not use it.",
            file=sys.stderr,
        )
        return 1
    return 0


def _gguf(args) -> int:
    from engine.export import export_gguf

    result = _run(
        args,
        export_gguf,
        args.source,
        args.out,
        dtype=args.dtype,
        base_model=args.base_model,
        overwrite=_overwrite(args, "gguf"),
    )
    if args.json:
        print_json(result.to_dict())
    else:
        print(
            f"GGUF: {result.path} ({result.architecture}, {result.dtype.upper()}, "
            f"{result.tensor_count} tensors, {result.size_bytes / 1e6:.1f} MB; read back and checked)"
        )
        for note in result.notes:
            print(note)
    return 0


def _ollama(args) -> int:
    from engine.export import export_ollama

    result = _run(
        args,
        export_ollama,
        args.source,
        args.out,
        dtype=args.dtype,
        system=args.system,
        base_model=args.base_model,
        overwrite=_overwrite(args, "ollama"),
    )
    if args.json:
        print_json(result.to_dict())
    else:
        print(f"Ollama folder: {result.path} (chat template: {result.template_style})")
        for note in result.notes:
            print(note)
        print(f"Next: {result.to_dict()['create_command']}")
    return 0


def _upload(args) -> int:
    from engine.export import model_card, resolve_adapter, upload

    if args.dry_run:
        print(
            model_card(
                resolve_adapter(args.source, args.base_model),
                kind=args.what,
                repo_id=args.repo,
                dequantized=args.dequantize,
            )
        )
        return 0
    result = _run(
        args,
        upload,
        args.source,
        args.repo,
        what=args.what,
        private=not args.public,
        dequantize=args.dequantize,
        base_model=args.base_model,
    )
    if args.json:
        print_json(result.to_dict())
    else:
        print(
            f"Uploaded {result.folder.name} to {result.url} ({'private' if result.private else 'public'})."
        )
    return 0
