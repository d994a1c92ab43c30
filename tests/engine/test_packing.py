"""Several examples per step: token-budget batches and packed rows, equal to unpacked training."""

from __future__ import annotations

import numpy as np
import pytest

from engine.batching import (
    bucket_width,
    choose_batching,
    collate,
    collate_packed,
    pack_rows,
    plan_epoch_budget,
    plan_epoch_packed,
)
from tests.helpers import make_config, mixed_examples, train_run, write_jsonl


@pytest.mark.parametrize("which", ["stories", "qwen2"])
def test_packed_batch_loss_equals_the_loss_of_the_same_examples_unpacked(which, request):
    import mlx.core as mx
    import mlx_lm

    from engine.training.loss import masked_loss

    path = request.getfixturevalue("stories_path" if which == "stories" else "tiny_qwen_model")
    model, tok = mlx_lm.load(str(path))
    ex = mixed_examples(tok)
    unpacked = collate(ex)
    packed = collate_packed([ex[:3], ex[3:6], ex[6:]])
    assert packed.tokens.shape[0] == 3 and packed.examples == len(ex)
    l1, n1 = masked_loss(model, mx.array(unpacked.tokens), mx.array(unpacked.weights))
    l2, n2 = masked_loss(
        model, mx.array(packed.tokens), mx.array(packed.weights), mx.array(packed.segments)
    )
    assert n1.item() == n2.item()
    assert abs(l1.item() - l2.item()) < 1e-4 * max(1.0, abs(l1.item()))
    # Without the block-diagonal mask the same packed row gives a different loss: the mask matters.
    l3, _ = masked_loss(model, mx.array(packed.tokens), mx.array(packed.weights))
    assert abs(l3.item() - l1.item()) > 1e-3


def test_rows_hold_every_example_once_and_fit_the_row_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=500)
    rows = pack_rows(lengths, 256, seed=1, epoch=0)
    flat = np.concatenate(rows)
    assert sorted(flat.tolist()) == list(range(500))
    assert all(lengths[r].sum() <= 256 for r in rows)
    fill = lengths.sum() / (len(rows) * 256)
    assert fill > 0.9, fill
    # Deterministic per (seed, epoch), different between epochs.
    assert all((a == b).all() for a, b in zip(rows, pack_rows(lengths, 256, seed=1, epoch=0)))
    assert any(
        len(a) != len(b) or (a != b).any()
        for a, b in zip(rows, pack_rows(lengths, 256, seed=1, epoch=1))
    )
    batches = plan_epoch_packed(lengths, 4, 256, seed=1, epoch=0)
    assert sum(len(b) for b in batches) == len(rows)


def test_auto_batching_decides_by_length_spread_data_size_and_architecture():
    rng = np.random.default_rng(0)
    varied = rng.integers(10, 200, size=5000).tolist()
    mode, budget, _ = choose_batching(varied, 8, "auto", "llama")
    assert mode == "budget" and budget == 8 * bucket_width(max(varied))
    assert (
        choose_batching([100] * 5000, 8, "auto", "llama")[0] == "fixed"
    )  # even lengths: nothing to gain
    assert (
        choose_batching(varied[:60], 8, "auto", "llama")[0] == "fixed"
    )  # small data keeps its steps
    assert choose_batching(varied, 8, "off", "llama")[0] == "fixed"
    assert choose_batching(varied, 8, "pack", "qwen2")[:2] == ("pack", bucket_width(max(varied)))
    assert choose_batching(varied, 8, "pack", "mamba")[0] == "fixed"  # attention mask not supported


def test_budget_batches_cover_every_example_and_stay_within_the_budget():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 300, size=1000)
    budget = 8 * bucket_width(int(lengths.max()))
    batches = plan_epoch_budget(lengths, budget, seed=0, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    for b in batches:
        assert len(b) * bucket_width(int(lengths[b].max())) <= budget or len(b) == 1
    sizes = [len(b) for b in batches]
    assert max(sizes) > 3 * min(sizes)  # short examples share steps in larger numbers
    again = plan_epoch_budget(lengths, budget, seed=0, epoch=0)
    assert all((a == b).all() for a, b in zip(batches, again))


@pytest.mark.slow
def test_training_with_budget_batches_learns_and_resumes_exactly(tiny_chat_model, tmp_path):
    rng = np.random.default_rng(2)
    rows = [
        {"prompt": "Say " + "la " * int(k), "completion": "ok " * int(m)}
        for k, m in zip(rng.integers(1, 30, 400), rng.integers(1, 40, 400))
    ]
    data = write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "valid.jsonl", rows[:8])

    def cfg():
        c = make_config(
            tiny_chat_model,
            data.parent,
            iters=12,
            learning_rate=3e-3,
            steps_per_report=1,
            save_every=6,
            steps_per_eval=6,
        )
        c.data.packing = "budget"
        return c

    status, _, full = train_run(cfg())
    assert status == "completed" and full.of("started")[0]["config"]["batching"] == "budget"
    assert full.of("eval")[-1]["val_loss"] < full.of("eval")[0]["val_loss"]
    status, run_dir, first = train_run(cfg(), stop_after=5)
    _, _, second = train_run(cfg(), resume_dir=run_dir)
    want = {e["step"]: e["train_loss"] for e in full.of("progress")}
    got = {e["step"]: e["train_loss"] for e in first.of("progress") + second.of("progress")}
    assert got.keys() == want.keys() and max(abs(got[k] - want[k]) for k in want) < 1e-4


def test_training_with_packing_learns_and_resumes_exactly(tiny_chat_model, tmp_path):
    rows = [
        {"prompt": f"What is {i} plus one?", "completion": f"It is {i + 1}."} for i in range(60)
    ]
    data = write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "valid.jsonl", rows[:8])

    def cfg():
        c = make_config(
            tiny_chat_model,
            data.parent,
            iters=16,
            learning_rate=3e-3,
            steps_per_report=1,
            save_every=8,
            steps_per_eval=8,
        )
        c.data.packing, c.data.pack_length = "pack", 128
        return c

    status, _, full = train_run(cfg())
    assert status == "completed" and full.of("started")[0]["config"]["packing"] is True
    assert full.of("eval")[-1]["val_loss"] < full.of("eval")[0]["val_loss"]
    assert full.of("progress")[-1]["padding_fraction"] < 0.2
    status, run_dir, first = train_run(cfg(), stop_after=5)
    assert status == "stopped"
    _, _, second = train_run(cfg(), resume_dir=run_dir)
    want = {e["step"]: e["train_loss"] for e in full.of("progress")}
    got = {e["step"]: e["train_loss"] for e in first.of("progress") + second.of("progress")}
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in want) < 1e-4
