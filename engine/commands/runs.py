"""`python -m engine runs list|show|delete`: the training runs in the workspace."""

from __future__ import annotations

import argparse
import sys
import time

from engine.cli import add_json_flag, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("runs", help="List, show and delete training runs.")
    sub = p.add_subparsers(dest="runs_command", metavar="ACTION")

    s = sub.add_parser("list", help="List the runs, newest first.")
    add_json_flag(s)
    s.set_defaults(handler=_list)

    s = sub.add_parser("show", help="Show a run's state, settings, checkpoints and results.")
    s.add_argument("run", metavar="RUN", help="A run id or folder.")
    add_json_flag(s)
    s.set_defaults(handler=_show)

    s = sub.add_parser(
        "delete", help="Delete a run folder (config, events, adapters, checkpoints)."
    )
    s.add_argument("run", metavar="RUN", help="A run id or folder.")
    s.add_argument("--yes", "-y", action="store_true", help="Delete without asking.")
    add_json_flag(s)
    s.set_defaults(handler=_delete)

    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def summary(info) -> dict:
    """What `runs list` and `runs show` print for a run."""
    status, cfg = info.status, info.config
    out = {
        "id": info.id,
        "path": str(info.path),
        "state": info.state,
        "reason": status.get("reason", ""),
        "model": cfg.model.path,
        "data": cfg.data.path,
        "method": cfg.lora.fine_tune_type,
        "step": status.get("step"),
        "total_steps": status.get("total_steps"),
        "best_val_loss": status.get("best_val_loss"),
        "created": status.get("created"),
        "checkpoints": list(info.checkpoints),
        "adapter_path": str(info.adapter_path) if info.adapter_path else None,
    }
    if isinstance(status.get("summary"), dict):
        out["summary"] = status["summary"]
    return out


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "?"


def _list(args: argparse.Namespace) -> int:
    from engine.runs import list_runs

    runs = [summary(r) for r in list_runs()]
    if args.json:
        print_json(runs)
        return 0
    if not runs:
        print("No runs yet. Start one with: python -m engine train --model M --data D")
    for r in runs:
        steps = f"{r['step'] or 0}/{r['total_steps'] or '?'} steps"
        loss = f"  val {r['best_val_loss']:.4f}" if r["best_val_loss"] is not None else ""
        print(f"{r['id']:<40} {r['state']:<12} {steps:<16} {_when(r['created'])}{loss}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from engine.runs import load_run

    info = load_run(args.run)
    r = summary(info)
    if args.json:
        print_json(r | {"config": info.config.to_dict()})
        return 0
    rows = [
        ("run", r["id"]),
        ("folder", r["path"]),
        ("state", r["state"] + (f" ({r['reason']})" if r["reason"] else "")),
        ("model", r["model"]),
        ("data", r["data"]),
        ("method", r["method"]),
        ("steps", f"{r['step'] or 0} of {r['total_steps'] or '?'}"),
        ("created", _when(r["created"])),
        ("checkpoints", ", ".join(map(str, r["checkpoints"])) or "none"),
        ("adapter", r["adapter_path"] or "none yet"),
    ]
    if r["best_val_loss"] is not None:
        rows.append(("best val loss", f"{r['best_val_loss']:.4f}"))
    for key in ("final_train_loss", "final_val_loss", "train_seconds", "peak_memory_gb"):
        value = (r.get("summary") or {}).get(key)
        if value is not None:
            rows.append((key.replace("_", " "), f"{value:.4g}"))
    for key, value in rows:
        print(f"{key:<16} {value}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from engine.cli import UserError
    from engine.runs import delete_run, load_run

    info = load_run(args.run)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(
                f"Deleting run {info.id} needs confirmation: add --yes to delete it without asking."
            )
        answer = input(f"Delete run {info.id} ({info.path}) and its checkpoints? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing was deleted.")
            return 1
    path = delete_run(info.path)
    if args.json:
        print_json({"deleted": info.id, "path": str(path)})
    else:
        print(f"Deleted run {info.id} ({path}).")
    return 0
