"""Causal attention in blocks of queries, for training on MLX's CPU backend.

MLX has no fused attention kernel for its CPU backend: `mx.fast.scaled_dot_product_attention`
computes the whole [queries x keys] score matrix there, softmax included, and masks the upper
half afterwards, so half of attention's work and memory is for scores that the causal mask throws
away. At 1,024 tokens on the bench's model that half is a quarter of a training step's FLOPs.

Here the queries are split into blocks of `BLOCK`, and block i attends to keys 0 .. end of block
i only, through MLX's own function with its bottom-right-aligned "causal" mask: the same result
(to float rounding, 1e-6), without the scores above the diagonal's blocks. With 8 blocks of 128 at
1,024 tokens it computes 56% of the scores; forward and backward of attention took 449 ms instead
of 830 ms and peaked at 189 MB instead of 400 MB (2 x 1,024 tokens, 6 heads, bench/PERF_NOTES.md).

`blocked(model)` puts this in place of mlx-lm's `scaled_dot_product_attention` (which its
architectures call by module-level name) in the modules of `model`'s layers for the length of a
run, on the CPU backend only: a GPU's attention kernel is fused and skips masked blocks itself.
Anything else (an explicit mask such as packed rows', a quantized cache, attention sinks, a query
shorter than its keys) goes to mlx-lm's function unchanged. `LATHE_BLOCK_ATTENTION=0` turns it off.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import mlx.core as mx

BLOCK = 128
NAME = "scaled_dot_product_attention"


def enabled() -> bool:
    if os.environ.get("LATHE_BLOCK_ATTENTION", "1") == "0":
        return False
    return mx.default_device().type == mx.DeviceType.cpu


def blocked_attention(original, block: int = BLOCK):
    """mlx-lm's attention function `original`, computing causal self-attention block by block."""

    def attention(queries, keys, values, cache=None, scale=1.0, mask=None, sinks=None):
        length = queries.shape[2]
        if (
            not (isinstance(mask, str) and mask == "causal")
            or sinks is not None
            or hasattr(cache, "bits")
            or keys.shape[2] != length
            or length <= block
        ):
            extra = {} if sinks is None else {"sinks": sinks}
            return original(queries, keys, values, cache, scale=scale, mask=mask, **extra)
        parts = []
        for start in range(0, length, block):
            end = min(length, start + block)
            parts.append(
                original(
                    queries[:, :, start:end],
                    keys[:, :, :end],
                    values[:, :, :end],
                    cache,
                    scale=scale,
                    mask="causal",  # aligned to the last query: key j <= start + i
                )
            )
        return mx.concatenate(parts, axis=2)

    attention.blocked_from = original
    return attention


@contextmanager
def blocked(model):
    """Blocked causal attention in `model`'s architecture while the block runs (when `enabled()`);
    mlx-lm's own function is back afterwards, also after an error. Yields whether it is in place."""
    if not enabled():
        yield False
        return
    modules = {type(model).__module__}
    modules.update(type(m).__module__ for _, m in model.named_modules())
    swapped = []
    for name in sorted(modules):
        module = sys.modules.get(name)
        original = getattr(module, NAME, None)
        if original is None or not callable(original) or hasattr(original, "blocked_from"):
            continue
        setattr(module, NAME, blocked_attention(original))
        swapped.append((module, original))
    try:
        yield bool(swapped)
    finally:
        for module, original in swapped:
            setattr(module, NAME, original)
