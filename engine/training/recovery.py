"""Recovery: what a run does when something goes wrong, and how it says so.

- A non-finite loss: once in a run's life (resumes included), with `training.nan_retry`, back to
  the last good checkpoint (or the start) at half the learning rate (`NanRetry`); else, or when
  it happens again, an error that says what to change.
- Memory running short (the guard stopped the run), MLX failing to allocate, a lost peer of a
  distributed run, a full disk, anything unexpected: an `error` event with a hint, a final
  status.json and a `finished` event, each even if another fails (`fail`, `fail_on`).
"""

from __future__ import annotations

import copy
import errno
import os
import time
import traceback
from pathlib import Path

from engine import events
from engine.config import RunConfig
from engine.runs import write_status
from engine.training import checkpoint as ckpt
from engine.training import distributed, memory, method
from engine.workspace import read_json, write_text_atomic


def fail(run_dir: Path, sink: events.Sink, kind: str, message: str, hint: str, **details) -> str:
    """Report a failed run: error event, status.json, finished event, each even if another fails."""
    emit(sink, events.make("error", kind=kind, message=message, hint=hint, **details))
    adapters = run_dir / "adapters"
    adapter_path = str(adapters) if (adapters / ckpt.ADAPTER_FILE).exists() else None
    try:
        write_status(run_dir, "failed", message, error_kind=kind, finished=time.time())
    except OSError as exc:
        # With the disk full even status.json may not fit; the app still gets the events, and the
        # run then reads as interrupted (its worker is gone), which is resumable too.
        emit(
            sink,
            events.make("log", level="warning", message=f"status.json could not be updated: {exc}"),
        )
    emit(
        sink,
        events.make(
            "finished", status="failed", adapter_path=adapter_path, summary={"reason": message}
        ),
    )
    return "failed"


def fail_on(exc: Exception, run_dir: Path, sink: events.Sink) -> str:
    """`fail` for an exception that is no LatheError: memory, a lost peer, a full disk, or a bug."""
    if memory.is_allocation_error(exc):
        return fail(
            run_dir,
            sink,
            "memory",
            f"The Mac ran out of memory during training ({first_line(exc)}). "
            f"{checkpoint_note(run_dir)}",
            memory.MEMORY_HINT,
        )
    if distributed.is_peer_lost(exc):
        w = distributed.world()
        return fail(
            run_dir,
            sink,
            "distributed",
            f"Training stopped: the connection to {distributed.describe_lost_peer(w.rank, w.size)} "
            f"was lost ({first_line(exc)}). {checkpoint_note(run_dir)}",
            "Check that every Mac is awake and connected, then resume the run with the same hosts.",
        )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = Path(exc.filename).name if exc.filename else "the run's files"
        return fail(
            run_dir,
            sink,
            "disk_full",
            f"The disk is full, so Lathe could not write {what} and stopped the run. "
            f"{checkpoint_note(run_dir)}",
            "Free some disk space (delete old runs or exports), then resume the run.",
        )
    emit(sink, events.make("log", level="debug", message=traceback.format_exc()))
    return fail(
        run_dir,
        sink,
        "internal",
        f"Training failed unexpectedly: {type(exc).__name__}: {exc}",
        "Resume from the last checkpoint; if it happens again, report it with the run's events.jsonl.",
    )


def start_watchdog(run_dir: Path, sink: events.Sink):
    """With several ranks, end the run with an error (not a hang) when a peer stops answering."""
    ranks = distributed.world()
    if ranks.size == 1:
        return None

    def on_hang(seconds: float) -> None:
        fail(
            run_dir,
            sink,
            "distributed",
            f"Training stopped: {distributed.describe_lost_peer(ranks.rank, ranks.size)} stopped "
            f"answering ({seconds:.0f} s without progress). {checkpoint_note(run_dir)}",
            "Check that every Mac is awake and connected, then resume the run with the same hosts.",
        )
        os._exit(1)  # the main thread is blocked inside a collective and cannot return

    return distributed.Watchdog(on_hang).start()


def emit(sink: events.Sink, event: dict) -> None:
    # Fanout delivers to every sink before raising, so a sink that cannot write (a full disk)
    # has already let the others (the app's stdout) see the event.
    try:
        sink(event)
    except Exception:  # noqa: BLE001
        pass


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def checkpoint_note(run_dir: Path) -> str:
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        return "No checkpoint had been saved yet."
    return f"The checkpoint at step {int(latest.name)} is intact; the run can resume from it."


def memory_ran_short(sink: events.Sink, result, guard: memory.MemoryGuard) -> None:
    """The memory guard stopped the run: say so with the numbers, and end it `failed`."""
    sink(
        events.make(
            "error",
            kind="memory",
            step=result.state.step,
            message=f"{guard.message} The checkpoint at step {result.state.step} is saved.",
            hint=memory.MEMORY_HINT,
            memory=guard.plan.to_dict(),
        )
    )
    result.status, result.reason = "failed", guard.message


def halve_learning_rate(config: RunConfig) -> RunConfig:
    """A copy of `config` with the learning rate (and a schedule's initial and warm-up rates) halved."""
    config = copy.deepcopy(config)
    t = config.training
    t.learning_rate = t.learning_rate / 2
    if t.lr_schedule:
        schedule = dict(t.lr_schedule)
        arguments = list(schedule.get("arguments") or [])
        if arguments:
            arguments[0] = (
                float(arguments[0]) / 2
            )  # every mlx schedule starts with its initial rate
            schedule["arguments"] = arguments
        if "warmup_init" in schedule:
            schedule["warmup_init"] = float(schedule["warmup_init"]) / 2
        t.lr_schedule = schedule
    return config


class NanRetry:
    """The one retry after a non-finite loss a run gets in its life, resumes included."""

    def __init__(self, run_dir: Path, model):
        status = read_json(run_dir / "status.json", {}) or {}
        self.retried = status.get("nan_retry")
        # The trainable weights at step 0, for a rollback without a checkpoint.
        from mlx.utils import tree_flatten

        self.initial = dict(tree_flatten(model.trainable_parameters()))

    def wanted(self, nan_error: dict | None, config: RunConfig) -> bool:
        return nan_error is not None and bool(config.training.nan_retry) and not self.retried

    def roll_back(self, run, nan_error: dict) -> None:
        """Go back to the last good checkpoint of `run` (a TrainingRun) at half the learning rate:
        its config, optimizer and state change; the weights in memory took a non-finite update."""
        run.config = config = halve_learning_rate(run.config)
        t = config.training
        run.optimizer = method.build_optimizer(config)
        state, _ = ckpt.load_newest_readable(run.run_dir, run.model, run.optimizer)
        if state is None:
            from mlx.utils import tree_unflatten

            run.model.update(tree_unflatten(list(self.initial.items())))
        if t.lr_schedule is None:
            run.optimizer.learning_rate = t.learning_rate  # the checkpoint restored the old rate
        run.state = state
        back_to = state.step if state else 0
        self.retried = {
            "step": nan_error.get("step"),
            "rolled_back_to": back_to,
            "learning_rate": t.learning_rate,
        }
        write_text_atomic(run.run_dir / "config.yaml", config.to_yaml())
        write_status(run.run_dir, "running", step=back_to, nan_retry=self.retried)
        run.log(
            "warning",
            f"{nan_error['message'].replace(', so training stopped', '')} Lathe went back to "
            f"{'the checkpoint at step ' + str(back_to) if back_to else 'the start'} and retries once "
            f"at half the learning rate ({t.learning_rate:g}).",
        )

    def report(self, sink: events.Sink, nan_error: dict, config: RunConfig) -> None:
        """Send the held-back error, with the hint for where the run stands."""
        if self.retried:
            nan_error["hint"] = (
                "It happened again after one retry at half the learning rate. Lower the learning "
                "rate further or check the data, then start again; the last good checkpoint is kept."
            )
        elif not config.training.nan_retry:
            nan_error["hint"] += (
                " Or turn on training.nan_retry (retry once at half the learning rate) to let "
                "Lathe do this by itself."
            )
        sink(nan_error)
