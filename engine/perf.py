"""How close to the hardware a run is: training FLOPs against a plain matmul of the model's shapes.

The reference is measured on the same machine in the same process: MLX multiplying matrices of
exactly the model's linear-layer shapes. Utilisation = achieved training FLOP/s / reference FLOP/s.
That number means the same thing on an M3 Max GPU and on a 2-core CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn


@dataclass
class FlopModel:
    per_layer_linear: list[int]  # sum of in*out of the linear layers of each transformer block
    head: int  # hidden * vocab (the output projection, tied or not)
    attention_width: int  # heads * head_dim of the attention (for the QK^T and AV products)
    shapes: list[tuple[int, int]]  # distinct (in, out) linear shapes, for the reference matmul

    def training_flops_per_token(
        self, layers_trained: int, context: float, full: bool = False
    ) -> float:
        """FLOPs to train one token with the last `layers_trained` blocks adapted.

        Forward: 2 FLOPs per weight and token, plus attention over `context` earlier tokens.
        Backward: activation gradients (2 per weight) through the head and the trained blocks;
        weight gradients (2 more) only for full fine-tuning. LoRA's own low-rank products are
        left out: at rank 8-64 they are a few percent.
        """
        n = len(self.per_layer_linear)
        k = max(0, min(layers_trained, n))
        attn = 4 * context * self.attention_width  # QK^T and AV, per layer
        forward = 2 * (sum(self.per_layer_linear) + self.head) + n * attn
        trained = self.per_layer_linear[n - k :]
        backward = 2 * (sum(trained) + self.head) + k * 2 * attn
        if full:
            backward += 2 * sum(trained)
        return float(forward + backward)


def _dims(module) -> tuple[int, int] | None:
    linear = getattr(module, "linear", None)  # LoRA / DoRA wrappers
    if linear is not None and isinstance(linear, (nn.Linear, nn.QuantizedLinear)):
        module = linear
    if isinstance(module, nn.QuantizedLinear):
        out, packed = module.weight.shape
        return packed * 32 // module.bits, out
    if isinstance(module, nn.Linear):
        out, inp = module.weight.shape
        return inp, out
    return None


def flop_model(model) -> FlopModel:
    """Count the model's matmul work from its modules (any mlx-lm architecture with `.layers`)."""
    per_layer = []
    shapes: set[tuple[int, int]] = set()
    for layer in model.layers:
        total = 0
        for _, m in layer.named_modules():
            if (
                hasattr(m, "linear")
                and _dims(m) is not None
                and not isinstance(m, (nn.Linear, nn.QuantizedLinear))
            ):
                continue  # counted through its inner .linear
            d = _dims(m)
            if d is not None:
                total += d[0] * d[1]
                shapes.add(d)
        per_layer.append(total)
    args = getattr(model, "args", None)
    hidden = getattr(args, "hidden_size", None)
    vocab = getattr(args, "vocab_size", None)
    heads = getattr(args, "num_attention_heads", None)
    head_dim = getattr(args, "head_dim", None) or ((hidden // heads) if hidden and heads else 0)
    head = (hidden or 0) * (vocab or 0)
    if hidden and vocab:
        shapes.add((hidden, vocab))
    return FlopModel(per_layer, head, (heads or 0) * head_dim, sorted(shapes))


def reference_flops_per_second(
    shapes: list[tuple[int, int]], tokens: int, dtype=mx.float32, seconds: float = 0.5
) -> float:
    """FLOP/s of plain `x @ w.T` on the model's shapes with `tokens` rows, measured now."""
    tokens = max(8, int(tokens))
    pairs = [
        (mx.random.normal((tokens, i)).astype(dtype), mx.random.normal((o, i)).astype(dtype))
        for i, o in shapes
    ]
    mx.eval(pairs)
    for x, w in pairs:  # warm up
        mx.eval(x @ w.T)
    flops = 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for x, w in pairs:
            mx.eval(x @ w.T)
            flops += 2.0 * x.shape[0] * x.shape[1] * w.shape[0]
    return flops / (time.perf_counter() - start)


def compute_dtype(model):
    """The dtype the model computes in (the scales' dtype for quantized weights)."""
    for _, m in model.named_modules():
        if isinstance(m, nn.QuantizedLinear):
            return m.scales.dtype
        if isinstance(m, nn.Linear):
            return m.weight.dtype
    return mx.float32


def utilisation(
    model,
    layers_trained: int,
    full: bool,
    processed_tokens: int,
    seconds: float,
    mean_length: float,
    batch_tokens: int,
) -> dict:
    """Achieved training FLOP/s, the reference matmul FLOP/s and their ratio, for a finished run."""
    fm = flop_model(model)
    per_token = fm.training_flops_per_token(layers_trained, context=mean_length / 2, full=full)
    achieved = per_token * processed_tokens / seconds if seconds > 0 else 0.0
    reference = reference_flops_per_second(fm.shapes, batch_tokens, compute_dtype(model))
    return {
        "achieved_gflops": achieved / 1e9,
        "reference_gflops": reference / 1e9,
        "utilisation": achieved / reference if reference else 0.0,
        "flops_per_token": per_token,
    }
