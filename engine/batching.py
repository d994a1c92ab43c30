"""Batches grouped by real token length, in an order that a checkpoint can reproduce.

mlx-lm's `mlx_lm.lora` path sorts by the number of keys in each record rather than by tokens, so its
batches mix short and long examples and are mostly padding. Here every epoch is planned from
`(seed, epoch)` alone: shuffle, group examples of similar token length into batches, shuffle the
batches. A checkpoint only has to remember (epoch, position) to continue exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.encode import Encoded

# Examples are sorted by length within windows of this many batches: large enough that batches are
# nearly padding-free, small enough that batch composition still changes between epochs.
GROUP_WINDOW_BATCHES = 64


@dataclass
class Batch:
    tokens: np.ndarray  # int32 [B, L], padded with 0
    weights: np.ndarray  # float32 [B, L], 1 where the token is a training target
    lengths: np.ndarray  # int32 [B], real lengths

    @property
    def padding_fraction(self) -> float:
        return 1.0 - float(self.lengths.sum()) / float(self.tokens.size)

    @property
    def real_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def trained_tokens(self) -> int:
        return int(self.weights[:, 1:].sum())


def plan_epoch(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches (index arrays) of one epoch, grouped by length and shuffled.

    Deterministic in (lengths, batch_size, seed, epoch). A last partial batch is kept, so every
    example is seen once per epoch.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    if n == 0:
        return []
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    window = batch_size * GROUP_WINDOW_BATCHES
    batches: list[np.ndarray] = []
    for start in range(0, n, window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def collate(examples: Sequence[Encoded], pad_multiple: int = 8, max_length: int | None = None) -> Batch:
    """Pad examples to a common length (rounded up to `pad_multiple`, capped at `max_length`)."""
    lengths = np.array([len(e.tokens) for e in examples], dtype=np.int32)
    longest = int(lengths.max())
    width = -(-longest // pad_multiple) * pad_multiple
    if max_length is not None:
        width = max(longest, min(width, max_length))
    tokens = np.zeros((len(examples), width), dtype=np.int32)
    weights = np.zeros((len(examples), width), dtype=np.float32)
    for row, e in enumerate(examples):
        tokens[row, : len(e.tokens)] = e.tokens
        weights[row, : len(e.weights)] = e.weights
    return Batch(tokens, weights, lengths)


def fixed_eval_batches(
    examples: Sequence[Encoded], batch_size: int, num_batches: int, seed: int, pad_multiple: int = 8,
    max_length: int | None = None,
) -> list[Batch]:
    """The same validation batches for the whole run (mlx-lm redraws them at every evaluation).

    A seeded subset of `num_batches * batch_size` examples (all when `num_batches` is -1), grouped
    by length so evaluation wastes little on padding.
    """
    n = len(examples)
    if n == 0:
        return []
    rng = np.random.default_rng([seed, 7919])
    take = n if num_batches < 0 else min(n, num_batches * batch_size)
    chosen = rng.permutation(n)[:take]
    chosen = chosen[np.argsort([len(examples[i].tokens) for i in chosen], kind="stable")]
    return [
        collate([examples[i] for i in chosen[j : j + batch_size]], pad_multiple, max_length)
        for j in range(0, len(chosen), batch_size)
    ]


def padding_fraction(batches: Sequence[Batch]) -> float:
    total = sum(b.tokens.size for b in batches)
    real = sum(b.real_tokens for b in batches)
    return 1.0 - real / total if total else 0.0
