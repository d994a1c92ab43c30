"""The training loop: compiled steps over length-grouped batches, reporting only through a sink.

Built like mlx-lm's `tuner.trainer.train` (a compiled step over model, optimizer and RNG state),
with what it lacks: a loss mask that ends at each example's last token, a fixed validation subset,
deterministic data order and checkpoints that resume exactly, stop requests at step boundaries, and
a guard against NaN/Inf losses.
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

from engine import events
from engine.batching import (
    Batch,
    collate,
    collate_packed,
    plan_epoch,
    plan_epoch_budget,
    plan_epoch_packed,
)
from engine.encode import Encoded
from engine.head import HEAD_CHUNK_VALUES, HEAD_MODEL_TYPES, head_chunk_rows
from engine.training.checkpoint import TrainState
from engine.training.distributed import beat


class PackedMask:
    """Stands in for mlx-lm's KV cache during training to hand the model a block-diagonal mask.

    mlx-lm's attention asks the cache for its mask (`make_mask`) and its position offset; this
    object answers with "attend causally within your own example" and offset 0, and caches nothing.
    Rotary positions make attention depend only on relative positions, so an example packed at
    offset 300 of a row computes what it would at offset 0 of a row of its own.
    """

    offset = 0

    def __init__(self, mask: mx.array):
        self.mask = mask

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None):
        if window_size:
            idx = mx.arange(n)
            return self.mask & (idx[:, None] < idx[None, :] + window_size)
        return self.mask

    def update_and_fetch(self, keys, values):
        return keys, values


def segment_mask(segments: mx.array) -> mx.array:
    """[B, 1, L, L] boolean mask: causal, and only within the same segment."""
    n = segments.shape[1]
    idx = mx.arange(n)
    causal = idx[:, None] >= idx[None, :]
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


# A batch computes logits only at its trained positions when those are at most this share of it.
SELECT_MAX_FRACTION = 7 / 8


def _head_module(model):
    """The module holding the output layer's weights: `lm_head`, or the tied input embedding."""
    head = getattr(model, "lm_head", None)
    return model.model.embed_tokens if head is None else head


def _head(model):
    """The model's output layer: `lm_head`, or the tied input embedding used as a linear layer."""
    module = _head_module(model)
    return module.as_linear if module is model.model.embed_tokens else module


def output_head_supported(model, sample: Sequence[int]) -> bool:
    """Whether `masked_loss(..., select=...)` may run the output layer on selected positions only.

    The architecture must be one whose logits are `head(self.model(inputs))`, and the two ways
    must agree on a sample of token ids (a guard against a variant that does more, such as a
    final soft cap or logit scaling).
    """
    model_type = getattr(getattr(model, "args", None), "model_type", None) or getattr(
        model, "model_type", None
    )
    if model_type not in HEAD_MODEL_TYPES or not hasattr(model, "model"):
        return False
    try:
        x = mx.array(list(sample)[:16] or [0])[None]
        full = model(x)
        split = _head(model)(model.model(x))
        mx.eval(full, split)
    except Exception:  # noqa: BLE001 - any surprise means: use the plain path
        return False
    scale = float(mx.abs(full).max().item()) + 1e-6
    tolerance = 1e-4 if full.dtype == mx.float32 else 2e-2
    return (
        full.shape == split.shape and float(mx.abs(full - split).max().item()) <= tolerance * scale
    )


def select_positions(weights: np.ndarray) -> np.ndarray | None:
    """Flat indices of the trained target positions of a batch, padded to a bounded set of sizes.

    `weights` is the batch's [B, L] weights; targets are positions 1..L-1, flattened as
    [B, L-1]. The count is rounded up to eighths of the batch so compiled steps see few distinct
    shapes; the padding repeats an untrained position (weight 0), so it adds nothing to the loss.
    Returns None when the trained share is too large for selection to save anything.
    """
    w = weights[:, 1:].reshape(-1)
    trained = np.flatnonzero(w)
    total = w.size
    eighth = max(1, -(-total // 8))
    size = max(eighth, -(-len(trained) // eighth) * eighth)
    if size > SELECT_MAX_FRACTION * total:  # also when every position is trained
        return None
    filler = int(np.flatnonzero(w == 0)[0])
    return np.concatenate([trained, np.full(size - len(trained), filler)]).astype(np.int32)


def _vocab_size(model) -> int:
    return int(_head_module(model).weight.shape[0])  # quantized weights keep one row per output too


def head_frozen(model) -> bool:
    """Whether the output layer has no trainable weights (LoRA and DoRA; not full fine-tuning)."""
    from mlx.utils import tree_flatten

    return not tree_flatten(_head_module(model).trainable_parameters())


def training_head(model, sample: Sequence[int]) -> str:
    """How training runs this model's output layer (`masked_loss`'s `head`): "fused" where the
    layer can run apart (`output_head_supported`) and is frozen, "split" where it can run apart but
    trains (full fine-tuning: on selected positions only), else "full"."""
    if not output_head_supported(model, sample):
        return "full"
    return "fused" if head_frozen(model) else "split"


def head_cross_entropy(
    head, hidden: mx.array, targets: mx.array, weights: mx.array, chunk: int
) -> mx.array:
    """Per-row cross-entropy of `head(hidden)` against `targets`, times `weights`, `chunk` rows at a
    time: for evaluation, where nothing is kept for a backward pass."""
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        end = start + chunk
        h = hidden[start:end] if not parts else mx.depends(hidden[start:end], parts[-1])
        logits = head(h).astype(mx.float32)
        picked = mx.take_along_axis(logits, targets[start:end, None], axis=-1)[:, 0]
        parts.append((mx.logsumexp(logits, axis=-1) - picked) * weights[start:end])
    return parts[0] if len(parts) == 1 else mx.concatenate(parts)


@mx.compile
def _loss_and_logit_gradient(
    logits: mx.array, targets: mx.array, weights: mx.array
) -> tuple[mx.array, mx.array]:
    """Weighted cross-entropy per row and its gradient for the logits, (softmax - one-hot) x weight.

    Compiled so the element-wise work runs as one pass: only the logits and their gradient exist.
    """
    x = logits.astype(mx.float32)
    lse = mx.logsumexp(x, axis=-1, keepdims=True)
    loss = (lse[:, 0] - mx.take_along_axis(x, targets[:, None], axis=-1)[:, 0]) * weights
    probs = mx.exp(x - lse)
    target = mx.arange(x.shape[-1])[None] == targets[:, None]
    return loss, (mx.where(target, probs - 1, probs) * weights[:, None]).astype(logits.dtype)


def fused_head_cross_entropy(
    head, hidden: mx.array, targets: mx.array, weights: mx.array, chunk: int
) -> mx.array:
    """`head_cross_entropy` for training: the gradient for `hidden` is computed in the forward pass,
    chunk by chunk, so nothing the size of the logits waits for the backward pass, and there is no
    recomputation either. Chunks run one after another; MLX allocates buffers as it queues work, so
    when memory is plentiful several chunks' logits may exist at once, and once its memory limit
    makes it wait, one. The output layer must be frozen: it gets no gradient here.
    """

    @mx.custom_function
    def rows(hidden, targets, weights):
        parts = []
        for start in range(0, hidden.shape[0], chunk):
            end = start + chunk
            h, t, w = hidden[start:end], targets[start:end], weights[start:end]
            if parts:  # independent branches could run in any order: chunk after chunk, explicitly
                h = mx.depends(h, parts[-1])
            loss, dlogits = _loss_and_logit_gradient(head(h), t, w)
            _, (dh,) = mx.vjp(head, [h], [dlogits])
            # One array per chunk: gradient columns, then the loss.
            parts.append(mx.concatenate([dh.astype(mx.float32), loss[:, None]], axis=1))
        return parts[0] if len(parts) == 1 else mx.concatenate(parts)

    @rows.vjp
    def rows_vjp(primals, cotangent, output):
        hidden, targets, weights = primals
        # Row r's loss depends on hidden[r] alone, so its gradient is the stored row times the
        # row's cotangent. The gradient columns are internal (sliced off below).
        return (
            (output[:, :-1] * cotangent[:, -1:]).astype(hidden.dtype),
            mx.zeros_like(targets),
            mx.zeros_like(weights),
        )

    return rows(hidden, targets, weights)[:, -1]


def masked_loss(
    model,
    tokens: mx.array,
    weights: mx.array,
    segments: mx.array | None = None,
    denom: mx.array | None = None,
    select: mx.array | None = None,
    head: str = "auto",
):
    """Mean cross-entropy over the tokens marked for training; returns (loss, trained tokens).

    `weights[:, t]` says whether token t is a target. Padding has weight 0, so, unlike mlx-lm, no
    example learns to predict the padding after its last token. With `segments` (packed rows),
    attention stays inside each example. `denom` replaces the local token count as the divisor:
    data-parallel ranks divide by the whole batch's count, so their summed losses and gradients
    equal one process training the whole batch. With `select` (`select_positions`), the output
    layer and the cross-entropy run on the trained positions only: with prompt masking that skips
    most of the largest matrix multiply of a small model and the [tokens x vocabulary] logits.

    `head` says how the output layer runs: "full" (the model's own forward pass), "split" (the
    layer on chunks of rows, `head_cross_entropy`), "fused" (`fused_head_cross_entropy`, for
    training with a frozen output layer), or "auto": "split" with `select`, else "full". "split"
    and "fused" need a model that `output_head_supported` accepts.
    """
    inputs, targets, w = tokens[:, :-1], tokens[:, 1:], weights[:, 1:]
    cache = (
        None
        if segments is None
        else [PackedMask(segment_mask(segments[:, :-1]))] * len(model.layers)
    )
    if head == "auto":
        head = "full" if select is None else "split"
    if head == "full":
        logits = model(inputs) if cache is None else model(inputs, cache=cache)
        ce = (nn.losses.cross_entropy(logits, targets) * w).astype(mx.float32)
    else:
        hidden = model.model(inputs, cache)
        hidden, targets, w = (
            hidden.reshape(-1, hidden.shape[-1]),
            targets.reshape(-1),
            w.reshape(-1),
        )
        if select is not None:
            hidden, targets, w = hidden[select], targets[select], w[select]
        rows = fused_head_cross_entropy if head == "fused" else head_cross_entropy
        ce = rows(
            _head(model), hidden, targets, w, head_chunk_rows(_vocab_size(model), HEAD_CHUNK_VALUES)
        )
    ntoks = weights[:, 1:].sum()
    return ce.sum() / mx.maximum(ntoks if denom is None else denom, 1), ntoks


def checkpoint_layers(model) -> None:
    """Gradient checkpointing for this model's transformer blocks: their activations are
    recomputed in the backward pass instead of kept (less memory, about a third more compute).

    mlx-lm's `grad_checkpoint` patches the block class itself, so every model of that class loaded
    later in the process would be checkpointed too; here only this model's blocks change class.
    """
    classes: dict[type, type] = {}
    for layer in model.layers:
        cls = type(layer)
        if cls.__name__.startswith("Checkpointed"):
            continue
        if cls not in classes:
            original = cls.__call__

            def checkpointed(module, *args, _original=original, **kwargs):
                def inner(params, *args, **kwargs):
                    module.update(params)
                    return _original(module, *args, **kwargs)

                return mx.checkpoint(inner)(module.trainable_parameters(), *args, **kwargs)

            classes[cls] = type(f"Checkpointed{cls.__name__}", (cls,), {"__call__": checkpointed})
        layer.__class__ = classes[cls]


@dataclass
class LoopArgs:
    total_steps: int
    batch_size: int = 4
    grad_accumulation_steps: int = 1
    steps_per_report: int = 10
    steps_per_eval: int = 200
    save_every: int = 100
    seed: int = 0
    pad_multiple: int = 8
    max_seq_length: int = 2048
    clear_cache_threshold: int = 0
    early_stopping_patience: int = 0
    world_size: int = 1  # data-parallel ranks (mx.distributed); each takes its rows of every batch
    rank: int = 0
    batching: str = "fixed"  # fixed | budget | pack (see batching.choose_batching)
    batch_tokens: int = 0  # token budget per step (budget) or row length (pack)
    select_outputs: bool = False  # output layer on trained positions only (see masked_loss)
    fused_head: bool = (
        False  # output layer and loss in chunks, gradient in the forward pass (masked_loss)
    )
    # A batch shape of at least this many tokens is compiled the first time it appears; smaller
    # ones run eagerly then and compiled when they recur (see `train`'s step).
    compile_min_tokens: int = 0


@dataclass
class LoopResult:
    status: str  # completed | stopped | failed
    state: TrainState
    final_train_loss: float | None
    final_val_loss: float | None
    reason: str = ""


def compiled_loss(model, loss: Callable = masked_loss, head: str = "auto") -> Callable:
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
    loss: Callable = masked_loss,
    fn: Callable | None = None,
    rank: int = 0,
    world_size: int = 1,
    select_outputs: bool = False,
    selected: dict | None = None,
) -> float:
    """Token-weighted mean loss over fixed batches (`fn`: a `compiled_loss` to reuse its traces).

    With several ranks each evaluates its rows of every batch and the sums are combined.
    `select_outputs`: the model passed `output_head_supported`, so the output layer runs in chunks
    (`head_cross_entropy`) and on trained positions only (`select_positions`). `selected`: a dict
    kept between calls on the same batches, to work out their positions once.
    """
    head = "split" if select_outputs else "full"
    fn = fn or (lambda t, w, s, sel: loss(model, t, w, s, None, sel, head))
    total = mx.array(0.0)
    ntoks = mx.array(0.0)
    selected = {} if selected is None else selected
    for i, full in enumerate(batches):
        b = shard(full, rank, world_size)
        if select_outputs and i not in selected:
            selected[i] = select_positions(b.weights)
        sel = selected.get(i)
        value, n = fn(
            mx.array(b.tokens),
            mx.array(b.weights),
            None if b.segments is None else mx.array(b.segments),
            None if sel is None else mx.array(sel),
        )
        total = total + value * n
        ntoks = ntoks + n
        mx.eval(total, ntoks)
        beat()
    total, ntoks = all_sum(total, world_size), all_sum(ntoks, world_size)
    return (total / mx.maximum(ntoks, 1)).item()


def train(
    model,
    optimizer,
    train_set: Sequence[Encoded],
    val_batches: Sequence[Batch],
    args: LoopArgs,
    sink: events.Sink,
    save_checkpoint: Callable[[TrainState], object],
    should_stop: Callable[[], bool] = lambda: False,
    state: TrainState | None = None,
    loss: Callable = masked_loss,
) -> LoopResult:
    """Train until `args.total_steps` optimizer updates, a stop request, or a non-finite loss.

    A step is one optimizer update (over `grad_accumulation_steps` batches). `save_checkpoint` is
    called with the state at every `save_every` steps and when the loop ends, except after a
    non-finite loss, where the last good checkpoint is kept as it is.
    """
    state = state or TrainState()
    lengths = [len(e.tokens) for e in train_set]
    world, rank = args.world_size, args.rank

    def plan_for(epoch: int) -> list:
        if args.batching == "pack":
            return plan_epoch_packed(lengths, args.batch_size, args.batch_tokens, args.seed, epoch)
        if args.batching == "budget":
            return plan_epoch_budget(
                lengths, args.batch_tokens, args.seed, epoch, args.pad_multiple
            )
        return plan_epoch(lengths, args.batch_size, args.seed, epoch)

    plan = plan_for(state.epoch)
    accum = args.grad_accumulation_steps

    loss_value_and_grad = nn.value_and_grad(model, loss)
    compiled_state = [model.state, optimizer.state, mx.random.state]

    head = "fused" if args.fused_head else "auto"

    def eager_step(tokens, weights, segments, denom, select, prev_grad, do_update):
        (value, ntoks), grad = loss_value_and_grad(
            model, tokens, weights, segments, denom, select, head
        )
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

    def step(tokens, weights, segments, denom, select, prev_grad, do_update):
        # Compiled steps fuse work and run faster (on a GPU by far), but each new batch shape is
        # traced again. Where tracing costs about as much as a step (small batches on a CPU), a
        # shape runs eagerly the first time it appears and compiled once it comes back (later
        # epochs); batches of at least `compile_min_tokens` tokens are compiled at once.
        key = (
            tokens.shape,
            segments is None,
            None if select is None else select.shape,
            prev_grad is None,
            do_update,
        )
        compiled = key in seen_shapes or tokens.size >= args.compile_min_tokens
        seen_shapes.add(key)
        return (compiled_step if compiled else eager_step)(
            tokens, weights, segments, denom, select, prev_grad, do_update
        )

    def next_batch() -> Batch:
        nonlocal plan
        if state.position >= len(plan):
            state.epoch += 1
            state.position = 0
            plan = plan_for(state.epoch)
        item = plan[state.position]
        state.position += 1
        if args.batching == "pack":
            batch = collate_packed(
                [[train_set[i] for i in row] for row in item], args.pad_multiple, args.batch_size
            )
        elif args.batching == "budget":
            # No empty filler rows: a first-epoch shape runs eagerly anyway (see `step`).
            batch = collate([train_set[i] for i in item], args.pad_multiple, args.max_seq_length)
        else:
            batch = collate(
                [train_set[i] for i in item],
                args.pad_multiple,
                args.max_seq_length,
                args.batch_size,
            )
        state.seen_examples += batch.examples
        return batch

    eval_fn = compiled_loss(model, loss, "split" if args.select_outputs else "full")
    evals_done = [0]
    val_selected: dict = {}  # the validation batches' trained positions, worked out once

    def run_eval() -> float | None:
        if not val_batches:
            return None
        model.eval()
        # The validation batches are the same every time: on a CPU, trace them from the second
        # evaluation on (see `step`).
        compiled = evals_done[0] or args.compile_min_tokens == 0
        value = evaluate(
            model,
            val_batches,
            loss,
            eval_fn if compiled else None,
            rank,
            world,
            args.select_outputs,
            val_selected,
        )
        evals_done[0] += 1
        model.train()
        if math.isfinite(value) and (state.best_val_loss is None or value < state.best_val_loss):
            state.best_val_loss, state.best_val_step, state.evals_since_best = value, state.step, 0
        else:
            state.evals_since_best += 1
        sink(events.make("eval", step=state.step, val_loss=value))
        return value

    model.train()
    last_val = None
    if state.step == 0:
        last_val = run_eval()

    window_losses: list[float] = []
    window_tokens = 0
    window_real = 0
    window_padded = 0
    window_time = 0.0
    step_times: list[float] = []
    last_loss: float | None = None

    def stop_requested() -> bool:
        flag = should_stop()
        if world > 1:  # every rank stops at the same step, or the others would wait forever
            flag = all_sum(mx.array(1.0 if flag else 0.0), world).item() > 0
        return flag

    while state.step < args.total_steps:
        if stop_requested():
            save_checkpoint(state)
            return LoopResult("stopped", state, last_loss, last_val, "Stopped on request.")

        tic = time.perf_counter()
        # Dropout masks depend only on (seed, step), so a resumed run draws the same ones.
        mx.random.seed(args.seed * 1_000_003 + state.step)
        grad = None
        step_loss = 0.0
        n_trained = 0
        at_step_start = (plan, state.epoch, state.position, state.seen_examples)
        processed_at_start = state.processed_tokens
        for micro in range(accum):
            if micro and stop_requested():
                # A stop between micro-batches (grad_accumulation_steps can be large): drop the
                # partial gradient and rewind the data to the step's start, so the checkpoint is
                # the state after `state.step` updates and a resumed run redoes this step exactly.
                plan, state.epoch, state.position, state.seen_examples = at_step_start
                state.processed_tokens = processed_at_start
                save_checkpoint(state)
                return LoopResult("stopped", state, last_loss, last_val, "Stopped on request.")
            batch = next_batch()
            window_real += batch.real_tokens
            state.processed_tokens += batch.real_tokens
            window_padded += batch.tokens.size
            n_batch = batch.trained_tokens
            n_trained += n_batch
            mine = shard(batch, rank, world)
            segments = None if mine.segments is None else mx.array(mine.segments)
            # Not with several ranks: a compiled step that both gathers the selected positions and
            # sums gradients across ranks diverged from one process in tests (eager steps agreed),
            # so data-parallel runs keep the full output layer.
            select = select_positions(mine.weights) if args.select_outputs and world == 1 else None
            value, _, grad = step(
                mx.array(mine.tokens),
                mx.array(mine.weights),
                segments,
                mx.array(float(max(n_batch, 1))),
                None if select is None else mx.array(select),
                grad,
                micro == accum - 1,
            )
            # One sync per batch keeps memory bounded, as in mlx-lm.
            mx.eval(compiled_state, value, grad)
            step_loss += all_sum(value, world).item() / accum
            beat()
        if args.clear_cache_threshold and mx.get_cache_memory() > args.clear_cache_threshold:
            mx.clear_cache()
        elapsed = time.perf_counter() - tic

        state.step += 1
        state.trained_tokens += n_trained
        state.elapsed_seconds += elapsed
        window_tokens += n_trained
        window_time += elapsed
        step_times.append(elapsed)

        if not math.isfinite(step_loss):
            # The update already applied non-finite gradients; the last checkpoint stays untouched.
            sink(
                events.make(
                    "error",
                    kind="nan_loss",
                    step=state.step,
                    message=f"The training loss became {step_loss} at step {state.step}, so training stopped.",
                    hint="Lower the learning rate (for example to half of it) and resume or start again; "
                    "the last good checkpoint is kept.",
                )
            )
            return LoopResult(
                "failed",
                state,
                step_loss,
                last_val,
                f"Non-finite loss ({step_loss}) at step {state.step}.",
            )
        last_loss = step_loss
        window_losses.append(step_loss)

        if state.step % args.steps_per_report == 0 or state.step == args.total_steps:
            recent = step_times[-50:]
            eta = (args.total_steps - state.step) * (sum(recent) / len(recent))
            sink(
                events.make(
                    "progress",
                    step=state.step,
                    total=args.total_steps,
                    epoch=state.epoch,
                    train_loss=sum(window_losses) / len(window_losses),
                    learning_rate=float(optimizer.learning_rate.item()),
                    tokens_per_second=window_tokens / window_time if window_time else 0.0,
                    trained_tokens=state.trained_tokens,
                    padding_fraction=1.0 - window_real / window_padded if window_padded else 0.0,
                    peak_memory_gb=mx.get_peak_memory() / 1e9,
                    eta_seconds=eta,
                )
            )
            window_losses, window_tokens, window_real, window_padded, window_time = [], 0, 0, 0, 0.0

        if state.step % args.steps_per_eval == 0 or state.step == args.total_steps:
            last_val = run_eval()
            if last_val is not None and not math.isfinite(last_val):
                sink(
                    events.make(
                        "error",
                        kind="nan_loss",
                        step=state.step,
                        message=f"The validation loss became {last_val} at step {state.step}, so training stopped.",
                        hint="Lower the learning rate and resume or start again; the last good checkpoint is kept.",
                    )
                )
                return LoopResult(
                    "failed", state, last_loss, last_val, "Non-finite validation loss."
                )
            patience = args.early_stopping_patience
            if patience and state.evals_since_best >= patience and state.step < args.total_steps:
                save_checkpoint(state)
                reason = (
                    f"Stopped early at step {state.step}: the validation loss has not improved for "
                    f"{patience} evaluations (best {state.best_val_loss:.4f} at step {state.best_val_step})."
                )
                sink(events.make("log", level="info", message=reason))
                return LoopResult("completed", state, last_loss, last_val, reason)

        if state.step % args.save_every == 0 or state.step == args.total_steps:
            save_checkpoint(state)

    return LoopResult("completed", state, last_loss, last_val)
