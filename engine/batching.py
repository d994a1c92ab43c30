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
    lengths: np.ndarray  # int32 [B], real lengths (of the whole row when packed)
    # Packed rows only: int32 [B, L], 1..k = which example of the row a token belongs to, 0 = padding.
    segments: np.ndarray | None = None
    examples: int = 0  # examples in the batch (rows hold several when packed)

    @property
    def padding_fraction(self) -> float:
        return 1.0 - float(self.lengths.sum()) / float(self.tokens.size)

    @property
    def real_tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def trained_tokens(self) -> int:
        return int(np.count_nonzero(self.weights[:, 1:]))  # loss weights may be fractions


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


def bucket_width(length: int, pad_multiple: int = 8) -> int:
    """The padded width for a batch whose longest row is `length` tokens.

    Widths are multiples of `pad_multiple` up to 256 tokens, then 16 buckets per doubling (at most
    ~6% extra padding). The compiled training step is traced once per distinct shape, so a bounded
    set of widths bounds the tracing work however varied the data is.
    """
    step = max(pad_multiple, 1 << max(0, int(length).bit_length() - 5))
    return -(-int(length) // step) * step


def plan_epoch_budget(
    lengths: Sequence[int], token_budget: int, seed: int, epoch: int, pad_multiple: int = 8
) -> list[np.ndarray]:
    """Batches of similar-length examples holding up to `token_budget` padded tokens each.

    Short examples share a step in larger numbers, long ones in smaller: every step does about the
    same amount of work, and none holds more tokens than the budget (so peak memory is that of the
    largest ordinary batch). Deterministic in its arguments, like `plan_epoch`.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    if n == 0:
        return []
    rng = np.random.default_rng([seed, epoch, 2])
    order = rng.permutation(n)
    window = max(64, n // 8)
    batches: list[np.ndarray] = []
    for start in range(0, n, window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        i = 0
        while i < len(chunk):
            j = i + 1
            # Sorted ascending, so the newest example sets the width of the batch.
            while (
                j < len(chunk)
                and (j - i + 1) * bucket_width(int(lengths[chunk[j]]), pad_multiple) <= token_budget
            ):
                j += 1
            batches.append(chunk[i:j])
            i = j
    perm = rng.permutation(len(batches))
    return [batches[k] for k in perm]


def collate(
    examples: Sequence[Encoded],
    pad_multiple: int = 8,
    max_length: int | None = None,
    rows: int | None = None,
) -> Batch:
    """Pad examples to a common bucketed width (capped at `max_length`) and to `rows` rows.

    Padding a last partial batch up to `rows` keeps its shape one the compiled step has seen; the
    extra rows have no trained tokens.
    """
    lengths = np.array([len(e.tokens) for e in examples], dtype=np.int32)
    longest = int(lengths.max())
    width = bucket_width(longest, pad_multiple)
    if max_length is not None:
        width = max(longest, min(width, max_length))
    n_rows = max(rows or 0, len(examples))
    tokens = np.zeros((n_rows, width), dtype=np.int32)
    weights = np.zeros((n_rows, width), dtype=np.float32)
    for row, e in enumerate(examples):
        tokens[row, : len(e.tokens)] = e.tokens
        weights[row, : len(e.weights)] = e.weights
    lengths = np.concatenate([lengths, np.zeros(n_rows - len(examples), dtype=np.int32)])
    return Batch(tokens, weights, lengths, examples=len(examples))


# ---------------------------------------------------------------------------------------------
# Packing: several short examples per row, attention kept inside each example.

# Architectures whose mlx-lm attention takes its mask from the cache object and whose positions are
# rotary (relative), so a block-diagonal mask makes a packed row compute exactly what separate rows
# would (see engine.training.loss.PackedMask).
PACKABLE_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma"}


def pack_rows(lengths: Sequence[int], pack_length: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Example indices per row: shuffled, then first-fit into rows of at most `pack_length` tokens.

    An example longer than `pack_length` gets a row of its own. Deterministic in its arguments.
    """
    lengths = np.asarray(lengths)
    order = np.random.default_rng([seed, epoch, 1]).permutation(len(lengths))
    rows: list[list[int]] = []
    room: list[int] = []
    open_rows: list[int] = []  # rows that may still take an example; a few, to keep this linear
    for i in order:
        n = int(lengths[i])
        target = next((r for r in open_rows if room[r] >= n), None)
        if target is None:
            rows.append([])
            room.append(pack_length)
            target = len(rows) - 1
            open_rows.append(target)
            if len(open_rows) > 16:
                open_rows.pop(0)
        rows[target].append(int(i))
        room[target] -= n
        if room[target] < 8:
            open_rows.remove(target)
    return [np.array(r) for r in rows]


def plan_epoch_packed(
    lengths: Sequence[int], batch_size: int, pack_length: int, seed: int, epoch: int
) -> list[list[np.ndarray]]:
    """Batches of packed rows for one epoch: each batch is `batch_size` rows of example indices."""
    rows = pack_rows(lengths, pack_length, seed, epoch)
    lengths = np.asarray(lengths)
    row_lengths = [int(lengths[r].sum()) for r in rows]
    return [[rows[j] for j in idx] for idx in plan_epoch(row_lengths, batch_size, seed, epoch)]


def collate_packed(
    rows: Sequence[Sequence[Encoded]], pad_multiple: int = 8, n_rows: int | None = None
) -> Batch:
    """Concatenate each row's examples, with segment ids and no target across an example boundary."""
    row_lengths = np.array([sum(len(e.tokens) for e in row) for row in rows], dtype=np.int32)
    width = bucket_width(int(row_lengths.max()), pad_multiple)
    n = max(n_rows or 0, len(rows))
    row_lengths = np.concatenate([row_lengths, np.zeros(n - len(rows), dtype=np.int32)])
    tokens = np.zeros((n, width), dtype=np.int32)
    weights = np.zeros((n, width), dtype=np.float32)
    segments = np.zeros((n, width), dtype=np.int32)
    for r, row in enumerate(rows):
        pos = 0
        for k, e in enumerate(row, 1):
            n = len(e.tokens)
            tokens[r, pos : pos + n] = e.tokens
            weights[r, pos : pos + n] = e.weights
            # The first token of an example is not predicted from the end of the previous one.
            weights[r, pos] = 0
            segments[r, pos : pos + n] = k
            pos += n
    return Batch(tokens, weights, row_lengths, segments, examples=sum(len(r) for r in rows))


def choose_batching(
    lengths: Sequence[int],
    batch_size: int,
    setting: str,
    model_type: str | None,
    pack_length: int = 0,
) -> tuple[str, int, str]:
    """(mode, size, why): how a run forms its batches.

    - "fixed": `batch_size` examples per step, grouped by length (size unused).
    - "budget": similar-length examples per step up to `size` tokens, where size is what the
      largest fixed batch holds (`batch_size` x the longest example), so memory is no higher.
    - "pack": several examples per row of `size` tokens, attention kept inside each example.

    `auto` picks "budget" when examples vary enough that short ones could share steps (the budget
    fits at least 1.5x `batch_size` examples on average) and an epoch still has at least 32 steps;
    else "fixed". Row packing is measured slower than budget batches on MLX's CPU backend (its
    attention with an explicit mask is not fused), so `auto` does not choose it; `pack` does.
    """
    lengths = np.asarray(lengths)
    if len(lengths) == 0 or setting == "off":
        return "fixed", 0, "Batches hold a fixed number of examples, grouped by length."
    longest = bucket_width(int(lengths.max()))
    budget = batch_size * longest
    if setting in ("pack", "on"):
        if model_type not in PACKABLE_MODEL_TYPES:
            return (
                "fixed",
                0,
                (
                    f"Packing is not available for {model_type} models; batches are grouped by "
                    "length instead."
                ),
            )
        size = pack_length or longest
        return (
            "pack",
            size,
            f"Packing examples into rows of {size} tokens with attention kept inside each example.",
        )
    if setting == "budget":
        return "budget", budget, f"Batches hold up to {budget} tokens of similar-length examples."
    mean_padded = float(np.mean([bucket_width(int(x)) for x in lengths]))
    per_step = budget / mean_padded
    steps = len(lengths) / per_step
    if per_step < 1.5 * batch_size:
        return (
            "fixed",
            0,
            "Batches hold a fixed number of examples, grouped by length (lengths are even).",
        )
    if steps < 32:
        return (
            "fixed",
            0,
            (
                f"Batches hold {batch_size} examples, grouped by length: the data is small, and "
                "more, smaller steps train it better."
            ),
        )
    return (
        "budget",
        budget,
        (
            f"Short examples share steps: up to {budget} tokens of similar-length examples "
            f"per step (about {per_step:.0f} examples on average, never more memory than a "
            f"batch of {batch_size} of the longest)."
        ),
    )


def largest_batch(
    lengths: Sequence[int],
    batch_size: int,
    packing: str = "auto",
    model_type: str | None = None,
    pack_length: int = 0,
    pad_multiple: int = 8,
    max_seq_length: int | None = None,
) -> tuple[int, int, str]:
    """(rows, width, mode): the largest batch a run forms from examples of these token lengths.

    Memory peaks there. With fixed batches it is the batch holding the longest example: batch_size
    rows (a short batch is padded with empty rows) as wide as `collate` pads the longest example.
    Budget batches hold at most batch_size x that width tokens and are never wider, so the same
    shape bounds them. Packed rows are as wide as the pack length (or the longest example).
    """
    lengths = np.asarray(lengths)
    longest = int(lengths.max()) if len(lengths) else 0
    if max_seq_length:
        longest = min(longest, int(max_seq_length))
    mode, size, _ = choose_batching(lengths, batch_size, packing, model_type, pack_length)
    if mode == "pack":
        return batch_size, bucket_width(max(size, longest), pad_multiple), mode
    width = bucket_width(longest, pad_multiple)
    if max_seq_length:
        width = max(longest, min(width, int(max_seq_length)))
    return batch_size, width, mode


def fixed_eval_batches(
    examples: Sequence[Encoded],
    batch_size: int,
    num_batches: int,
    seed: int,
    pad_multiple: int = 8,
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
    """Share of the token positions in `batches` that are padding."""
    total = sum(b.tokens.size for b in batches)
    real = sum(b.real_tokens for b in batches)
    return 1.0 - real / total if total else 0.0
