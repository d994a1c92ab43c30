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

    With no golden prompts it does nothing. With `at_start` the starting model (the base model for
    a fresh adapter) answers at once as step 0, so the timeline begins where training began.
    """
    from engine.evaluate.prompts import golden_prompts

    try:
        prompts = golden_prompts(config, run_dir)
    except Exception as exc:  # noqa: BLE001 - a bad golden file must not stop training
        sink(events.make("log", level="warning", message=f"Golden prompts are off: {exc}"))
        prompts = []
    if not prompts:
        return lambda step: None
    chat_model = _RunTemplateModel(
        model, tokenizer, template, Path(config.model.path).name or "model"
    )
    max_tokens = config.training.golden_max_tokens

    def hook(step: int) -> None:
        was_training = getattr(model, "training", False)
        model.eval()  # no dropout in the answers
        try:
            answers = answer_prompts(chat_model, prompts, max_tokens)
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
        sink(events.make("golden", step=step, answers=answers))

    if at_start:
        hook(0)
    return hook
