"""Blocked causal attention (engine.training.attention): the same numbers as mlx-lm's attention,
in place only while training on MLX's CPU backend."""

from __future__ import annotations

import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models.base import scaled_dot_product_attention as mlx_lm_attention

from engine.training import attention
from engine.training.loss import masked_loss


def _qkv(length: int, heads: int = 6, kv_heads: int = 2, batch: int = 2):
    mx.random.seed(3)
    return (
        mx.random.normal((batch, heads, length, 16)),
        mx.random.normal((batch, kv_heads, length, 16)),
        mx.random.normal((batch, kv_heads, length, 16)),
    )


@pytest.mark.parametrize("length", [300, 256, 129])
def test_blocked_attention_equals_mlx_lms_with_its_gradients(length):
    q, k, v = _qkv(length)
    blocked = attention.blocked_attention(mlx_lm_attention, block=128)

    def loss(fn):
        return lambda q, k, v: (fn(q, k, v, None, scale=0.25, mask="causal") ** 2).sum()

    out_b, out_r = (
        blocked(q, k, v, None, 0.25, "causal"),
        mlx_lm_attention(q, k, v, None, 0.25, "causal"),
    )
    assert mx.allclose(out_b, out_r, atol=1e-5).item()
    grads_b = mx.grad(loss(blocked), argnums=(0, 1, 2))(q, k, v)
    grads_r = mx.grad(loss(mlx_lm_attention), argnums=(0, 1, 2))(q, k, v)
    for gb, gr in zip(grads_b, grads_r):
        assert mx.allclose(gb, gr, atol=1e-4, rtol=1e-4).item()


def test_other_masks_and_short_queries_go_to_mlx_lm_unchanged():
    calls = []

    def recording(q, k, v, cache, scale, mask, **kw):
        kind = mask if mask is None or isinstance(mask, str) else "array"
        calls.append((q.shape[2], k.shape[2], kind))
        return mlx_lm_attention(q, k, v, cache, scale=scale, mask=mask, **kw)

    blocked = attention.blocked_attention(recording, block=128)
    q, k, v = _qkv(300)
    blocked(q, k, v, None, 0.25, mx.ones((300, 300), dtype=mx.bool_))  # packed rows' kind of mask
    blocked(q[:, :, :100], k[:, :, :100], v[:, :, :100], None, 0.25, "causal")  # one block
    blocked(q[:, :, -1:], k, v, None, 0.25, None)  # a generation step
    assert calls == [(300, 300, "array"), (100, 100, "causal"), (1, 300, None)]
    calls.clear()
    blocked(q, k, v, None, 0.25, "causal")
    assert calls == [(128, 128, "causal"), (128, 256, "causal"), (44, 300, "causal")]


def test_blocked_is_in_place_only_inside_and_only_on_the_cpu(tiny_chat_model, monkeypatch):
    from mlx_lm.utils import load

    model, _ = load(str(tiny_chat_model))
    module = sys.modules[type(model).__module__]
    original = getattr(module, attention.NAME)
    with attention.blocked(model) as active:
        assert active and getattr(module, attention.NAME).blocked_from is original
    assert getattr(module, attention.NAME) is original
    with pytest.raises(RuntimeError), attention.blocked(model):
        raise RuntimeError("a failed step")
    assert getattr(module, attention.NAME) is original
    monkeypatch.setenv("LATHE_BLOCK_ATTENTION", "0")
    with attention.blocked(model) as active:
        assert not active and getattr(module, attention.NAME) is original


def test_a_model_trains_to_the_same_loss_and_gradients_with_blocked_attention(tiny_chat_model):
    """The whole model on 2 x 300 tokens: loss and LoRA gradients as with mlx-lm's attention."""
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    model, _ = load(str(tiny_chat_model))
    model.freeze()
    mx.random.seed(0)
    linear_to_lora_layers(model, len(model.layers), {"rank": 4, "scale": 10.0, "dropout": 0.0})
    rng = np.random.default_rng(0)
    vocab = model.args.vocab_size
    tokens = mx.array(rng.integers(1, vocab, (2, 300)).astype(np.int32))
    weights = mx.array(np.ones((2, 300), np.float32))
    value_and_grad = nn.value_and_grad(model, masked_loss)

    def run():
        (value, _), grad = value_and_grad(model, tokens, weights)
        mx.eval(value, grad)
        return value, grad

    plain_value, plain_grad = run()
    with attention.blocked(model):
        value, grad = run()
    assert abs(value.item() - plain_value.item()) < 1e-5
    from mlx.utils import tree_flatten

    for (name, g), (_, p) in zip(tree_flatten(grad), tree_flatten(plain_grad)):
        assert mx.allclose(g, p, atol=1e-5, rtol=1e-3).item(), name
