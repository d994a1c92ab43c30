"""The loop's callbacks as events, and the sentences a run's ending is told in.

The training loop reports numbers through `LoopCallbacks`; `EventReporter` turns them into the
events of DESIGN.md (progress, eval, log) and holds back a non-finite loss's error, which the run
may answer with a retry (engine.training.recovery) before anyone sees it.
"""

from __future__ import annotations

from engine import events
from engine.training.loop import LoopCallbacks, LoopResult


def logger(sink: events.Sink):
    def log(level: str, message: str) -> None:
        sink(events.make("log", level=level, message=message))

    return log


def nan_event(step: int, value: float, where: str) -> dict:
    """The `error` event for a `where` ("training" or "validation") loss that became `value`."""
    if where == "training":
        return events.make(
            "error",
            kind="nan_loss",
            step=step,
            message=f"The training loss became {value} at step {step}, so training stopped.",
            hint="Lower the learning rate (for example to half of it) and resume or start again; "
            "the last good checkpoint is kept.",
        )
    return events.make(
        "error",
        kind="nan_loss",
        step=step,
        message=f"The validation loss became {value} at step {step}, so training stopped.",
        hint="Lower the learning rate and resume or start again; the last good checkpoint is kept.",
    )


def early_stop_reason(state, patience: int) -> str:
    return (
        f"Stopped early at step {state.step}: the validation loss has not improved for "
        f"{patience} evaluations (best {state.best_val_loss:.4f} at step {state.best_val_step})."
    )


def end_reason(result: LoopResult, patience: int) -> str:
    """The status reason for how the loop ended (empty when it simply completed)."""
    if result.ending == "request":
        return "Stopped on request."
    if result.ending == "nan_loss":
        return f"Non-finite loss ({result.final_train_loss}) at step {result.state.step}."
    if result.ending == "nan_val_loss":
        return "Non-finite validation loss."
    if result.ending == "early":
        return early_stop_reason(result.state, patience)
    return ""


class EventReporter(LoopCallbacks):
    """Loop callbacks for a run: events to `sink`, checkpoints through `save`, stop requests from
    `should_stop`. A non-finite loss's error event is kept in `nan_error`, not sent."""

    def __init__(self, sink: events.Sink, save, should_stop):
        self.sink = sink
        self._save = save
        self._should_stop = should_stop
        self.nan_error: dict | None = None

    def should_stop(self) -> bool:
        return self._should_stop()

    def save(self, state) -> None:
        self._save(state)

    def evaluated(self, step: int, val_loss: float) -> None:
        self.sink(events.make("eval", step=step, val_loss=val_loss))

    def progress(self, **numbers) -> None:
        self.sink(events.make("progress", **numbers))

    def non_finite(self, step: int, value: float, where: str) -> None:
        self.nan_error = nan_event(step, value, where)

    def stopped_early(self, state, patience: int) -> None:
        self.sink(events.make("log", level="info", message=early_stop_reason(state, patience)))
