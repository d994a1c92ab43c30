"""How long a run trains and how often it reports: its steps, its evaluation interval, what its
batch size means, and the loop's settings (`LoopArgs`) for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.config import RunConfig
from engine.training import memory


@dataclass
class LoopArgs:
    """The training loop's settings (`engine.training.loop.train`); the batches come from a plan."""

    total_steps: int
    grad_accumulation_steps: int = 1
    steps_per_report: int = 10
    steps_per_eval: int = 200
    save_every: int = 100
    seed: int = 0
    clear_cache_threshold: int = 0
    early_stopping_patience: int = 0
    world_size: int = 1  # data-parallel ranks (mx.distributed); each takes its rows of every batch
    rank: int = 0
    select_outputs: bool = False  # output layer on trained positions only (see loss.masked_loss)
    fused_head: bool = (
        False  # output layer and loss in chunks, gradient in the forward pass (loss.masked_loss)
    )
    # A batch shape of at least this many tokens is compiled the first time it appears; smaller
    # ones run eagerly then and compiled when they recur (see the loop's step).
    compile_min_tokens: int = 0


def loop_args(config: RunConfig, steps: int, head: str, ranks=None) -> LoopArgs:
    """The training loop's settings for this run."""
    t = config.training
    return LoopArgs(
        total_steps=steps,
        grad_accumulation_steps=t.grad_accumulation_steps,
        steps_per_report=t.steps_per_report,
        steps_per_eval=eval_interval(config, steps),
        save_every=t.save_every,
        seed=t.seed,
        clear_cache_threshold=memory.clear_cache_threshold(t.clear_cache_threshold),
        early_stopping_patience=t.early_stopping_patience,
        world_size=ranks.size if ranks else 1,
        rank=ranks.rank if ranks else 0,
        select_outputs=head != "full",
        fused_head=head == "fused",
        compile_min_tokens=compile_min_tokens(),
    )


EVAL_POINTS = 15  # validation evaluations a run gets when steps_per_eval is left to Lathe


def eval_interval(config: RunConfig, steps: int) -> int:
    """Steps between validation evaluations: the config's, or chosen from the run's length.

    Chosen: about `EVAL_POINTS` evaluations (10 to 20) over `steps`, on checkpoint steps where that
    works out (a divisor or multiple of save_every), so the best checkpoint can be picked by its
    validation loss.
    """
    t = config.training
    if t.steps_per_eval:
        return int(t.steps_per_eval)
    target = max(1.0, steps / EVAL_POINTS)
    save = max(1, int(t.save_every))
    if target >= save:
        candidate = save * max(1, round(target / save))
    else:
        candidate = max(d for d in range(1, save + 1) if save % d == 0 and d <= target)
    if not 10 <= steps / candidate <= 20:
        candidate = max(1, round(target))
    return int(candidate)


def batch_note(
    config: RunConfig, mode: str, size: int, n_train: int, batches: int, steps: int
) -> str:
    """What the batch size means in this run, with its step count (the CLI's summary, the
    `started` event and the Train page show it beside the setting)."""
    t = config.training
    per_step = n_train / max(1, batches)
    if mode == "budget":
        fixed = total_steps(config, n_train, math.ceil(n_train / t.batch_size))
        return (
            f"Batch size {t.batch_size} with budget batching: up to {size} tokens per step, about "
            f"{per_step:.1f} examples per step, so {steps} steps instead of {fixed} (set "
            f"data.packing to off for exactly {t.batch_size} examples per step)."
        )
    if mode == "pack":
        return (
            f"Batch size {t.batch_size} packed rows of {size} tokens: about {per_step:.1f} "
            f"examples per step, {steps} steps."
        )
    return f"Batch size {t.batch_size}: {t.batch_size} examples per step, {steps} steps."


def total_steps(config: RunConfig, n_train: int, batches_per_epoch: int | None = None) -> int:
    """Optimizer steps of the run: `iters`, or `epochs` over the data's batches."""
    t = config.training
    if t.iters:
        return t.iters
    batches_per_epoch = batches_per_epoch or math.ceil(n_train / t.batch_size)
    return max(1, math.ceil(t.epochs * batches_per_epoch / t.grad_accumulation_steps))


def compile_min_tokens() -> int:
    """Batch size (tokens) from which a training step is compiled the first time its shape appears.

    On a GPU always: compiled steps are much faster there and tracing is cheap next to the launches
    it saves (measured on CUDA; mlx-lm compiles every shape too). On MLX's CPU backend a compiled
    step of a small batch runs no faster than an eager one and tracing costs about a step, while
    from ~1,000 tokens on the compiled step is 15-25% faster (measured with OpenBLAS, 2 cores).
    """
    import mlx.core as mx

    return 0 if mx.default_device().type == mx.DeviceType.gpu else 1024
