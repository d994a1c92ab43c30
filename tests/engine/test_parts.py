"""A batch in two groups of rows on two streams (engine.training.parts): the groups hold every row
once, cut to their own longest row, and training and evaluation reach the same numbers as with the
batch in one piece."""

from __future__ import annotations

import numpy as np
import pytest

from engine import platform


def _batch(lengths, width=None, segments=False):
    from engine.batching import Batch

    width = width or max(lengths)
    rows = len(lengths)
    tokens = np.zeros((rows, width), np.int32)
    weights = np.zeros((rows, width), np.float32)
    for r, n in enumerate(lengths):
        tokens[r, :n] = np.arange(1, n + 1) + 100 * r
        weights[r, n // 2 : n] = 1
    seg = None
    if segments:
        seg = np.zeros((rows, width), np.int32)
        for r, n in enumerate(lengths):
            seg[r, :n] = 1 + (np.arange(n) >= n // 2)
    return Batch(tokens, weights, np.array(lengths, np.int32), seg, examples=rows)


def test_the_cut_balances_the_padded_sizes_of_the_two_groups():
    from engine.training.parts import cut

    assert cut(np.array([10, 10, 10, 10])) == 2
    # 5 x 9 = 45 tokens against 3 x 12 = 36: the cut after 4 rows would leave 4 x 12 = 48.
    assert cut(np.array([5, 6, 7, 8, 9, 10, 11, 12])) == 5
    # One long row: it takes a group of its own, the short ones the other.
    assert cut(np.array([10, 10, 10, 100])) == 3
    assert cut(np.array([3, 9])) == 1


@pytest.mark.parametrize("segments", [False, True])
def test_two_groups_hold_every_row_once_cut_to_their_longest_row(segments):
    from engine.batching import bucket_width
    from engine.training.parts import split_rows

    batch = _batch([30, 5, 12, 7, 29, 6], width=40, segments=segments)
    groups = split_rows(batch, 2, select_outputs=False)
    assert len(groups) == 2
    seen = []
    for tokens, weights, seg, select in groups:
        assert select is None and (seg is not None) == segments
        # Each group's width is its longest row; nothing real was cut off.
        lengths = (tokens != 0).sum(axis=1)
        assert tokens.shape[1] == lengths.max()
        for row in tokens:
            r = int(row[0]) // 100
            seen.append(r)
            assert np.array_equal(row, batch.tokens[r, : tokens.shape[1]])
        assert weights.sum() == sum(batch.weights[int(t[0]) // 100].sum() for t in tokens)
    assert sorted(seen) == list(range(6))
    short, long_ = groups
    assert short[0].shape == (4, 12) and long_[0].shape == (2, 30)
    # Batches compiled at once: widths rounded as the batcher rounds (multiples of 8 here), so
    # their traces stay a bounded set.
    bucketed = split_rows(batch, 2, select_outputs=False, bucketed=True)
    assert [g[0].shape for g in bucketed] == [(4, 16), (2, 32)]
    assert bucket_width(30) == 32
    # Fewer tokens computed than the padded batch holds.
    assert sum(g[0].size for g in groups) < batch.tokens.size


def test_one_group_is_the_batch_unchanged_with_its_selected_positions():
    from engine.training.loss import select_positions
    from engine.training.parts import split_rows

    batch = _batch([30, 5, 12], width=40)
    (tokens, weights, seg, select) = split_rows(batch, 1, select_outputs=True)[0]
    assert tokens is not batch.tokens or tokens.shape == batch.tokens.shape
    assert np.array_equal(tokens, batch.tokens) and np.array_equal(weights, batch.weights)
    assert seg is None and np.array_equal(select, select_positions(batch.weights))
    single = split_rows(_batch([9]), 2, select_outputs=False)
    assert len(single) == 1  # one row: nothing to split


def test_two_groups_are_used_on_the_cpu_unless_turned_off(monkeypatch):
    from engine.training import parts

    monkeypatch.delenv("LATHE_CPU_STREAMS", raising=False)
    assert parts.count() == 2 and len(parts.streams()) == 2
    assert parts.streams()[1] is parts.streams()[1]  # the second stream is made once
    monkeypatch.setenv("LATHE_CPU_STREAMS", "0")
    assert parts.count() == 1 and len(parts.streams()) == 1


def test_the_worker_sets_mlx_to_order_its_work_breadth_first_unless_the_user_did(monkeypatch):
    from engine.training import parts

    monkeypatch.delenv("LATHE_CPU_STREAMS", raising=False)
    env: dict = {}
    assert parts.set_eval_order(env) and env["MLX_BFS_MAX_WIDTH"] == parts.EVAL_WIDTH
    env = {"MLX_BFS_MAX_WIDTH": "50"}
    assert not parts.set_eval_order(env) and env["MLX_BFS_MAX_WIDTH"] == "50"
    monkeypatch.setenv("LATHE_CPU_STREAMS", "0")
    env = {}
    assert not parts.set_eval_order(env) and env == {}


def test_openblas_runs_one_thread_per_call_while_the_groups_run(monkeypatch):
    from engine.training import parts

    threads = {"n": 2}
    monkeypatch.setattr(platform, "blas_threads", lambda: threads["n"])
    monkeypatch.setattr(platform, "set_blas_threads", lambda n: threads.update(n=n) or True)
    monkeypatch.delenv("LATHE_CPU_STREAMS", raising=False)
    with parts.parallel() as n:
        assert n == 2 and threads["n"] == 1
        with parts.parallel():  # nested (evaluation inside training): still one, then back
            assert threads["n"] == 1
        assert threads["n"] == 1
    assert threads["n"] == 2
    monkeypatch.setenv("LATHE_CPU_STREAMS", "0")
    with parts.parallel() as n:
        assert n == 1 and threads["n"] == 2


@pytest.mark.skipif(platform.blas_threads() is None, reason="OpenBLAS is not loaded here")
def test_the_real_openblas_thread_count_is_set_and_restored():
    from engine.training import parts

    before = platform.blas_threads()
    with parts.parallel():
        assert platform.blas_threads() == 1
    assert platform.blas_threads() == before


def _train(path, examples, steps, monkeypatch, streams: str, val, compiled):
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from engine.training.loop import LoopCallbacks, train
    from engine.training.schedule import LoopArgs
    from tests.helpers import Plan, fresh_model

    monkeypatch.setenv("LATHE_CPU_STREAMS", streams)
    mx.random.seed(0)
    model, optimizer = fresh_model(path)
    args = LoopArgs(total_steps=steps, steps_per_report=1, steps_per_eval=steps, save_every=100)
    args.compile_min_tokens = 0 if compiled else 1 << 30
    losses = []

    class Losses(LoopCallbacks):
        def progress(self, **numbers):
            losses.append(numbers["train_loss"])

    result = train(model, optimizer, Plan(examples), val, args, Losses())
    weights = dict(tree_flatten(model.trainable_parameters()))
    return result, losses, weights


@pytest.mark.parametrize("compiled", [False, True])
def test_training_in_two_groups_reaches_the_numbers_of_one(tiny_chat_model, monkeypatch, compiled):
    """Same losses, validation loss and LoRA weights after 3 Adam steps, with the batch in two
    groups on two streams or in one piece: the groups' losses are divided by the whole batch's
    trained-token count, so their gradients add up to the batch's."""
    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_flatten

    from engine.batching import collate
    from engine.encode import Encoder
    from tests.helpers import fresh_model

    _, tokenizer = mlx_lm.load(str(tiny_chat_model))
    encoder = Encoder(tokenizer, mask_prompt=True)
    examples = [
        encoder.encode({"prompt": f"Question {i}?", "completion": "Answer " * (3 * i + 1)})
        for i in range(4)
    ]
    val = [collate(examples[1:4])]
    one = _train(tiny_chat_model, examples, 3, monkeypatch, "0", val, compiled)
    two = _train(tiny_chat_model, examples, 3, monkeypatch, "1", val, compiled)
    assert one[0].status == two[0].status == "completed"
    assert np.allclose(one[1], two[1], rtol=1e-5, atol=1e-5)
    assert abs(one[0].final_val_loss - two[0].final_val_loss) < 1e-5
    assert one[2].keys() == two[2].keys()
    for name in one[2]:
        a, b = np.array(one[2][name]), np.array(two[2][name])
        assert np.allclose(a, b, rtol=1e-4, atol=1e-6), name
    # The weights moved: a test that could not tell a broken gradient from none.
    mx.random.seed(0)
    start = dict(tree_flatten(fresh_model(tiny_chat_model)[0].trainable_parameters()))
    moved = [k for k in start if "lora_b" in k and not np.allclose(start[k], two[2][k])]
    assert moved and len(moved) == len([k for k in start if "lora_b" in k])
