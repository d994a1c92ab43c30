"""The output layer on trained positions only: same loss and gradients, fewer logits."""

from __future__ import annotations

import numpy as np
import pytest

from engine.batching import collate, collate_packed
from engine.training.loss import masked_loss, output_head_supported, select_positions
from tests.helpers import mixed_examples


def test_selected_positions_are_the_trained_ones_padded_with_an_untrained_one():
    w = np.zeros((4, 33), dtype=np.float32)
    w[0, 5:20] = 1
    w[2, 10:12] = 1
    sel = select_positions(w)
    flat = w[:, 1:].reshape(-1)
    trained = np.flatnonzero(flat)
    assert sel is not None and len(sel) % 16 == 0 and len(sel) >= len(trained)  # eighths of 4 x 32
    assert sel[: len(trained)].tolist() == trained.tolist()
    assert flat[sel[len(trained) :]].sum() == 0
    # Where nearly everything is trained (text documents), selection saves nothing: None.
    assert select_positions(np.ones((2, 17), dtype=np.float32)) is None
    w = np.ones((2, 17), dtype=np.float32)
    w[0, 3] = 0
    assert select_positions(w) is None


@pytest.mark.parametrize("which", ["stories", "qwen2", "packed"])
def test_loss_and_gradients_with_selected_outputs_equal_the_full_ones(which, request):
    import mlx.core as mx
    import mlx.nn as nn
    import mlx_lm
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    path = request.getfixturevalue("tiny_qwen_model" if which == "qwen2" else "stories_path")
    model, tok = mlx_lm.load(str(path))
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 4, "dropout": 0.0, "scale": 10.0})
    ex = mixed_examples(tok)
    batch = collate_packed([ex[:3], ex[3:6], ex[6:]]) if which == "packed" else collate(ex)
    assert output_head_supported(model, ex[0].tokens)
    sel = select_positions(batch.weights)
    assert sel is not None and len(sel) < batch.weights[:, 1:].size
    args = (
        mx.array(batch.tokens),
        mx.array(batch.weights),
        None if batch.segments is None else mx.array(batch.segments),
        None,
    )
    value_and_grad = nn.value_and_grad(model, masked_loss)
    (full, n1), g1 = value_and_grad(model, *args)
    (part, n2), g2 = value_and_grad(model, *args, mx.array(sel))
    assert n1.item() == n2.item()
    assert abs(full.item() - part.item()) < 1e-5 * max(1.0, abs(full.item()))
    for (name, a), (_, b) in zip(tree_flatten(g1), tree_flatten(g2)):
        assert mx.allclose(a, b, atol=1e-5, rtol=1e-4).item(), name


@pytest.mark.parametrize("which", ["stories", "qwen2", "packed", "quantized"])
def test_fused_output_layer_gives_the_full_loss_and_gradients_in_chunks(
    which, request, monkeypatch
):
    """The chunked output layer with its gradient taken on the way forward changes nothing but memory."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx_lm
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    import engine.training.loss as trainer

    monkeypatch.setattr(
        trainer, "HEAD_CHUNK_VALUES", 1
    )  # 64-row chunks: several, the last one partial
    path = request.getfixturevalue("tiny_qwen_model" if which == "qwen2" else "stories_path")
    model, tok = mlx_lm.load(str(path))
    if which == "quantized":
        # Every layer whose width allows it, the output layer (the tied embedding) included.
        nn.quantize(
            model,
            group_size=32,
            bits=4,
            class_predicate=lambda _, m: (
                hasattr(m, "to_quantized") and m.weight.shape[-1] % 32 == 0
            ),
        )
        assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 4, "dropout": 0.0, "scale": 10.0})
    # Non-zero B matrices, so that every adapter matrix gets a gradient.
    model.update(_lora_b_random(model))
    assert trainer.head_frozen(model)
    ex = mixed_examples(tok)
    batch = collate_packed([ex[:3], ex[3:6], ex[6:]]) if which == "packed" else collate(ex)
    rows = batch.weights[:, 1:].size
    assert (
        rows > 2 * trainer.head_chunk_rows(trainer._vocab_size(model), trainer.HEAD_CHUNK_VALUES)
        and rows % 64
    )
    args = (
        mx.array(batch.tokens),
        mx.array(batch.weights),
        None if batch.segments is None else mx.array(batch.segments),
        None,
        None,
    )
    value_and_grad = nn.value_and_grad(model, masked_loss)
    (full, n1), g1 = value_and_grad(model, *args, "full")
    sel = mx.array(select_positions(batch.weights))
    for head, select in (("fused", None), ("fused", sel), ("split", None)):
        (value, n2), g2 = value_and_grad(model, *args[:4], select, head)
        assert n1.item() == n2.item()
        assert abs(full.item() - value.item()) < 1e-5 * max(1.0, abs(full.item())), head
        for (name, a), (_, b) in zip(tree_flatten(g1), tree_flatten(g2)):
            assert mx.allclose(a, b, atol=1e-5, rtol=1e-4).item(), (head, name)
    # Compiled, as in training: the same loss.
    step = mx.compile(
        lambda t, w: masked_loss(model, t, w, None, None, None, "fused")[0], inputs=[model.state]
    )
    if batch.segments is None:
        assert abs(step(*args[:2]).item() - full.item()) < 1e-5 * max(1.0, abs(full.item()))


def test_output_layer_chunks_are_powers_of_two_within_the_budget():
    from engine.head import HEAD_CHUNK_VALUES, head_chunk_rows

    for vocab in (256, 8192, 32000, 128256, 151936):
        rows = head_chunk_rows(vocab)
        assert rows & (rows - 1) == 0 and rows * vocab <= HEAD_CHUNK_VALUES
        assert 2 * rows * vocab > HEAD_CHUNK_VALUES  # the largest such power of two
    assert head_chunk_rows(151936) == 256
    assert head_chunk_rows(10**9) == 64  # never fewer rows than that


def _lora_b_random(model) -> dict:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    mx.random.seed(3)
    changed = [
        (k, mx.random.normal(v.shape) * 0.05)
        for k, v in tree_flatten(model.trainable_parameters())
        if k.endswith("lora_b")
    ]
    return dict(tree_unflatten(changed))


def test_full_fine_tuning_keeps_the_output_layer_in_the_model(stories_path):
    import mlx_lm

    from engine.training.loss import head_frozen

    model, _ = mlx_lm.load(str(stories_path))
    assert not head_frozen(model)  # nothing frozen: the output layer trains, so no fused path
    model.freeze()
    assert head_frozen(model)


def test_a_model_whose_head_does_more_is_not_given_selected_outputs(stories_path):
    import mlx.core as mx
    import mlx_lm

    model, tok = mlx_lm.load(str(stories_path))
    assert output_head_supported(model, [1, 2, 3, 4])

    class SoftCapped(type(model)):
        def __call__(self, inputs, cache=None, **kwargs):
            return 30 * mx.tanh(super().__call__(inputs, cache, **kwargs) / 30)

    model.__class__ = SoftCapped
    assert not output_head_supported(model, [1, 2, 3, 4])


def test_a_run_uses_selected_outputs_and_compiles_large_batches_at_once(
    tiny_chat_model, tmp_path, monkeypatch
):
    """Training with prompt masking takes the selected-output path and gives the same losses."""
    import engine.training.loss as trainer
    from engine.training.schedule import compile_min_tokens
    from tests.helpers import config_for, run_logged

    assert compile_min_tokens() == 1024  # the CPU backend in tests
    seen = []
    original = trainer.select_positions
    monkeypatch.setattr(trainer, "select_positions", lambda w: seen.append(original(w)) or seen[-1])
    cfg = config_for(tiny_chat_model, tmp_path, iters=4)
    status, _, with_select = run_logged(cfg)
    assert status == "completed" and any(s is not None for s in seen)
    monkeypatch.setattr(trainer, "output_head_supported", lambda *a: False)
    import engine.training.schedule

    monkeypatch.setattr(
        engine.training.schedule, "compile_min_tokens", lambda: 0
    )  # every shape compiled at once
    status, _, without = run_logged(cfg)
    assert status == "completed"
    a = [e["train_loss"] for e in with_select.of("progress")]
    b = [e["train_loss"] for e in without.of("progress")]
    assert len(a) == 4 and np.allclose(a, b, rtol=1e-4, atol=1e-5)
