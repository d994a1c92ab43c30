"""Golden prompts during training: greedy answers at every checkpoint, sent as `golden` events.

The training worker calls the hook from its checkpoint save, with the model it is training (LoRA
layers live), so a run keeps a timeline of how its answers changed at no cost but a few short
generations. Generation goes through engine.chat's ChatModel, so the answers are exactly what the
chat would say with that checkpoint (same template, same stop strings). A failure here is logged,
never allowed to end the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine import events
from engine.chat import ChatModel, ChatSettings
from engine.evaluate.general import (
    FORGETTING_WARN,
    answer_general,
    check_applies,
    general_score,
    load_general_prompts,
)


class _RunTemplateModel(ChatModel):
    """A ChatModel over the model being trained, answering with the run's own chat template."""

    def __init__(self, model, tokenizer, template: str, name: str):
        super().__init__(model, tokenizer, {}, name, name)
        self._template = template

    def template(self) -> tuple[str, str]:
        return self._template, "run"


def answer_prompts(
    chat_model: ChatModel, prompts: list[str], max_tokens: int, use_adapter: bool = True
) -> list[dict]:
    """Greedy answers to `prompts`, one dict per prompt (prompt, answer, tokens, stop_reason)."""
    settings = ChatSettings(temperature=0.0, max_tokens=max_tokens)
    out = []
    for prompt in prompts:
        reply = chat_model.reply(
            [{"role": "user", "content": prompt}], settings, use_adapter=use_adapter
        )
        out.append(
            {
                "prompt": prompt,
                "answer": reply.text,
                "tokens": reply.stats.tokens,
                "stop_reason": reply.stats.stop_reason,
            }
        )
    return out


def golden_hook(
    config,
    model,
    tokenizer,
    template: str,
    sink: events.Sink,
    *,
    at_start: bool,
    run_dir: Path | None = None,
) -> Callable[[int], None]:
    """A function `hook(step)` that answers the run's golden prompts and sends a `golden` event.

    With the forgetting check on (`training.general_check`), the event also carries `general`:
    the general prompts' answers, each scored (engine.evaluate.general). With neither it does
    nothing. With `at_start` the starting model (the base model for a fresh adapter) answers at
    once as step 0, so the timeline begins where training began; when the base model answers no
    general prompt right there is nothing to lose, and the check stops for the rest of the run.
    """
    from engine.evaluate.prompts import golden_prompts

    try:
        prompts = golden_prompts(config, run_dir)
    except Exception as exc:  # noqa: BLE001 - a bad golden file must not stop training
        sink(events.make("log", level="warning", message=f"Golden prompts are off: {exc}"))
        prompts = []
    general = _general_items(config, tokenizer, run_dir, sink)
    if general and not at_start and not _base_passed_some(run_dir):
        general = []  # a resumed run checks only when its base model's answers (step 0) passed some
    if not prompts and not general:
        return lambda step: None
    chat_model = _RunTemplateModel(
        model, tokenizer, template, Path(config.model.path).name or "model"
    )
    t = config.training
    # What the base model (step 0) answered right, to warn once when a checkpoint loses too much.
    watch = {"base": _base_passed(run_dir) if not at_start else None, "good": None, "warned": False}

    def hook(step: int) -> None:
        if not prompts and not general:
            return  # the forgetting check stopped and there are no golden prompts
        was_training = getattr(model, "training", False)
        model.eval()  # no dropout in the answers
        try:
            answers = answer_prompts(chat_model, prompts, t.golden_max_tokens)
            general_rows = (
                answer_general(chat_model, general, max_tokens=t.general_max_tokens)
                if general
                else None
            )
        except Exception as exc:  # noqa: BLE001 - the run goes on without this step's answers
            sink(
                events.make(
                    "log",
                    level="warning",
                    message=f"Golden prompts could not be answered at step {step}: {exc}",
                )
            )
            return
        finally:
            if was_training:
                model.train()
        fields = {}
        if general_rows is not None:
            fields["general"] = {**general_score(general_rows), "answers": general_rows}
        sink(events.make("golden", step=step, answers=answers, **fields))
        if general_rows is not None:
            _watch_forgetting(watch, step, general_rows, sink)
        if general_rows is not None and step == 0 and not any(r["passed"] for r in general_rows):
            general.clear()  # the base model passes none: nothing to forget, nothing to pay for
            sink(
                events.make(
                    "log",
                    level="info",
                    message="Forgetting check off: the base model answers none of the general "
                    "prompts right, so there is nothing to lose.",
                )
            )

    if at_start:
        hook(0)
    return hook


def _watch_forgetting(watch: dict, step: int, rows: list[dict], sink: events.Sink) -> None:
    """Send one warning the first time a checkpoint loses FORGETTING_WARN of what the base passed."""
    passed = {r["prompt"] for r in rows if r["passed"]}
    if step == 0:
        watch["base"] = passed
        return
    base = watch["base"]
    if not base:
        return
    lost = [p for p in base if p not in passed]
    share = len(lost) / len(base)
    if share < FORGETTING_WARN:
        watch["good"] = step
        return
    if watch["warned"]:
        return
    watch["warned"] = True
    kept = (
        f" Checkpoint {watch['good']} still kept them."
        if watch["good"]
        else " No checkpoint kept them yet."
    )
    sink(
        events.make(
            "log",
            level="warning",
            message=f"Forgetting at step {step}: {len(lost)} of the {len(base)} general prompts "
            f'the base model answered right are now wrong ({share:.0%}; e.g. "{lost[0]}").'
            + kept
            + " Cheapest fixes: fewer epochs, a lower learning rate, an earlier checkpoint, or "
            "general examples mixed into the data.",
        )
    )


def _base_passed(run_dir: Path | None) -> set[str] | None:
    """The general prompts the run's step-0 check (its base model) answered right; None if unknown."""
    if run_dir is None:
        return None
    from engine.evaluate.history import run_history

    base = next((g for g in run_history(run_dir).golden if g["step"] == 0), None)
    general = (base or {}).get("general")
    if not general:
        return None
    return {a["prompt"] for a in general["answers"] if a.get("passed")}


def _base_passed_some(run_dir: Path | None) -> bool:
    """Whether the run's step-0 forgetting check (its base model) answered any general prompt right."""
    return bool(_base_passed(run_dir))


def _general_items(config, tokenizer, run_dir: Path | None, sink: events.Sink) -> list:
    """The general prompts of the forgetting check, or [] when it is off or its file is bad."""
    t = config.training
    on, _ = check_applies(t.general_check, tokenizer)
    if not on:
        return []
    path = t.general_prompts_file
    if path:
        p = Path(path).expanduser()
        if not p.is_absolute() and run_dir is not None and not p.exists():
            path = run_dir / p
    try:
        return load_general_prompts(path)
    except Exception as exc:  # noqa: BLE001 - a bad file must not stop training
        sink(events.make("log", level="warning", message=f"Forgetting check is off: {exc}"))
        return []
