"""A batch in two parts on two threads, for training on MLX's CPU backend.

MLX's CPU backend runs each stream's work on one thread of its own, and of that work only a
matrix multiply spreads over several cores (inside the BLAS). Everything else (softmax, SiLU, the
norms, the loss, the optimizer's update) runs on the stream's one thread, and on the bench's short
chat turns the second core of a 2-core machine idled for a third of a step (bench/profile_cpu.py,
bench/PERF_NOTES.md section 7).

So on the CPU a batch's rows are split in two groups (`split_rows`), and each group's forward and
backward pass is queued on its own stream (`streams`); the loss of each is divided by the whole
batch's trained-token count, so the two gradients add up to the batch's, to float rounding. The
BLAS then runs one thread per call (`parallel`): two streams each with a one-thread matrix
multiply keep both cores busy, where one stream with a two-thread multiply leaves one idle between
multiplies. Rows are sorted by length before the split and each group is cut to its own longest
row, so the groups carry less padding than the batch did.

The two streams only run side by side when MLX interleaves their work: it orders each
evaluation's operations breadth-first up to a width of MLX_BFS_MAX_WIDTH (default 20) and
depth-first beyond, and with at most 10 operations in flight a depth-first order hands one stream
a long run of work while the other waits. The training worker sets a width without limit
(`set_eval_order`) before its first evaluation. With the default width the groups still give the
same numbers, at about the speed of one stream.

`LATHE_CPU_STREAMS=0` turns it off. On a GPU one stream already keeps the device busy.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager

import mlx.core as mx
import numpy as np

from engine import platform
from engine.batching import Batch, bucket_width
from engine.training import loss as numerics

# MLX_BFS_MAX_WIDTH for the training worker: wider than any evaluation's graph, so breadth-first.
EVAL_WIDTH = "1000000"


def count() -> int:
    """How many groups a batch is split into: 2 on MLX's CPU backend, else 1."""
    if os.environ.get("LATHE_CPU_STREAMS", "1") == "0":
        return 1
    return 2 if mx.default_device().type == mx.DeviceType.cpu else 1


def streams() -> list:
    """The streams the groups run on: the default device's default stream, and on the CPU (when
    `count()` is 2) a second CPU stream, created once per process."""
    first = mx.default_stream(mx.default_device())
    return [first, _second_cpu_stream()] if count() > 1 else [first]


@functools.cache
def _second_cpu_stream():
    return mx.new_stream(mx.cpu)


def set_eval_order(environ: dict | None = None) -> bool:
    """Have MLX order its work breadth-first (MLX_BFS_MAX_WIDTH) where the groups run on two
    streams, unless the user set a width. MLX reads the setting at its first evaluation in the
    process: the training worker calls this before loading the model. True when it set it."""
    env = os.environ if environ is None else environ
    if count() < 2 or "MLX_BFS_MAX_WIDTH" in env:
        return False
    env["MLX_BFS_MAX_WIDTH"] = EVAL_WIDTH
    return True


@contextmanager
def parallel():
    """While the block runs with two groups on two streams, OpenBLAS (when loaded) runs one
    thread per call; its own setting is back afterwards. Yields the number of groups."""
    n = count()
    before = platform.blas_threads() if n > 1 else None
    if before is not None and before > 1:
        platform.set_blas_threads(1)
    try:
        yield n
    finally:
        if before is not None and before > 1:
            platform.set_blas_threads(before)


def cut(lengths: np.ndarray) -> int:
    """Where to cut rows sorted by `lengths` (ascending) into two groups: the cut that makes the
    larger group's padded size (rows x its longest row) the smallest, so the two threads finish
    close together."""
    rows = len(lengths)
    costs = [max(k * int(lengths[k - 1]), (rows - k) * int(lengths[-1])) for k in range(1, rows)]
    return 1 + int(np.argmin(costs))


def split_rows(
    batch: Batch, groups: int, select_outputs: bool, bucketed: bool = False
) -> list[tuple]:
    """The batch as `groups` groups of its rows (1 or 2; one when it has a single row), each
    (tokens, weights, segments, select) as numpy arrays, `select` the group's trained positions
    (`loss.select_positions`) when `select_outputs`, else None.

    With two groups the rows are sorted by length, cut by `cut`, and each group is trimmed to its
    own longest row; the columns cut off are padding in every row of the group. `bucketed`: the
    width is rounded up as the batcher rounds a batch's width (`bucket_width`), for batches the
    loop compiles at once, whose traces are kept per shape: a bounded set of widths bounds them.
    Smaller batches run eagerly unless their exact shape comes back, and the exact width saves
    their padding (the short row: 0.6% padding and 10.7-12.8 s, against 6.9% and 15.2 s bucketed,
    where shapes came back often enough to be traced and seldom enough not to pay for it)."""
    rows, full_width = batch.tokens.shape
    if groups < 2 or rows < 2:
        chosen = [(np.arange(rows), full_width)]
    else:
        order = np.argsort(batch.lengths, kind="stable")
        k = cut(batch.lengths[order])
        chosen = []
        for idx in (np.sort(order[:k]), np.sort(order[k:])):
            longest = max(2, int(batch.lengths[idx].max()))
            chosen.append((idx, min(full_width, bucket_width(longest) if bucketed else longest)))
    out = []
    for idx, width in chosen:
        tokens = batch.tokens[idx, :width]
        weights = batch.weights[idx, :width]
        segments = None if batch.segments is None else batch.segments[idx, :width]
        select = numerics.select_positions(weights) if select_outputs else None
        out.append((tokens, weights, segments, select))
    return out


def arrays(groups: list[tuple]) -> tuple:
    """`split_rows`'s groups as MLX arrays (None stays None)."""
    return tuple(tuple(None if a is None else mx.array(a) for a in group) for group in groups)
