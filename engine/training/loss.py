"""The loss and the output layer's numerics: a masked, weighted cross-entropy, packed rows'
attention mask, and the output layer on trained positions only, in chunks, with its gradient
computed on the way forward where the layer is frozen.

The training loop (`engine.training.loop`) and evaluation call `masked_loss`; which way the output
layer runs is decided once per run (`training_head`). Moved from the loop unchanged: the numbers
are the same as mlx-lm's cross-entropy where they overlap.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.head import HEAD_CHUNK_VALUES, HEAD_MODEL_TYPES, head_chunk_rows


class PackedMask:
    """Stands in for mlx-lm's KV cache during training to hand the model a block-diagonal mask.

    mlx-lm's attention asks the cache for its mask (`make_mask`) and its position offset; this
    object answers with "attend causally within your own example" and offset 0, and caches nothing.
    Rotary positions make attention depend only on relative positions, so an example packed at
    offset 300 of a row computes what it would at offset 0 of a row of its own.
    """

    offset = 0

    def __init__(self, mask: mx.array):
        self.mask = mask

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None):
        if window_size:
            idx = mx.arange(n)
            return self.mask & (idx[:, None] < idx[None, :] + window_size)
        return self.mask

    def update_and_fetch(self, keys, values):
        return keys, values


def segment_mask(segments: mx.array) -> mx.array:
    """[B, 1, L, L] boolean mask: causal, and only within the same segment."""
    n = segments.shape[1]
    idx = mx.arange(n)
    causal = idx[:, None] >= idx[None, :]
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


# A batch computes logits only at its trained positions when those are at most this share of it.
SELECT_MAX_FRACTION = 7 / 8


def _head_module(model):
    """The module holding the output layer's weights: `lm_head`, or the tied input embedding."""
    head = getattr(model, "lm_head", None)
    return model.model.embed_tokens if head is None else head


def _head(model):
    """The model's output layer: `lm_head`, or the tied input embedding used as a linear layer."""
    module = _head_module(model)
    return module.as_linear if module is model.model.embed_tokens else module


def output_head_supported(model, sample: Sequence[int]) -> bool:
    """Whether `masked_loss(..., select=...)` may run the output layer on selected positions only.

    The architecture must be one whose logits are `head(self.model(inputs))`, and the two ways
    must agree on a sample of token ids (a guard against a variant that does more, such as a
    final soft cap or logit scaling).
    """
    model_type = getattr(getattr(model, "args", None), "model_type", None) or getattr(
        model, "model_type", None
    )
    if model_type not in HEAD_MODEL_TYPES or not hasattr(model, "model"):
        return False
    try:
        x = mx.array(list(sample)[:16] or [0])[None]
        full = model(x)
        split = _head(model)(model.model(x))
        mx.eval(full, split)
    except Exception:  # noqa: BLE001 - any surprise means: use the plain path
        return False
    scale = float(mx.abs(full).max().item()) + 1e-6
    tolerance = 1e-4 if full.dtype == mx.float32 else 2e-2
    return (
        full.shape == split.shape and float(mx.abs(full - split).max().item()) <= tolerance * scale
    )


def select_positions(weights: np.ndarray) -> np.ndarray | None:
    """Flat indices of the trained target positions of a batch, padded to a bounded set of sizes.

    `weights` is the batch's [B, L] weights; targets are positions 1..L-1, flattened as
    [B, L-1]. The count is rounded up to eighths of the batch so compiled steps see few distinct
    shapes; the padding repeats an untrained position (weight 0), so it adds nothing to the loss.
    Returns None when the trained share is too large for selection to save anything.
    """
    w = weights[:, 1:].reshape(-1)
    trained = np.flatnonzero(w)
    total = w.size
    eighth = max(1, -(-total // 8))
    size = max(eighth, -(-len(trained) // eighth) * eighth)
    if size > SELECT_MAX_FRACTION * total:  # also when every position is trained
        return None
    filler = int(np.flatnonzero(w == 0)[0])
    return np.concatenate([trained, np.full(size - len(trained), filler)]).astype(np.int32)


def _vocab_size(model) -> int:
    return int(_head_module(model).weight.shape[0])  # quantized weights keep one row per output too


def head_frozen(model) -> bool:
    """Whether the output layer has no trainable weights (LoRA and DoRA; not full fine-tuning)."""
    from mlx.utils import tree_flatten

    return not tree_flatten(_head_module(model).trainable_parameters())


def training_head(model, sample: Sequence[int]) -> str:
    """How training runs this model's output layer (`masked_loss`'s `head`): "fused" where the
    layer can run apart (`output_head_supported`) and is frozen, "split" where it can run apart but
    trains (full fine-tuning: on selected positions only), else "full"."""
    if not output_head_supported(model, sample):
        return "full"
    return "fused" if head_frozen(model) else "split"


def head_cross_entropy(
    head, hidden: mx.array, targets: mx.array, weights: mx.array, chunk: int
) -> mx.array:
    """Per-row cross-entropy of `head(hidden)` against `targets`, times `weights`, `chunk` rows at a
    time: for evaluation, where nothing is kept for a backward pass."""
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        end = start + chunk
        h = hidden[start:end] if not parts else mx.depends(hidden[start:end], parts[-1])
        logits = head(h).astype(mx.float32)
        picked = mx.take_along_axis(logits, targets[start:end, None], axis=-1)[:, 0]
        parts.append((mx.logsumexp(logits, axis=-1) - picked) * weights[start:end])
    return parts[0] if len(parts) == 1 else mx.concatenate(parts)


@mx.compile
def _loss_and_logit_gradient(
    logits: mx.array, targets: mx.array, weights: mx.array
) -> tuple[mx.array, mx.array]:
    """Weighted cross-entropy per row and its gradient for the logits, (softmax - one-hot) x weight.

    Compiled so the element-wise work runs as one pass: only the logits and their gradient exist.
    """
    x = logits.astype(mx.float32)
    lse = mx.logsumexp(x, axis=-1, keepdims=True)
    loss = (lse[:, 0] - mx.take_along_axis(x, targets[:, None], axis=-1)[:, 0]) * weights
    probs = mx.exp(x - lse)
    target = mx.arange(x.shape[-1])[None] == targets[:, None]
    return loss, (mx.where(target, probs - 1, probs) * weights[:, None]).astype(logits.dtype)


def fused_head_cross_entropy(
    head, hidden: mx.array, targets: mx.array, weights: mx.array, chunk: int
) -> mx.array:
    """`head_cross_entropy` for training: the gradient for `hidden` is computed in the forward pass,
    chunk by chunk, so nothing the size of the logits waits for the backward pass, and there is no
    recomputation either. Chunks run one after another; MLX allocates buffers as it queues work, so
    when memory is plentiful several chunks' logits may exist at once, and once its memory limit
    makes it wait, one. The output layer must be frozen: it gets no gradient here.
    """

    @mx.custom_function
    def rows(hidden, targets, weights):
        parts = []
        for start in range(0, hidden.shape[0], chunk):
            end = start + chunk
            h, t, w = hidden[start:end], targets[start:end], weights[start:end]
            if parts:  # independent branches could run in any order: chunk after chunk, explicitly
                h = mx.depends(h, parts[-1])
            loss, dlogits = _loss_and_logit_gradient(head(h), t, w)
            _, (dh,) = mx.vjp(head, [h], [dlogits])
            # One array per chunk: gradient columns, then the loss.
            parts.append(mx.concatenate([dh.astype(mx.float32), loss[:, None]], axis=1))
        return parts[0] if len(parts) == 1 else mx.concatenate(parts)

    @rows.vjp
    def rows_vjp(primals, cotangent, output):
        hidden, targets, weights = primals
        # Row r's loss depends on hidden[r] alone, so its gradient is the stored row times the
        # row's cotangent. The gradient columns are internal (sliced off below).
        return (
            (output[:, :-1] * cotangent[:, -1:]).astype(hidden.dtype),
            mx.zeros_like(targets),
            mx.zeros_like(weights),
        )

    return rows(hidden, targets, weights)[:, -1]


def masked_loss(
    model,
    tokens: mx.array,
    weights: mx.array,
    segments: mx.array | None = None,
    denom: mx.array | None = None,
    select: mx.array | None = None,
    head: str = "auto",
):
    """Mean cross-entropy over the tokens marked for training; returns (loss, trained tokens).

    `weights[:, t]` says whether token t is a target. Padding has weight 0, so, unlike mlx-lm, no
    example learns to predict the padding after its last token. With `segments` (packed rows),
    attention stays inside each example. `denom` replaces the local token count as the divisor:
    data-parallel ranks divide by the whole batch's count, so their summed losses and gradients
    equal one process training the whole batch. With `select` (`select_positions`), the output
    layer and the cross-entropy run on the trained positions only: with prompt masking that skips
    most of the largest matrix multiply of a small model and the [tokens x vocabulary] logits.

    `head` says how the output layer runs: "full" (the model's own forward pass), "split" (the
    layer on chunks of rows, `head_cross_entropy`), "fused" (`fused_head_cross_entropy`, for
    training with a frozen output layer), or "auto": "split" with `select`, else "full". "split"
    and "fused" need a model that `output_head_supported` accepts.
    """
    inputs, targets, w = tokens[:, :-1], tokens[:, 1:], weights[:, 1:]
    cache = (
        None
        if segments is None
        else [PackedMask(segment_mask(segments[:, :-1]))] * len(model.layers)
    )
    if head == "auto":
        head = "full" if select is None else "split"
    if head == "full":
        logits = model(inputs) if cache is None else model(inputs, cache=cache)
        ce = (nn.losses.cross_entropy(logits, targets) * w).astype(mx.float32)
    else:
        hidden = model.model(inputs, cache)
        hidden, targets, w = (
            hidden.reshape(-1, hidden.shape[-1]),
            targets.reshape(-1),
            w.reshape(-1),
        )
        if select is not None:
            hidden, targets, w = hidden[select], targets[select], w[select]
        rows = fused_head_cross_entropy if head == "fused" else head_cross_entropy
        ce = rows(
            _head(model), hidden, targets, w, head_chunk_rows(_vocab_size(model), HEAD_CHUNK_VALUES)
        )
    ntoks = weights[:, 1:].sum()
    return ce.sum() / mx.maximum(ntoks if denom is None else denom, 1), ntoks
