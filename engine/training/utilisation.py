"""How close to the hardware a run is: training FLOPs against a matmul of the model's own shapes.

The reference is measured on the same machine in the same process: MLX multiplying matrices of
exactly the model's linear-layer shapes, the way the model multiplies them: a plain matmul in the
compute dtype for float layers, `mx.quantized_matmul` with the layer's bits, group size and scales
dtype for quantized ones (a 4-bit layer is held to what MLX's quantized kernel can do, not to a
float matmul it never runs). Utilisation = achieved training FLOP/s / reference FLOP/s. That number
means the same thing on an M3 Max GPU and on a 2-core CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn


@dataclass
class FlopModel:
    per_layer_linear: list[int]  # sum of in*out of the linear layers of each transformer block
    head: int  # hidden * vocab (the output projection, tied or not)
    attention_width: int  # heads * head_dim of the attention (for the QK^T and AV products)
    shapes: list[tuple[int, int]]  # distinct (in, out) linear shapes, for the reference matmul
    # (in, out) -> (bits, group_size, mode) for shapes the model multiplies quantized
    quantized: dict = field(default_factory=dict)
    # (in, out) -> how many times one forward pass multiplies that shape (every layer's q, k, v,
    # o, gate, up, down and the output layer), to weigh the reference like the model's own work
    counts: dict = field(default_factory=dict)

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


def _quantization(module) -> tuple[int, int, str] | None:
    linear = getattr(module, "linear", None)
    if linear is not None and isinstance(linear, nn.QuantizedLinear):
        module = linear
    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        return int(module.bits), int(module.group_size), getattr(module, "mode", "affine")
    return None


def _head_module(model):
    """The module that computes the logits: lm_head, or the tied embedding."""
    head = getattr(model, "lm_head", None)
    if head is not None:
        return head
    inner = getattr(model, "model", None)
    return getattr(inner, "embed_tokens", None) if inner is not None else None


def flop_model(model) -> FlopModel:
    """Count the model's matmul work from its modules (any mlx-lm architecture with `.layers`)."""
    per_layer = []
    shapes: set[tuple[int, int]] = set()
    quantized: dict = {}
    counts: dict = {}
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
                counts[d] = counts.get(d, 0) + 1
                q = _quantization(m)
                if q is not None:
                    quantized[d] = q
        per_layer.append(total)
    args = getattr(model, "args", None)
    hidden = getattr(args, "hidden_size", None)
    vocab = getattr(args, "vocab_size", None)
    heads = getattr(args, "num_attention_heads", None)
    head_dim = getattr(args, "head_dim", None) or ((hidden // heads) if hidden and heads else 0)
    head = (hidden or 0) * (vocab or 0)
    if hidden and vocab:
        shapes.add((hidden, vocab))
        counts[(hidden, vocab)] = counts.get((hidden, vocab), 0) + 1
        q = _quantization(_head_module(model))
        if q is not None:
            quantized[(hidden, vocab)] = q
    return FlopModel(per_layer, head, (heads or 0) * head_dim, sorted(shapes), quantized, counts)


def reference_flops_per_second(
    shapes: list[tuple[int, int]],
    tokens: int,
    dtype=mx.float32,
    seconds: float = 0.5,
    quantized: dict | None = None,
    counts: dict | None = None,
) -> float:
    """FLOP/s of `x @ w.T` on the model's shapes with `tokens` rows, measured now.

    A shape in `quantized` ((in, out) -> (bits, group_size, mode)) is multiplied with
    `mx.quantized_matmul` on a weight quantized that way, its scales in `dtype`; the others with a
    plain matmul in `dtype`. Each shape gets an equal share of `seconds` (at least one timed call
    each, the fastest call counting, so a very slow kernel, e.g. 4-bit with float16 scales on a CPU, costs a few calls, not a
    loop). The result is the FLOPs of one pass over the shapes over its time, each shape counted as
    often as `counts` says the model multiplies it (default once): a model's many small
    projections weigh as much in the reference as in its step, not as much as one output layer.
    """
    tokens = max(8, int(tokens))
    quantized = quantized or {}
    flops = seconds_per_pass = 0.0
    for i, o in shapes:
        x = mx.random.normal((tokens, i)).astype(dtype)
        w = mx.random.normal((o, i)).astype(dtype)
        q = quantized.get((i, o))
        if q is not None:
            bits, group_size, mode = q
            packed = mx.quantize(w, group_size=group_size, bits=bits, mode=mode)
            wq, scales, biases = packed[0], packed[1], (packed[2] if len(packed) > 2 else None)

            def call(x=x, wq=wq, scales=scales, biases=biases, g=group_size, b=bits, m=mode):
                return mx.quantized_matmul(
                    x, wq, scales, biases, transpose=True, group_size=g, bits=b, mode=m
                )

            mx.eval(x, wq, scales, *([biases] if biases is not None else []))
        else:

            def call(x=x, w=w):
                return x @ w.T

            mx.eval(x, w)
        start = time.perf_counter()
        mx.eval(call())  # warm-up; also the timing when one call already takes the whole share
        first = time.perf_counter() - start
        share = seconds / max(1, len(shapes))
        # The fastest of the timed calls: other processes only ever slow a call down, so the
        # best one is the closest to what the machine can do (an average moved by +-30% between
        # runs on a shared machine, and with it every utilisation figure).
        per_call = first
        if first < share:
            end = time.perf_counter() + share
            while True:
                start = time.perf_counter()
                mx.eval(call())
                stop = time.perf_counter()
                per_call = min(per_call, stop - start)
                if stop >= end:
                    break
        times = (counts or {}).get((i, o), 1)
        flops += 2.0 * tokens * i * o * times
        seconds_per_pass += per_call * times
    return flops / seconds_per_pass if seconds_per_pass > 0 else 0.0


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
    reference = reference_flops_per_second(
        fm.shapes, batch_tokens, compute_dtype(model), quantized=fm.quantized, counts=fm.counts
    )
    return {
        "achieved_gflops": achieved / 1e9,
        "reference_gflops": reference / 1e9,
        "utilisation": achieved / reference if reference else 0.0,
        "flops_per_token": per_token,
        "reference": "quantized matmul" if fm.quantized else "matmul",
    }


def run_utilisation(model, num_layers: int, config, state, train_set) -> dict:
    """`utilisation` of a finished run: its model, trained layers, tokens and seconds."""
    mean_length = sum(len(e) for e in train_set) / max(1, len(train_set))
    return utilisation(
        model,
        num_layers,
        config.lora.fine_tune_type == "full",
        state.processed_tokens,
        state.elapsed_seconds,
        mean_length,
        state.processed_tokens // max(1, state.step),
    )


def backend() -> str:
    """The MLX backend and device, e.g. "gpu (Metal)", "gpu (CUDA)" or "cpu"."""
    import mlx.core as mx

    device = mx.default_device()
    if device.type == mx.DeviceType.gpu:
        kind = "Metal" if mx.metal.is_available() else "CUDA"
        return f"gpu ({kind})"
    return "cpu"
