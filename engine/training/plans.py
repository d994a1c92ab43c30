"""Batch plans, chosen once per run and handed to the training loop.

A plan answers two questions for the loop: which batches an epoch holds (`epoch(n)`: a list of
items, deterministic in the seed and the epoch, so a checkpoint's (epoch, position) continues
exactly) and what one item's batch is (`batch(item)`). The loop never asks which kind it has:
fixed batches, token-budget batches and packed rows are three plans (engine.batching has the
planning and collating functions they call; `decide_batching` picks one for the model and data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.batching import (
    Batch,
    choose_batching,
    collate,
    collate_packed,
    pack_rows,
    plan_epoch,
    plan_epoch_budget,
    plan_epoch_packed,
)
from engine.config import RunConfig
from engine.encode import Encoded
from engine.errors import TrainingError


class BatchPlan(Protocol):
    def epoch(self, epoch: int) -> list: ...

    def batch(self, item) -> Batch: ...


@dataclass
class _Plan:
    train_set: Sequence[Encoded]
    batch_size: int
    seed: int = 0
    pad_multiple: int = 8
    max_seq_length: int | None = None
    lengths: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = [len(e.tokens) for e in self.train_set]

    def examples(self, indices) -> list[Encoded]:
        return [self.train_set[i] for i in indices]


class FixedBatches(_Plan):
    """`batch_size` examples per step, grouped by length; a short last batch is padded with empty
    rows to the usual shape (one the compiled step has seen)."""

    def epoch(self, epoch: int) -> list:
        return plan_epoch(self.lengths, self.batch_size, self.seed, epoch)

    def batch(self, item) -> Batch:
        return collate(self.examples(item), self.pad_multiple, self.max_seq_length, self.batch_size)


@dataclass
class BudgetBatches(_Plan):
    """Similar-length examples per step up to `tokens` padded tokens."""

    tokens: int = 0

    def epoch(self, epoch: int) -> list:
        return plan_epoch_budget(self.lengths, self.tokens, self.seed, epoch, self.pad_multiple)

    def batch(self, item) -> Batch:
        # No empty filler rows: a first-epoch shape runs eagerly anyway (see the loop's step).
        return collate(self.examples(item), self.pad_multiple, self.max_seq_length)


@dataclass
class PackedBatches(_Plan):
    """`batch_size` rows of `tokens` tokens, each holding several examples."""

    tokens: int = 0

    def epoch(self, epoch: int) -> list:
        return plan_epoch_packed(self.lengths, self.batch_size, self.tokens, self.seed, epoch)

    def batch(self, item) -> Batch:
        rows = [self.examples(row) for row in item]
        return collate_packed(rows, self.pad_multiple, self.batch_size)


def batch_plan(mode: str, size: int, train_set: Sequence[Encoded], config: RunConfig) -> BatchPlan:
    """The plan for `mode` (fixed | budget | pack, from `decide_batching`) over `train_set`."""
    t, d = config.training, config.data
    common = dict(
        batch_size=t.batch_size,
        seed=t.seed,
        pad_multiple=t.pad_multiple,
        max_seq_length=d.max_seq_length,
    )
    if mode == "pack":
        return PackedBatches(train_set, **common, tokens=size)
    if mode == "budget":
        return BudgetBatches(train_set, **common, tokens=size)
    return FixedBatches(train_set, **common)


def decide_batching(config: RunConfig, model, train_set: list, log) -> tuple[str, int, int]:
    """(mode, tokens, batches per epoch) for this model and data, logging why (batching.choose_batching)."""
    d, t = config.data, config.training
    lengths = [len(e) for e in train_set]
    model_type = getattr(getattr(model, "args", None), "model_type", None) or getattr(
        model, "model_type", None
    )
    mode, size, why = choose_batching(lengths, t.batch_size, d.packing, model_type, d.pack_length)
    if d.packing in ("pack", "on") and mode != "pack":
        raise TrainingError(why, "Set data.packing to auto or off.")
    log("info", why)
    if mode == "pack":
        batches = math.ceil(len(pack_rows(lengths, size, t.seed, 0)) / t.batch_size)
    elif mode == "budget":
        batches = len(plan_epoch_budget(lengths, size, t.seed, 0, t.pad_multiple))
    else:
        batches = math.ceil(len(lengths) / t.batch_size)
    return mode, size, batches
