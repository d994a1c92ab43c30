"""Which checkpoint to keep: by validation loss or a task metric, and by the general prompts.

The in-domain measure (the lowest validation loss, or the best score on a task metric) is weighed
with the forgetting check (engine.evaluate.general) by one rule, `general.best_by_both`: among the
checkpoints that keep the general prompts (forgetting below 10% of what the base got right), the
best in-domain one; when every checkpoint forgets, the one that forgets least. By validation loss
the general scores come from the run's training-time checks (no generation); by a metric every
checkpoint also answers the general prompts. The answer is a step; `RUN:STEP` then names that
checkpoint everywhere (chat, export, eval).
"""

from __future__ import annotations

import threading
from pathlib import Path

from engine.chat import ChatModel, checkpoint_steps, resolve_adapter
from engine.evaluate.general import (
    answer_general,
    best_by_both,
    check_applies,
    compare,
    general_score,
)
from engine.evaluate.history import _ref, run_history
from engine.evaluate.metrics import EvalError, parse_metric
from engine.evaluate.runner import (
    Progress,
    choose_general,
    choose_prompts,
    generate_outputs,
    run_info,
    summarize,
)


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
    general = history.general
    candidates = [
        {
            "step": s,
            "value": history.val_loss_at(s),
            "forgetting": (general.get(s) or {}).get("forgetting"),
            "general": (general.get(s) or {}).get("score"),
        }
        for s in steps
    ]
    judged = [c for c in candidates if c["value"] is not None]
    if not judged:
        raise EvalError(
            f"No checkpoint of run {run_dir.name} has a validation loss at its step.",
            "Train with a validation split and steps_per_eval dividing save_every, or pick --by a metric.",
        )
    by_loss = min(judged, key=lambda c: (c["value"], -c["step"]))
    best, rule = best_by_both([c | {"key": -c["value"]} for c in judged])
    best = next(c for c in judged if c["step"] == best["step"])
    notes = []
    if best["step"] != by_loss["step"]:
        notes.append(
            f"Step {by_loss['step']} has the lowest validation loss but forgets general prompts "
            f"({by_loss['forgetting']:.0%}); step {best['step']} is chosen: {rule}."
        )
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
        "rule": rule,
        "by_in_domain_only": by_loss["step"],
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
    general: str | Path | bool | None = None,
) -> dict:
    """Evaluate every checkpoint's answers with `metric` and return the best one by both.

    One model is loaded; only the adapter changes between checkpoints. Each checkpoint also
    answers the general prompts (unless `general` is False), and `general.best_by_both` chooses.
    Ties go to the lower validation loss, then to the later step.
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
    general_items, general_source = choose_general(config, run_dir, general)
    general_tokens = config.training.general_max_tokens
    history = run_history(run_dir)
    chat_model = ChatModel.load(config.model.path or None, resolve_adapter(f"{run_dir}:{steps[0]}"))
    candidates = []
    base_general = None
    try:
        base_rows = generate_outputs(
            chat_model, items, [m], max_tokens=max_tokens, sides=("base",), stop=stop, cancel=cancel
        )
        base_value = summarize([m], base_rows, sides=("base",))[0]["base"]
        if general_items and general is None:
            if not check_applies(config.training.general_check, chat_model.tokenizer)[0]:
                general_items = []
        if general_items:
            base_general = answer_general(
                chat_model,
                general_items,
                max_tokens=general_tokens,
                use_adapter=False,
                cancel=cancel,
            )
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
            candidate = {"step": step, "value": value, "val_loss": history.val_loss_at(step)}
            if base_general is not None:
                tuned_general = answer_general(
                    chat_model, general_items, max_tokens=general_tokens, cancel=cancel
                )
                check = compare(base_general, tuned_general)
                candidate |= {"general": check["tuned"]["score"], "forgetting": check["forgetting"]}
            candidates.append(candidate)
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

    def in_domain(c):  # the metric, then the lower validation loss
        return (
            c["value"] if c["value"] is not None else -inf,
            -(c["val_loss"] if c["val_loss"] is not None else inf),
        )

    by_metric = max(candidates, key=lambda c: (*in_domain(c), c["step"]))
    chosen, rule = best_by_both([c | {"key": in_domain(c)} for c in candidates])
    best = next(c for c in candidates if c["step"] == chosen["step"])
    notes = []
    if best["step"] != by_metric["step"]:
        notes.append(
            f"Step {by_metric['step']} scores best on {m.spec} but forgets general prompts "
            f"({by_metric['forgetting']:.0%}); step {best['step']} is chosen: {rule}."
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
        "base_general": general_score(base_general)["score"] if base_general else None,
        "prompts": source,
        "general_prompts": general_source,
        "rule": rule,
        "by_in_domain_only": by_metric["step"],
        "candidates": candidates,
        "notes": notes,
    }


def best_checkpoint(run: str | Path, by: str = "val_loss", **kwargs) -> dict:
    """`best_by_val_loss` for by="val_loss", else `best_by_metric` with `by` as the metric spec."""
    if by in ("val_loss", "loss", "validation"):
        return best_by_val_loss(run)
    return best_by_metric(run, by, **kwargs)
