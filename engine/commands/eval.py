"""`python -m engine eval`: what fine-tuning changed, base model against tuned, in numbers.

    eval run RUN[:STEP] [--prompts FILE.jsonl] [--metric SPEC ...] [--max-tokens N]
             [--general FILE.jsonl|builtin | --no-general] [--json]
    eval best RUN [--by val_loss|METRIC] [--prompts FILE.jsonl] [--general ... | --no-general] [--json]
    eval report RUN [--results FILE] [--out FILE.html] [--evaluate] [--json]

A metric SPEC is exact, contains, regex:PATTERN, json, schema:FILE.json or length.
Both also answer a few general prompts with base and tuned (the forgetting check,
engine/evaluate/general.py) and warn when the tuned model lost what its base could do.
"""

from __future__ import annotations

import argparse
import sys

from engine.cli import add_json_flag, print_json, print_progress

METRIC_HELP = (
    "Task metric (repeatable): exact, contains, regex:PATTERN, json, schema:FILE.json, length. "
    "Default: the run's data.eval_metrics, else exact, contains and length."
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="Evaluate a run against its base model: loss, task metrics, answers side by side.",
        description="Evaluate what fine-tuning changed: base model against tuned model on the same "
        "tokens and prompts, the best checkpoint, and an HTML report.",
    )
    sub = p.add_subparsers(dest="eval_command", metavar="ACTION")

    r = sub.add_parser(
        "run",
        help="Evaluate RUN[:STEP] and its base model on held-out prompts.",
        description="Loss and perplexity on the test split, task metrics on held-out "
        "prompts, greedy answers of base and tuned; saved in the run's eval/ folder.",
    )
    r.add_argument(
        "run", metavar="RUN[:STEP]", help="A run id or folder, optionally with a checkpoint step."
    )
    _prompt_args(r)
    r.add_argument("--metric", action="append", default=None, metavar="SPEC", help=METRIC_HELP)
    r.add_argument(
        "--no-loss", action="store_true", help="Skip the loss comparison on the test split."
    )
    _general_args(r)
    add_json_flag(r, progress=True)
    r.set_defaults(handler=_run)

    b = sub.add_parser(
        "best",
        help="Name the best checkpoint, by validation loss or a task metric.",
        description="The best checkpoint of a run. By a metric, every checkpoint answers the "
        "held-out prompts. Use the answer as RUN:STEP in chat, export and eval.",
    )
    b.add_argument("run", metavar="RUN", help="A run id or folder.")
    b.add_argument(
        "--by",
        default="val_loss",
        metavar="val_loss|METRIC",
        help="val_loss (default) or a metric spec such as exact or schema:FILE.json.",
    )
    _prompt_args(b)
    _general_args(b)
    add_json_flag(b)
    b.set_defaults(handler=_best)

    rep = sub.add_parser(
        "report",
        help="Write the run's report: one self-contained HTML file.",
        description="Config, loss curves, metrics base versus tuned, answers side by side "
        "and the golden prompt timeline, in one HTML file.",
    )
    rep.add_argument("run", metavar="RUN", help="A run id or folder.")
    rep.add_argument(
        "--results", metavar="FILE", help="An evaluation's results.json (default: the latest)."
    )
    rep.add_argument(
        "--evaluate", action="store_true", help="Run an evaluation first when the run has none."
    )
    rep.add_argument(
        "--out", metavar="FILE.html", help="Where to write it (default: RUN/report.html)."
    )
    add_json_flag(rep)
    rep.set_defaults(handler=_report)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prompts",
        metavar="FILE.jsonl",
        help="Held-out prompts with reference answers (default: data.eval_prompts, else the test split).",
    )
    p.add_argument(
        "--max-tokens", type=int, default=128, help="Longest answer in tokens (default 128)."
    )
    p.add_argument("--limit", type=int, default=None, help="Use only the first N prompts.")
    p.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="End each answer at this text (repeatable), e.g. a newline for models that never emit EOS.",
    )


def _general_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--general",
        metavar="FILE.jsonl|builtin",
        help="Forgetting check prompts (JSONL: prompt, reference, metric), or 'builtin' for "
        "Lathe's set. Default: the run's training.general_prompts_file, else the built-in set, "
        "checked when the model has its own chat template.",
    )
    g.add_argument(
        "--no-general", action="store_true", help="Skip the forgetting check (general prompts)."
    )


def _general(args):
    if args.no_general:
        return False
    if args.general and args.general.strip().lower() in ("builtin", "built-in"):
        from engine.evaluate.general import builtin_path

        return str(builtin_path())
    return args.general or None


def _progress(as_json: bool, as_lines: bool = False):
    def show(p: dict) -> None:
        if as_lines:
            print_progress(p)
            return
        if as_json:
            return
        if p["stage"] in ("load", "loss", "general"):
            print(f"{p['message']}…", file=sys.stderr, flush=True)
        elif p["stage"] == "generate" and (p["done"] == p["total"] or p["done"] % 10 == 0):
            print(f"  answered {p['done']}/{p['total']}", file=sys.stderr, flush=True)
        elif p["stage"] == "checkpoint":
            print(f"  step {p['step']}: {p['value']}", file=sys.stderr, flush=True)

    return show


def _check(args) -> None:
    from engine.evaluate import EvalError

    if args.max_tokens < 1:
        raise EvalError("--max-tokens must be at least 1.")
    if args.limit is not None and args.limit < 1:
        raise EvalError("--limit must be at least 1.")


def _stops(args) -> list[str] | None:
    # A newline is awkward to type in a shell, so the escapes backslash-n and backslash-t are accepted.
    return [s.replace("\\n", "\n").replace("\\t", "\t") for s in args.stop] if args.stop else None


def _run(args) -> int:
    from engine.evaluate import evaluate_run

    _check(args)
    results = evaluate_run(
        args.run,
        prompts=args.prompts,
        metrics=args.metric,
        max_tokens=args.max_tokens,
        stop=_stops(args),
        limit=args.limit,
        loss=not args.no_loss,
        progress=_progress(args.json, args.progress),
        general=_general(args),
    )
    if args.json:
        print_json(results)
        return 0
    print(format_summary(results))
    return 0


def format_summary(results: dict) -> str:
    lines = [f"{results['adapter']['label']} against its base model {results['model']}"]
    rows = [("", "base", "tuned")]
    loss = results.get("loss")
    if loss:
        for key in ("loss", "perplexity"):
            rows.append(
                (
                    f"{key} ({loss['split']}, {loss['tokens']} tokens)",
                    f"{loss['base'][key]:.4f}",
                    f"{loss['tuned'][key]:.4f}",
                )
            )
    for m in results["metrics"]:
        fmt = (
            (lambda v: "–" if v is None else f"{v * 100:.1f}%")
            if m["rate"]
            else (lambda v: "–" if v is None else f"{v:.1f}")
        )
        rows.append((m["label"], fmt(m["base"]), fmt(m["tuned"])))
    f = results.get("forgetting") or {}
    if f.get("checked"):
        rows.append(
            (
                f"general prompts ({f['base']['total']}, forgetting check)",
                f"{f['base']['passed']}/{f['base']['total']}",
                f"{f['tuned']['passed']}/{f['tuned']['total']}",
            )
        )
    width = max(len(r[0]) for r in rows)
    lines += [f"  {a:<{width}}  {b:>9}  {c:>9}" for a, b, c in rows]
    if f.get("checked"):
        from engine.evaluate.general import summary_line

        lines.append("  " + summary_line(f))
    lines += [f"  note: {n}" for n in results.get("notes", [])]
    if results.get("path"):
        lines.append(f"Per-example answers: {results['path']}")
    return "\n".join(lines)


def _best(args) -> int:
    from engine.evaluate import best_checkpoint

    _check(args)
    kwargs = {}
    if args.by not in ("val_loss", "loss", "validation"):
        kwargs = dict(
            prompts=args.prompts,
            max_tokens=args.max_tokens,
            stop=_stops(args),
            limit=args.limit,
            progress=_progress(args.json),
            general=_general(args),
        )
    best = best_checkpoint(args.run, args.by, **kwargs)
    if args.json:
        print_json(best)
        return 0
    value = best["value"]
    shown = f"{value:.4f}" if best["by"] == "val_loss" else f"{value * 100:.1f}%"
    print(
        f"Best checkpoint by {best['by']}: step {best['step']} ({shown}). Use it as {best['spec']}."
    )
    if best.get("base") is not None:
        print(f"  base model: {best['base'] * 100:.1f}%")
    if best.get("rule"):
        print(f"  chosen by both the in-domain measure and the general prompts: {best['rule']}")
    for note in best.get("notes", []):
        print(f"  note: {note}")
    return 0


def _report(args) -> int:
    from engine.evaluate import latest_results, load_results, write_report
    from engine.evaluate.runner import evaluate_run, run_info

    info, _ = run_info(args.run)
    run_dir = info.run_dir
    if args.results:
        results = load_results(args.results)
    else:
        results = latest_results(run_dir)
        if results is None and args.evaluate:
            results = evaluate_run(str(run_dir), progress=_progress(args.json))
    path = write_report(run_dir, results, args.out)
    if args.json:
        print_json({"path": str(path), "results": results.get("path") if results else None})
    else:
        print(f"Report written to {path}")
        if results is None:
            print(
                "  It has no evaluation yet; run `python -m engine eval run "
                f"{run_dir.name}` or pass --evaluate.",
                file=sys.stderr,
            )
    return 0
