"""One training run in its folder, as a recipe: setup, resume, plan the steps, announce, train
(saving at every checkpoint), finish.

Model loading and LoRA layers come from mlx-lm (`mlx_lm.utils.load`,
`mlx_lm.tuner.utils.linear_to_lora_layers`, `build_schedule`); batching, the loss mask, the fixed
validation subset, checkpoints and resume are Lathe's (the other modules of this package).

Evaluation is not imported here: what runs at every checkpoint besides saving (golden prompts,
the forgetting check) comes in as `checkpoint_hooks`, factories called once the run is set up with
the keywords `config, model, tokenizer, template, sink, at_start, run_dir`, each returning a
function of the step (engine.train passes engine.evaluate.golden.golden_hook).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from engine import events
from engine.batching import fixed_eval_batches, padding_fraction
from engine.config import RunConfig
from engine.errors import LatheError, TrainingError
from engine.runs import claim, release, write_status
from engine.training import checkpoint as ckpt
from engine.training import distributed, loop, memory, method, plans, prepare, recovery, schedule
from engine.training import loss as numerics
from engine.training.reporting import EventReporter, end_reason, logger
from engine.training.utilisation import backend, run_utilisation
from engine.workspace import write_text_atomic

CheckpointHook = Callable[..., Callable[[int], None]]


def run(
    config: RunConfig,
    run_dir: Path,
    sink: events.Sink,
    should_stop: Callable[[], bool] = lambda: False,
    resume: bool = False,
    checkpoint_hooks: Sequence[CheckpointHook] = (),
) -> str:
    """Train in `run_dir` (from its newest checkpoint when `resume`); returns the final status.

    Every outcome ends with a `finished` event and a final status.json; failures also send an
    `error` event with a hint. Nothing raises out of here except KeyboardInterrupt, and RunError
    (before anything is written) when another process is training the same run: the run's lock
    is held for the whole of training.
    """
    run_dir = Path(run_dir)
    claim(run_dir)
    try:
        # The run may adjust its config (automatic choices); the caller's stays as given.
        config = copy.deepcopy(config)
        started = time.time()
        watchdog = recovery.start_watchdog(run_dir, sink)
        try:
            recipe = TrainingRun(
                config, run_dir, sink, should_stop, resume, checkpoint_hooks, started=started
            )
            return _guarded(recipe)
        finally:
            if watchdog is not None:
                watchdog.stop()
    finally:
        release(run_dir)


def _guarded(recipe: TrainingRun) -> str:
    """The recipe within MLX's memory limits; every failure becomes an error event and a status."""
    run_dir, sink = recipe.run_dir, recipe.sink
    try:
        write_status(
            run_dir,
            "running",
            pid=os.getpid(),
            started=recipe.started,
            **({} if recipe.resuming else {"created": recipe.started}),
        )
        plan = memory.machine_plan()
        with memory.limits(plan):
            recipe.log(
                "info",
                f"Memory: MLX may use {plan.limit_bytes / memory.GB:.1f} GB ({plan.source}); the run "
                f"saves a checkpoint and stops if it needs more than {plan.stop_bytes / memory.GB:.1f} GB.",
            )
            recipe.memory_plan = plan
            return recipe.run()
    except LatheError as exc:
        return recovery.fail(
            run_dir, sink, exc.kind, str(exc.args[0]), exc.hint, **getattr(exc, "details", {})
        )
    except Exception as exc:  # noqa: BLE001 - the run must end with an explanation, not a traceback
        return recovery.fail_on(exc, run_dir, sink)


class TrainingRun:
    """The steps of one run; `run()` takes them in order and returns the final status."""

    def __init__(
        self, config, run_dir, sink, should_stop, resume, checkpoint_hooks=(), started=None
    ):
        self.config, self.run_dir, self.sink = config, Path(run_dir), sink
        self.should_stop, self.resuming = should_stop, resume
        self.hook_factories = list(checkpoint_hooks)
        self.hooks: list[Callable[[int], None]] = []
        self.log = logger(sink)
        self.started = started or time.time()
        self.memory_plan: memory.MemoryPlan | None = None
        self.state = None  # the TrainState to continue from (None: step 0)
        self.resumed_from: int | None = None
        self.nan_error: dict | None = None  # a non-finite loss's error, held back (recovery)

    def run(self) -> str:
        self.setup()
        if self.resuming:
            self.resume()
        self.plan_steps()
        self.announce()
        return self.finish(self.train())

    def setup(self) -> None:
        """Model and data (engine.training.prepare), the method's layers and the optimizer."""
        import mlx.core as mx

        config, t = self.config, self.config.training
        mx.random.seed(t.seed)
        self.prep = prep = prepare.prepare(config, self.sink)
        self.model = model = prep.model
        if self.memory_plan is not None and prep.fit_peak_bytes:
            memory.fit_cache_to(self.memory_plan, prep.fit_peak_bytes)
        # Seeded again right before the adapter is drawn, as mlx_lm.lora does: loading the model
        # draws from MLX's random state too (each layer's placeholder init), so without this the
        # LoRA init depended on the model's loading path and differed from mlx-lm's for one seed.
        mx.random.seed(t.seed)
        self.num_layers = method.apply_method(model, config)
        if t.resume_adapter_file and not self.resuming:
            model.load_weights(t.resume_adapter_file, strict=False)
            self.log("info", f"Started from the adapter weights in {t.resume_adapter_file}.")
        if t.grad_checkpoint:
            method.checkpoint_layers(model)
        self.optimizer = method.build_optimizer(config)
        self.adapter_cfg = ckpt.adapter_config(config.lora, self.num_layers)
        write_text_atomic(self.run_dir / "chat_template.jinja", prep.encoder.template)

    def resume(self) -> None:
        """Continue from the newest checkpoint that reads back whole (damaged ones are named)."""
        run_dir, log = self.run_dir, self.log
        ckpt.clean_partial(run_dir)
        had_any = ckpt.latest_checkpoint(run_dir) is not None
        state, damaged = ckpt.load_newest_readable(run_dir, self.model, self.optimizer)
        for note in damaged:
            log("warning", note)
        if state is None and had_any:
            raise TrainingError(
                "No checkpoint of this run can be read back: " + " ".join(damaged),
                "Start a new run with the same settings.",
            )
        if state is None:
            log("warning", "No checkpoint to resume from; starting from step 0.")
            return
        self.state, self.resumed_from = state, state.step
        log(
            "info" if not damaged else "warning",
            f"Resumed from the checkpoint at step {state.step}"
            + (", the newest one that reads back whole." if damaged else "."),
        )

    def plan_steps(self) -> None:
        """Batches, steps, the output layer's path, the loop's settings; refuse a full disk."""
        from mlx.utils import tree_flatten

        config, prep, model, log = self.config, self.prep, self.model, self.log
        t, d = config.training, config.data
        self.ranks = distributed.world()
        mode, size, self.batches_per_epoch = plans.decide_batching(config, model, prep.train, log)
        self.batching = mode
        self.steps = steps = schedule.total_steps(config, len(prep.train), self.batches_per_epoch)
        n_train = len(prep.train)
        self.note = schedule.batch_note(config, mode, size, n_train, self.batches_per_epoch, steps)
        if mode == "budget":
            log("info", self.note)
        self.batches = plans.batch_plan(mode, size, prep.train, config)
        # The output layer apart from the model (see engine.training.loss.masked_loss): on trained
        # positions only, and in chunks with its gradient computed on the way forward.
        head = numerics.training_head(model, prep.train[0].tokens)
        self.args = args = schedule.loop_args(config, steps, head, self.ranks)
        if not t.steps_per_eval:
            log(
                "info",
                f"Validation every {args.steps_per_eval} steps ({steps // args.steps_per_eval} "
                f"evaluations over {steps} steps), chosen from the run's length; set "
                "training.steps_per_eval to choose yourself.",
            )
        self.val_batches = fixed_eval_batches(
            prep.valid, t.batch_size, d.val_batches, t.seed, t.pad_multiple, d.max_seq_length
        )
        trainable = tree_flatten(model.trainable_parameters())
        self.n_trainable = sum(v.size for _, v in trainable)
        adapter_bytes = sum(v.nbytes for _, v in trainable)
        done = self.state.step if self.state else 0
        ckpt.check_disk_space(config, self.run_dir, adapter_bytes, steps, done, log)

    def announce(self) -> None:
        """The `started` event and a running status; the checkpoint hooks start here."""
        self.sink(self.started_event())
        step = self.state.step if self.state else 0
        write_status(self.run_dir, "running", step=step, total_steps=self.steps)
        self.hooks = [
            factory(
                config=self.config,
                model=self.model,
                tokenizer=self.prep.tokenizer,
                template=self.prep.encoder.template,
                sink=self.sink,
                at_start=self.state is None,
                run_dir=self.run_dir,
            )
            for factory in self.hook_factories
        ]

    def started_event(self) -> dict:
        config, prep, args = self.config, self.prep, self.args
        t, d = config.training, config.data
        method_name = config.lora.fine_tune_type
        if prep.quantized and method_name != "full":
            method_name = "q" + method_name
        return events.make(
            "started",
            run_id=self.run_dir.name,
            run_dir=str(self.run_dir),
            total_steps=self.steps,
            resumed_from=self.resumed_from,
            config={
                "model": config.model.path,
                "data": config.data.path,
                "method": method_name,
                "quantized": prep.quantized,
                "chat_template": prep.encoder.template_source,
                "train_examples": len(prep.train),
                "valid_examples": len(prep.valid),
                "valid_eval_examples": sum(len(b.lengths) for b in self.val_batches),
                "test_examples": len(prep.test),
                "layers_trained": self.num_layers,
                "trainable_parameters": int(self.n_trainable),
                "total_parameters": int(method.parameter_count(self.model)),
                "batch_size": t.batch_size,
                "learning_rate": t.learning_rate,
                "max_seq_length": d.max_seq_length,
                "batching": self.batching,
                "examples_per_step": round(len(prep.train) / max(1, self.batches_per_epoch), 2),
                "batch_note": self.note,
                "steps_per_eval": args.steps_per_eval,
                "steps_per_eval_chosen": not t.steps_per_eval,
                "grad_checkpoint": t.grad_checkpoint,
                "packing": self.batching == "pack",
                "backend": backend(),
                "ranks": self.ranks.size,
                # How the frozen base computes here (engine.models.precision): e.g. "float32" for a
                # 4-bit model on a CPU; compute_note says why, for the app and the console.
                "compute_dtype": prep.compute.compute_dtype,
                "stored_dtype": prep.compute.stored,
                "compute_note": prep.compute.note,
            },
        )

    def save(self, s) -> None:
        """A checkpoint of state `s`, published as the run's adapter; then the checkpoint hooks."""
        run_dir = self.run_dir
        path = ckpt.save_checkpoint(run_dir, self.model, self.optimizer, s, self.adapter_cfg)
        ckpt.publish_adapters(path, run_dir / "adapters")
        write_status(
            run_dir,
            "running",
            step=s.step,
            total_steps=self.steps,
            best_val_loss=s.best_val_loss,
            checkpoint=str(path),
        )
        self.sink(events.make("checkpoint", step=s.step, path=str(path)))
        for hook in self.hooks:
            hook(s.step)

    def train(self) -> loop.LoopResult:
        """The loop, and after a non-finite loss the one retry at half the learning rate."""
        self.guard = memory.MemoryGuard(self.memory_plan or memory.machine_plan())
        # Kept local: the reporter refers to this run, and a run referring back to it would keep
        # the model and optimizer alive after the run (until a garbage collection) in a cycle.
        reporter = EventReporter(self.sink, self.save, self.stop_requested)
        self.nan = nan = recovery.NanRetry(self.run_dir, self.model)
        while True:
            result = loop.train(
                self.model,
                self.optimizer,
                self.batches,
                self.val_batches,
                self.args,
                reporter,
                self.state,
            )
            result.reason = end_reason(result, self.config.training.early_stopping_patience)
            self.nan_error = reporter.nan_error
            if not nan.wanted(reporter.nan_error, self.config):
                return result
            nan.roll_back(self, reporter.nan_error)
            reporter.nan_error = None

    def stop_requested(self) -> bool:
        """A stop asked for (`should_stop`), or memory running short (the guard)."""
        return self.should_stop() or self.guard.check()

    def finish(self, result: loop.LoopResult) -> str:
        """Say how the run ended: errors held back, the summary, the test loss, the final status."""
        if self.nan_error is not None:
            self.nan.report(self.sink, self.nan_error, self.config)
        should_stop = self.should_stop
        if result.status == "stopped" and getattr(should_stop, "reason", ""):
            result.reason = f"Stopped ({should_stop.reason})."
        if self.guard.message and result.status == "stopped" and not should_stop():
            recovery.memory_ran_short(self.sink, result, self.guard)
        summary = self.summary(result)
        adapters = self.run_dir / "adapters"
        adapter_path = str(adapters) if (adapters / ckpt.ADAPTER_FILE).exists() else None
        write_status(
            self.run_dir,
            result.status,
            result.reason,
            step=result.state.step,
            total_steps=self.steps,
            best_val_loss=result.state.best_val_loss,
            summary=summary,
            finished=time.time(),
        )
        self.sink(
            events.make(
                "finished", status=result.status, adapter_path=adapter_path, summary=summary
            )
        )
        return result.status

    def summary(self, result: loop.LoopResult) -> dict:
        import mlx.core as mx

        t, state = self.config.training, result.state
        summary = {
            "steps": state.step,
            "total_steps": self.steps,
            "final_train_loss": result.final_train_loss,
            "final_val_loss": result.final_val_loss,
            "best_val_loss": state.best_val_loss,
            "best_val_step": state.best_val_step,
            "stopped_early": bool(result.reason.startswith("Stopped early")),
            "trained_tokens": state.trained_tokens,
            "train_seconds": round(state.elapsed_seconds, 3),
            "wall_seconds": round(time.time() - self.started, 3),
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
        }
        if t.report_utilisation and state.step > 0 and state.elapsed_seconds > 0:
            prep = self.prep
            summary.update(
                run_utilisation(self.model, self.num_layers, self.config, state, prep.train)
            )
            self.log(
                "info",
                f"Training ran at {summary['achieved_gflops']:.1f} GFLOP/s, "
                f"{summary['utilisation']:.0%} of this machine's {summary['reference_gflops']:.1f} GFLOP/s "
                "on a plain matrix multiply of the model's shapes.",
            )
        if result.status == "completed" and t.test and self.prep.test:
            summary.update(self.test_loss())
        return summary

    def test_loss(self) -> dict:
        """The held-out test split's loss, after a completed run (`training.test`)."""
        t, d = self.config.training, self.config.data
        test_batches = fixed_eval_batches(
            self.prep.test, t.batch_size, d.test_batches, t.seed, t.pad_multiple, d.max_seq_length
        )
        self.model.eval()
        loss = loop.evaluate(self.model, test_batches, select_outputs=self.args.select_outputs)
        numbers = {
            "test_loss": loss,
            "test_perplexity": math.exp(min(loss, 50)),
            "test_padding": padding_fraction(test_batches),
        }
        self.log(
            "info",
            f"Test loss {numbers['test_loss']:.4f} (perplexity {numbers['test_perplexity']:.2f}).",
        )
        return numbers
