"""The training loop driven directly, with tiny inputs: an injected batch plan, callbacks for
everything it reports (issue 19: batching was a string switch inside the loop and the loop
composed events and hint prose, so tests had to go through a whole run to reach it)."""

from __future__ import annotations

import pytest

from tests.helpers import Plan, fresh_model


@pytest.fixture(scope="module")
def tiny(tiny_chat_model):
    import mlx_lm

    from engine.encode import Encoder

    _, tokenizer = mlx_lm.load(str(tiny_chat_model))
    encoder = Encoder(tokenizer, mask_prompt=True)
    examples = [
        encoder.encode({"prompt": f"Question {i}?", "completion": "Answer " * (i + 1)})
        for i in range(4)
    ]
    return tiny_chat_model, examples


def recorder(stop_after_progress: int | None = None):
    from engine.training.loop import LoopCallbacks

    class Recorder(LoopCallbacks):
        def __init__(self):
            self.saves, self.evals, self.progress_steps, self.nan = [], [], [], []

        def should_stop(self):
            return (
                stop_after_progress is not None and len(self.progress_steps) >= stop_after_progress
            )

        def save(self, state):
            self.saves.append(state.step)

        def evaluated(self, step, val_loss):
            self.evals.append(step)

        def progress(self, **numbers):
            assert numbers["train_loss"] > 0 and numbers["total"] == 5
            self.progress_steps.append(numbers["step"])

        def non_finite(self, step, value, where):
            self.nan.append((step, where))

    return Recorder()


def test_the_loop_takes_its_batches_from_the_plan_and_reports_through_callbacks(tiny):
    from engine.batching import collate
    from engine.training.loop import train
    from engine.training.schedule import LoopArgs

    path, examples = tiny
    model, optimizer = fresh_model(path)
    args = LoopArgs(
        total_steps=5,
        steps_per_report=2,
        steps_per_eval=2,
        save_every=3,
        compile_min_tokens=1 << 30,
    )
    plan, calls = Plan(examples), recorder()
    result = train(model, optimizer, plan, [collate(examples[:2])], args, calls)
    assert (result.status, result.ending, result.state.step) == ("completed", "completed", 5)
    assert plan.epochs == [0, 1, 2]  # two batches per epoch, five steps
    assert calls.evals == [0, 2, 4, 5] and calls.progress_steps == [2, 4, 5]
    assert calls.saves == [3, 5] and calls.nan == [] and result.reason == ""


def test_the_loop_stops_on_request_and_on_a_non_finite_loss_saying_how_it_ended(tiny):
    import mlx.core as mx

    from engine.training.loop import train
    from engine.training.loss import masked_loss
    from engine.training.schedule import LoopArgs

    path, examples = tiny
    args = LoopArgs(total_steps=5, steps_per_report=1, steps_per_eval=100, save_every=100)
    args.compile_min_tokens = 1 << 30
    model, optimizer = fresh_model(path)
    calls = recorder(stop_after_progress=2)
    result = train(model, optimizer, Plan(examples), [], args, calls)
    assert (result.status, result.ending, result.state.step) == ("stopped", "request", 2)
    assert calls.saves == [2]

    def poisoned(*a):
        value, n = masked_loss(*a)
        return value * mx.array(float("nan")), n

    model, optimizer = fresh_model(path)
    calls = recorder()
    result = train(model, optimizer, Plan(examples), [], args, calls, loss=poisoned)
    assert (result.status, result.ending, result.state.step) == ("failed", "nan_loss", 1)
    assert calls.nan == [(1, "training")] and calls.saves == []  # the last good checkpoint stays


def test_a_finished_run_leaves_no_reference_cycle_holding_its_model(tiny_chat_model, tmp_path):
    """When `run` returns, the run's model, optimizer and data are freed at once, not at a later
    garbage collection: a cycle (the run holding its loop reporter, which holds the run) kept them
    alive, and the next measurement in the process (test_models_fit after test_train) read a peak
    45% too high."""
    import gc
    import json

    from engine.config import RunConfig
    from engine.runs import create_run
    from engine.training.recipe import run

    data = tmp_path / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Q{i}?"},
                {"role": "assistant", "content": "A."},
            ]
        }
        for i in range(12)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig()
    cfg.model.path, cfg.data.path = str(tiny_chat_model), str(data)
    cfg.training.iters, cfg.training.batch_size, cfg.training.steps_per_eval = 2, 4, 2
    cfg.training.report_utilisation = cfg.training.general_check = False
    run_dir = create_run(cfg)
    gc.collect()
    gc.disable()
    try:
        assert run(cfg, run_dir, lambda event: None) == "completed"
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kept = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not kept & {"TrainingRun", "_Loop", "EventReporter", "NanRetry"}, kept
