"""The training loop: compiled steps over the batches of an injected plan, reporting only through
callbacks.

Built like mlx-lm's `tuner.trainer.train` (a compiled step over model, optimizer and RNG state),
with what it lacks: a loss mask that ends at each example's last token, a fixed validation subset,
deterministic data order and checkpoints that resume exactly, stop requests at step boundaries, and
a guard against NaN/Inf losses. It composes no message: what happened goes to `LoopCallbacks`
(engine.training.reporting turns it into events) and how it ended is `LoopResult.ending`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from engine.batching import Batch
from engine.training import attention, parts
from engine.training import loss as numerics
from engine.training.checkpoint import TrainState
from engine.training.distributed import beat
from engine.training.plans import BatchPlan
from engine.training.schedule import LoopArgs


class LoopCallbacks:
    """What the loop asks and reports; the defaults ask nothing and report nowhere."""

    def should_stop(self) -> bool:
        return False

    def save(self, state: TrainState) -> None:
        """Save a checkpoint of `state` (every `save_every` steps and when the loop ends, except
        after a non-finite loss, where the last good checkpoint stays as it is)."""

    def evaluated(self, step: int, val_loss: float) -> None:
        pass

    def progress(self, **numbers) -> None:
        """Every `steps_per_report` steps: step, total, epoch, train_loss, learning_rate,
        tokens_per_second, trained_tokens, padding_fraction, peak_memory_gb, eta_seconds."""

    def non_finite(self, step: int, value: float, where: str) -> None:
        """The `where` ("training" or "validation") loss became `value`; the loop ends."""

    def stopped_early(self, state: TrainState, patience: int) -> None:
        pass


@dataclass
class LoopResult:
    status: str  # completed | stopped | failed
    state: TrainState
    final_train_loss: float | None
    final_val_loss: float | None
    reason: str = ""  # filled in by the run (engine.training.reporting.end_reason)
    # How it ended: completed | request | early | nan_loss | nan_val_loss
    ending: str = "completed"


def compiled_loss(model, loss: Callable = numerics.masked_loss, head: str = "auto") -> Callable:
    """`loss` compiled for evaluation: traced once per batch shape, reading the current weights."""
    return mx.compile(
        lambda tokens, weights, segments, select: loss(
            model, tokens, weights, segments, None, select, head
        ),
        inputs=[model.state],
    )


def shard(batch: Batch, rank: int, world_size: int) -> Batch:
    """This rank's rows of a batch (rows padded with empty ones to a multiple of the ranks)."""
    if world_size == 1:
        return batch
    rows = batch.tokens.shape[0]
    extra = -rows % world_size

    def take(a):
        if a is None:
            return None
        if extra:
            a = np.concatenate([a, np.zeros((extra, *a.shape[1:]), dtype=a.dtype)])
        return a[rank::world_size]

    return Batch(
        take(batch.tokens),
        take(batch.weights),
        take(batch.lengths),
        take(batch.segments),
        examples=batch.examples,
    )


def all_sum(x: mx.array, world_size: int) -> mx.array:
    return mx.distributed.all_sum(x, stream=mx.cpu) if world_size > 1 else x


def evaluate(
    model,
    batches: Sequence[Batch],
    loss: Callable = numerics.masked_loss,
    fn: Callable | None = None,
    rank: int = 0,
    world_size: int = 1,
    select_outputs: bool = False,
    prepared: dict | None = None,
) -> float:
    """Token-weighted mean loss over fixed batches (`fn`: a `compiled_loss` to reuse its traces).

    With several ranks each evaluates its rows of every batch and the sums are combined. On MLX's
    CPU backend each batch runs as two groups of rows on two threads, as in training
    (`engine.training.parts`). `select_outputs`: the model passed `output_head_supported`, so the
    output layer runs in chunks (`head_cross_entropy`) and on trained positions only
    (`select_positions`). `prepared`: a dict kept between calls on the same batches, to split them
    and work out their positions once.
    """
    head = "split" if select_outputs else "full"
    fn = fn or (lambda t, w, s, sel: loss(model, t, w, s, None, sel, head))
    total = mx.array(0.0)
    ntoks = mx.array(0.0)
    prepared = {} if prepared is None else prepared
    groups = parts.count() if world_size == 1 else 1
    streams = parts.streams()
    with parts.parallel():
        for i, full in enumerate(batches):
            if i not in prepared:
                prepared[i] = parts.split_rows(
                    shard(full, rank, world_size), groups, select_outputs
                )
            for stream, group in zip(streams, parts.arrays(prepared[i])):
                with mx.stream(stream):
                    value, n = fn(*group)
                total = total + value * n
                ntoks = ntoks + n
            mx.eval(total, ntoks)
            beat()
    total, ntoks = all_sum(total, world_size), all_sum(ntoks, world_size)
    return (total / mx.maximum(ntoks, 1)).item()


def step_function(model, optimizer, loss: Callable, args: LoopArgs):
    """(step, compiled_state): one micro-batch's forward and backward pass, summed into the
    gradient of the earlier ones, and on the last of them the optimizer's update; compiled over
    the model, optimizer and RNG state.

    A micro-batch arrives as groups of its rows (`engine.training.parts.split_rows`): each group's
    forward and backward pass is queued on its own stream, so on MLX's CPU backend they run on
    separate threads."""
    world, accum = args.world_size, args.grad_accumulation_steps
    compiled_state = [model.state, optimizer.state, mx.random.state]
    head = "fused" if args.fused_head else "auto"
    streams = parts.streams()

    def groups_loss(groups, denom):
        total = ntoks = None
        for stream, (tokens, weights, segments, select) in zip(streams, groups):
            with mx.stream(stream):
                value, n = loss(model, tokens, weights, segments, denom, select, head)
            total = value if total is None else total + value
            ntoks = n if ntoks is None else ntoks + n
        return total, ntoks

    loss_value_and_grad = nn.value_and_grad(model, groups_loss)

    def eager_step(groups, denom, prev_grad, do_update):
        (value, ntoks), grad = loss_value_and_grad(groups, denom)
        if prev_grad is not None:
            grad = tree_map(lambda a, b: a + b, grad, prev_grad)
        if do_update:
            if world > 1:
                # Each rank's loss was divided by the whole batch's token count, so the sum of
                # the ranks' gradients is the gradient of the whole batch.
                grad = tree_map(lambda g: mx.distributed.all_sum(g), grad)
            if accum > 1:
                grad = tree_map(lambda g: g / accum, grad)
            optimizer.update(model, grad)
            grad = None
        return value, ntoks, grad

    compiled_step = partial(mx.compile, inputs=compiled_state, outputs=compiled_state)(eager_step)
    seen_shapes: set = set()

    def step(groups, denom, prev_grad, do_update):
        # Compiled steps fuse work and run faster (on a GPU by far), but each new batch shape is
        # traced again. Where tracing costs about as much as a step (small batches on a CPU), a
        # shape runs eagerly the first time it appears and compiled once it comes back (later
        # epochs); batches of at least `compile_min_tokens` tokens are compiled at once.
        key = (
            tuple(
                (t.shape, s is None, None if sel is None else sel.shape) for t, _, s, sel in groups
            ),
            prev_grad is None,
            do_update,
        )
        size = sum(t.size for t, *_ in groups)
        compiled = key in seen_shapes or size >= args.compile_min_tokens
        seen_shapes.add(key)
        return (compiled_step if compiled else eager_step)(groups, denom, prev_grad, do_update)

    return step, compiled_state


def train(
    model,
    optimizer,
    batches: BatchPlan,
    val_batches: Sequence[Batch],
    args: LoopArgs,
    callbacks: LoopCallbacks | None = None,
    state: TrainState | None = None,
    loss: Callable = numerics.masked_loss,
) -> LoopResult:
    """Train until `args.total_steps` optimizer updates, a stop request, or a non-finite loss.

    A step is one optimizer update (over `grad_accumulation_steps` batches of `batches`).
    """
    loop = _Loop(model, optimizer, batches, val_batches, args, callbacks or LoopCallbacks(), state)
    with attention.blocked(model):  # MLX's CPU backend: causal attention without the upper half
        return loop.run(loss)


class _Window:
    """What happened since the last progress report."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.losses: list[float] = []
        self.tokens = self.real = self.padded = 0
        self.time = 0.0


class _Loop:
    def __init__(self, model, optimizer, batches, val_batches, args, callbacks, state):
        self.model, self.optimizer, self.batches = model, optimizer, batches
        self.val_batches, self.args, self.callbacks = val_batches, args, callbacks
        self.state = state or TrainState()
        self.world, self.rank = args.world_size, args.rank
        self.plan = batches.epoch(self.state.epoch)
        self.window = _Window()
        self.step_times: list[float] = []
        self.last_loss: float | None = None
        self.last_val: float | None = None
        self.evals_done = 0
        self.val_prepared: dict = {}  # the validation batches' groups of rows, split once
        self.parts = parts.count() if self.world == 1 else 1  # groups of rows per batch

    def run(self, loss: Callable) -> LoopResult:
        self.loss = loss
        self.step_fn, self.compiled_state = step_function(
            self.model, self.optimizer, loss, self.args
        )
        self.eval_fn = compiled_loss(
            self.model, loss, "split" if self.args.select_outputs else "full"
        )
        s = self.state
        self.model.train()
        if s.step == 0:
            self.last_val = self.run_eval()
        while s.step < self.args.total_steps:
            if self.stop_requested():
                return self.stop()
            outcome = self.update()
            if isinstance(outcome, LoopResult):
                return outcome
            ended = self.after_update(*outcome)
            if ended is not None:
                return ended
        return LoopResult("completed", s, self.last_loss, self.last_val)

    def stop(self) -> LoopResult:
        self.callbacks.save(self.state)
        return LoopResult("stopped", self.state, self.last_loss, self.last_val, ending="request")

    def stop_requested(self) -> bool:
        flag = self.callbacks.should_stop()
        if self.world > 1:  # every rank stops at the same step, or the others would wait forever
            flag = all_sum(mx.array(1.0 if flag else 0.0), self.world).item() > 0
        return flag

    def next_batch(self) -> Batch:
        s = self.state
        if s.position >= len(self.plan):
            s.epoch += 1
            s.position = 0
            self.plan = self.batches.epoch(s.epoch)
        item = self.plan[s.position]
        s.position += 1
        batch = self.batches.batch(item)
        s.seen_examples += batch.examples
        return batch

    def update(self):
        """One optimizer update: (loss, trained tokens, seconds), or the result of a stop."""
        # On MLX's CPU backend each batch runs in two groups of rows on two threads, OpenBLAS at
        # one thread per call meanwhile (and only meanwhile: checkpoint hooks generate text).
        with parts.parallel():
            return self._update()

    def _update(self):
        s, args, w, world = self.state, self.args, self.window, self.world
        accum = args.grad_accumulation_steps
        tic = time.perf_counter()
        # Dropout masks depend only on (seed, step), so a resumed run draws the same ones.
        mx.random.seed(args.seed * 1_000_003 + s.step)
        grad = None
        step_loss = 0.0
        n_trained = 0
        at_step_start = (self.plan, s.epoch, s.position, s.seen_examples)
        processed_at_start = s.processed_tokens
        for micro in range(accum):
            if micro and self.stop_requested():
                # A stop between micro-batches (grad_accumulation_steps can be large): drop the
                # partial gradient and rewind the data to the step's start, so the checkpoint is
                # the state after `state.step` updates and a resumed run redoes this step exactly.
                self.plan, s.epoch, s.position, s.seen_examples = at_step_start
                s.processed_tokens = processed_at_start
                return self.stop()
            batch = self.next_batch()
            mine = shard(batch, self.rank, world)
            # Not with several ranks: a compiled step that both gathers the selected positions and
            # sums gradients across ranks diverged from one process in tests (eager steps agreed),
            # so data-parallel runs keep the full output layer.
            groups = parts.split_rows(
                mine,
                self.parts,
                args.select_outputs and world == 1,
                bucketed=mine.tokens.size >= args.compile_min_tokens,
            )
            w.real += batch.real_tokens
            s.processed_tokens += batch.real_tokens
            # Padding as computed: each group is cut to its longest row (this rank's rows when
            # several ranks share the batch, scaled to the whole batch).
            w.padded += sum(t.size for t, *_ in groups) * (batch.tokens.size / mine.tokens.size)
            n_batch = batch.trained_tokens
            n_trained += n_batch
            value, _, grad = self.step_fn(
                parts.arrays(groups),
                mx.array(float(max(n_batch, 1))),
                grad,
                micro == accum - 1,
            )
            # One sync per batch keeps memory bounded, as in mlx-lm.
            mx.eval(self.compiled_state, value, grad)
            step_loss += all_sum(value, world).item() / accum
            beat()
        if args.clear_cache_threshold and mx.get_cache_memory() > args.clear_cache_threshold:
            mx.clear_cache()
        return step_loss, n_trained, time.perf_counter() - tic

    def after_update(self, step_loss: float, n_trained: int, elapsed: float):
        """Count the update, then report, evaluate and save as due; a LoopResult when it ends."""
        s, args, w = self.state, self.args, self.window
        s.step += 1
        s.trained_tokens += n_trained
        s.elapsed_seconds += elapsed
        w.tokens += n_trained
        w.time += elapsed
        self.step_times.append(elapsed)

        if not math.isfinite(step_loss):
            # The update already applied non-finite gradients; the last checkpoint stays untouched.
            self.callbacks.non_finite(s.step, step_loss, "training")
            return LoopResult("failed", s, step_loss, self.last_val, ending="nan_loss")
        self.last_loss = step_loss
        w.losses.append(step_loss)

        last = s.step == args.total_steps
        if s.step % args.steps_per_report == 0 or last:
            self.report()
        if s.step % args.steps_per_eval == 0 or last:
            ended = self.evaluate_now()
            if ended is not None:
                return ended
        if s.step % args.save_every == 0 or last:
            self.callbacks.save(s)
        return None

    def report(self) -> None:
        s, w = self.state, self.window
        recent = self.step_times[-50:]
        eta = (self.args.total_steps - s.step) * (sum(recent) / len(recent))
        self.callbacks.progress(
            step=s.step,
            total=self.args.total_steps,
            epoch=s.epoch,
            train_loss=sum(w.losses) / len(w.losses),
            learning_rate=float(self.optimizer.learning_rate.item()),
            tokens_per_second=w.tokens / w.time if w.time else 0.0,
            trained_tokens=s.trained_tokens,
            padding_fraction=1.0 - w.real / w.padded if w.padded else 0.0,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
            eta_seconds=eta,
        )
        w.reset()

    def evaluate_now(self) -> LoopResult | None:
        """A due evaluation; ends the loop on a non-finite loss or when it stops early."""
        s = self.state
        self.last_val = self.run_eval()
        if self.last_val is not None and not math.isfinite(self.last_val):
            self.callbacks.non_finite(s.step, self.last_val, "validation")
            return LoopResult("failed", s, self.last_loss, self.last_val, ending="nan_val_loss")
        patience = self.args.early_stopping_patience
        if patience and s.evals_since_best >= patience and s.step < self.args.total_steps:
            self.callbacks.save(s)
            self.callbacks.stopped_early(s, patience)
            return LoopResult("completed", s, self.last_loss, self.last_val, ending="early")
        return None

    def run_eval(self) -> float | None:
        if not self.val_batches:
            return None
        s, model = self.state, self.model
        model.eval()
        # The validation batches are the same every time: on a CPU, trace them from the second
        # evaluation on (see `step_function`).
        compiled = self.evals_done or self.args.compile_min_tokens == 0
        value = evaluate(
            model,
            self.val_batches,
            self.loss,
            self.eval_fn if compiled else None,
            self.rank,
            self.world,
            self.args.select_outputs,
            self.val_prepared,
        )
        self.evals_done += 1
        model.train()
        if math.isfinite(value) and (s.best_val_loss is None or value < s.best_val_loss):
            s.best_val_loss, s.best_val_step, s.evals_since_best = value, s.step, 0
        else:
            s.evals_since_best += 1
        self.callbacks.evaluated(s.step, value)
        return value
