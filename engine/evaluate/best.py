"""Which checkpoint to keep: the lowest validation loss, or the best score on a task metric.

The answer is a step; `RUN:STEP` then names that checkpoint everywhere (chat, export, eval).
"""

from __future__ import annotations

import threading
from pathlib import Path

from engine.chat import ChatModel, checkpoint_steps, resolve_adapter
from engine.evaluate.history import run_history
from engine.evaluate.metrics import EvalError, parse_metric
from engine.evaluate.runner import Progress, choose_prompts, generate_outputs, run_info, summarize


def best_by_val_loss(run: str | Path) -> dict:
    """The saved checkpoint with the lowest validation loss (evaluated at that very step)."""
    info, _ = run_info(run)
    run_dir = info.run_dir
    history = run_history(run_dir)
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise EvalError(
            f"Run {run_dir.name} has no checkpoints yet.", "Wait for its first checkpoint."
        )
    candidates = [{"step": s, "value": history.val_loss_at(s)} for s in steps]
    judged = [c for c in candidates if c["value"] is not None]
    if not judged:
        raise EvalError(
            f"No checkpoint of run {run_dir.name} has a validation loss at its step.",
            "Train with a validation split and steps_per_eval dividing save_every, or pick --by a metric.",
        )
    best = min(judged, key=lambda c: (c["value"], -c["step"]))
    notes = []
    if history.best_val_step is not None and history.best_val_step not in steps:
        notes.append(
            f"The lowest validation loss ({history.best_val_loss:.4f}) was at step "
            f"{history.best_val_step}, which has no checkpoint; step {best['step']} is the best saved one."
        )
    return {
        "run_id": run_dir.name,
        "by": "val_loss",
        "step": best["step"],
        "value": best["value"],
        "spec": f"{_ref(run_dir)}:{best['step']}",
        "higher_is_better": False,
        "candidates": candidates,
        "notes": notes,
    }


def best_by_metric(
    run: str | Path,
    metric: str,
    *,
    prompts: str | Path | None = None,
    max_tokens: int = 128,
    stop: list[str] | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> dict:
    """Evaluate every checkpoint's answers with `metric` and return the best one.

    One model is loaded; only the adapter changes between checkpoints. Ties go to the lower
    validation loss, then to the later step.
    """
    info, config = run_info(run)
    run_dir = info.run_dir
    m = parse_metric(metric)
    if not m.rate:
        raise EvalError(
            f"{m.spec} is a measure with no better direction, so it cannot pick a checkpoint.",
            "Use exact, contains, regex:, json or schema:, or --by val_loss.",
        )
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise EvalError(
            f"Run {run_dir.name} has no checkpoints yet.", "Wait for its first checkpoint."
        )
    items, source = choose_prompts(config, prompts, limit)
    if m.needs_reference and not any(i.reference is not None for i in items):
        raise EvalError(
            f"{m.spec} needs reference answers, and these prompts have none.",
            "Add a 'completion' to each prompt.",
        )
    history = run_history(run_dir)
    chat_model = ChatModel.load(config.model.path or None, resolve_adapter(f"{run_dir}:{steps[0]}"))
    candidates = []
    try:
        base_rows = generate_outputs(
            chat_model, items, [m], max_tokens=max_tokens, sides=("base",), stop=stop, cancel=cancel
        )
        base_value = summarize([m], base_rows, sides=("base",))[0]["base"]
        for n, step in enumerate(steps):
            if n:
                chat_model.set_adapter(resolve_adapter(f"{run_dir}:{step}"))
            rows = generate_outputs(
                chat_model,
                items,
                [m],
                max_tokens=max_tokens,
                sides=("tuned",),
                stop=stop,
                cancel=cancel,
            )
            value = summarize([m], rows, sides=("tuned",))[0]["tuned"]
            candidates.append({"step": step, "value": value, "val_loss": history.val_loss_at(step)})
            if progress:
                progress(
                    {
                        "stage": "checkpoint",
                        "done": n + 1,
                        "total": len(steps),
                        "step": step,
                        "value": value,
                    }
                )
    finally:
        chat_model.close()
    inf = float("inf")
    best = max(
        candidates,
        key=lambda c: (
            c["value"] if c["value"] is not None else -inf,
            -(c["val_loss"] if c["val_loss"] is not None else inf),
            c["step"],
        ),
    )
    return {
        "run_id": run_dir.name,
        "by": m.spec,
        "label": m.label,
        "step": best["step"],
        "value": best["value"],
        "spec": f"{_ref(run_dir)}:{best['step']}",
        "higher_is_better": True,
        "base": base_value,
        "prompts": source,
        "candidates": candidates,
        "notes": [],
    }


def best_checkpoint(run: str | Path, by: str = "val_loss", **kwargs) -> dict:
    """`best_by_val_loss` for by="val_loss", else `best_by_metric` with `by` as the metric spec."""
    if by in ("val_loss", "loss", "validation"):
        return best_by_val_loss(run)
    return best_by_metric(run, by, **kwargs)


def _ref(run_dir: Path) -> str:
    """How to name the run in RUN:STEP: its id inside the workspace, else its folder."""
    from engine.workspace import runs_dir

    return run_dir.name if run_dir.parent.resolve() == runs_dir().resolve() else str(run_dir)
