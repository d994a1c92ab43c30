"""Where a QLoRA step's time goes on this backend: the quantized path, piece by piece.

    python bench/profile_qlora.py [MODEL] [--tokens 32] [--cap 60] [--json]

Takes the real shapes of MODEL (default ../shared/models/smollm2-135m-instruct-4bit: 30 layers of
576 -> 576/192/1536 linears, 4-bit group 32, and a tied 8-bit 49,152 x 576 embedding as the output
layer) and times, per token, each piece of a LoRA training step three ways: the weights
as stored (4-bit/8-bit, float16 scales), the same quantized weights with float32 scales, and
dequantized to float32 (what Lathe computes on a CPU):

  - forward of each linear shape (quantized matmul vs plain matmul);
  - forward + backward through a LoRA layer on that base (rank 8; the backward multiplies by the
    frozen base again, transposed, for the input gradient);
  - the output layer: the tied embedding used as a linear layer, forward + backward;
  - dequantizing the whole model once (what the float32 path pays at load).

A measurement that takes longer than --cap seconds for one call is reported from that one call
(on MLX's CPU backend a 4-bit matmul with float16 scales runs at a few MFLOP/s). The last table
adds the pieces up to a step of the whole model (30 layers + output layer) per token, each way.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODEL = ROOT.parent / "shared" / "models" / "smollm2-135m-instruct-4bit"
WAYS = ("stored", "float32 scales", "float32 dense")


def timed(fn, cap: float, min_seconds: float = 0.3) -> float:
    """Seconds per call of fn() (evaluated): one warm-up call, then repeated up to min_seconds;
    when the warm-up alone takes more than `cap`, that one call is the answer."""
    import mlx.core as mx

    start = time.perf_counter()
    mx.eval(fn())
    first = time.perf_counter() - start
    if first > cap:
        return first
    n, spent, start = 0, 0.0, time.perf_counter()
    while spent < min_seconds or n == 0:
        mx.eval(fn())
        n += 1
        spent = time.perf_counter() - start
    return spent / n


def variants(module):
    """(way, module) for the three ways of holding one quantized Linear/Embedding."""
    import mlx.core as mx
    import mlx.nn as nn

    out = [("stored", module)]
    cast = copy.copy(module)
    cast.scales = module.scales.astype(mx.float32)
    if getattr(module, "biases", None) is not None:
        cast.biases = module.biases.astype(mx.float32)
    out.append(("float32 scales", cast))
    weight = mx.dequantize(
        module.weight,
        module.scales,
        module.biases,
        module.group_size,
        module.bits,
        mode=getattr(module, "mode", "affine"),
    ).astype(mx.float32)
    dense = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    dense.weight = weight
    out.append(("float32 dense", dense))
    return out


def linear_pieces(module, tokens: dict, cap: float) -> dict:
    """{way: {"forward": s, "lora fwd+bwd": s}} per token for one linear layer; `tokens` gives the
    rows of each way's calls."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.tuner.lora import LoRALinear

    result = {}
    for way, base in variants(module):
        dtype = mx.float32 if way != "stored" else module.scales.dtype
        in_dims = base.weight.shape[1] * (32 // base.bits if hasattr(base, "bits") else 1)
        x = mx.random.normal((1, tokens[way], in_dims)).astype(dtype)
        mx.eval(x)
        forward = timed(lambda base=base, x=x: base(x), cap) / tokens[way]
        lora = LoRALinear.from_base(base, r=8, scale=20.0)
        lora.freeze(keys=["linear"], strict=False)
        lora.lora_b = mx.random.normal(lora.lora_b.shape) * 0.01

        def loss(model, x):
            return model(x).astype(mx.float32).sum()

        step = nn.value_and_grad(lora, loss)
        both = timed(lambda step=step, x=x, lora=lora: step(lora, x), cap) / tokens[way]
        result[way] = {"forward": forward, "lora fwd+bwd": both}
    return result


def head_pieces(embedding, tokens: dict, cap: float) -> dict:
    """{way: {"forward": s, "fwd+bwd": s}} for the tied embedding as the output layer (the input
    gradient flows back through it; the embedding itself is frozen)."""
    import mlx.core as mx
    import mlx.nn as nn

    result = {}
    for way, mod in variants(embedding):
        dtype = mx.float32 if way != "stored" else embedding.scales.dtype
        hidden = embedding.weight.shape[1] * 32 // embedding.bits
        x = mx.random.normal((1, tokens[way], hidden)).astype(dtype)
        mx.eval(x)
        if isinstance(mod, nn.Linear):

            def run(x, mod=mod):
                return mod(x)
        else:

            def run(x, mod=mod):
                return mod.as_linear(x)

        forward = timed(lambda x=x, run=run: run(x), cap) / tokens[way]
        grad = mx.value_and_grad(lambda x, run=run: run(x).astype(mx.float32).sum())
        both = timed(lambda x=x, grad=grad: grad(x), cap) / tokens[way]
        result[way] = {"forward": forward, "fwd+bwd": both}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=str(DEFAULT_MODEL))
    p.add_argument("--tokens", type=int, default=32, help="Rows per call (float32 scales, dense).")
    p.add_argument(
        "--stored-tokens",
        type=int,
        default=2,
        help="Rows per call for the weights as stored (slow on a CPU: minutes per call otherwise).",
    )
    p.add_argument("--cap", type=float, default=60.0, help="Seconds; see above.")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import dequantize_model, load

    load_avg = [round(x, 2) for x in os.getloadavg()]
    model, _ = load(a.model)
    layer = model.layers[0]
    linears = {name: m for name, m in layer.named_modules() if isinstance(m, nn.QuantizedLinear)}
    shapes: dict = {}  # (in, out) -> (count per layer, module)
    for m in linears.values():
        key = (m.weight.shape[1] * 32 // m.bits, m.weight.shape[0])
        count, _ = shapes.get(key, (0, m))
        shapes[key] = (count + 1, m)
    embedding = model.model.embed_tokens
    n_layers = len(model.layers)

    tokens = {"stored": a.stored_tokens, "float32 scales": a.tokens, "float32 dense": a.tokens}
    per_shape = {}
    for (i, o), (count, m) in sorted(shapes.items()):
        print(f"linear {i} -> {o} (x{count} per layer) ...", file=sys.stderr, flush=True)
        per_shape[f"{i}->{o}"] = {"count": count, **linear_pieces(m, tokens, a.cap)}
    print("output layer (tied embedding) ...", file=sys.stderr, flush=True)
    head = head_pieces(embedding, tokens, a.cap)
    start = time.perf_counter()
    dq = dequantize_model(model)
    mx.eval(dq.parameters())
    dequantize_s = time.perf_counter() - start

    # A step per token of the whole model: every layer's linears (LoRA fwd+bwd) + the output layer.
    step = {
        way: (
            n_layers * sum(v["count"] * v[way]["lora fwd+bwd"] for v in per_shape.values())
            + head[way]["fwd+bwd"]
        )
        for way in WAYS
    }
    result = {
        "model": a.model,
        "tokens_per_call": tokens,
        "load_average": load_avg,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "linears": per_shape,
        "output_layer": head,
        "dequantize_model_s": dequantize_s,
        "step_seconds_per_token": step,
    }
    if a.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{a.model}; rows per call {tokens}; times per token; MLX {mx.__version__} {result['device']}; "
        f"load average {load_avg} at the start, {result['load_average_end']} at the end"
    )
    print(f"\n| piece | {' | '.join(WAYS)} | stored / float32 dense |")
    print("|---|" + "---|" * (len(WAYS) + 1))
    rows = []
    for shape, v in per_shape.items():
        for piece in ("forward", "lora fwd+bwd"):
            rows.append((f"{shape} x{v['count']} {piece}", [v[w][piece] for w in WAYS]))
    for piece in ("forward", "fwd+bwd"):
        rows.append(
            (
                f"output layer (tied {embedding.bits}-bit embedding) {piece}",
                [head[w][piece] for w in WAYS],
            )
        )
    for name, vals in rows:
        print(
            f"| {name} | "
            + " | ".join(f"{1000 * x:.2f} ms" for x in vals)
            + f" | {vals[0] / vals[2]:.0f}x |"
        )
    print(f"\nDequantizing the whole model once (float16): {dequantize_s:.2f} s")
    print(
        "Step per token, all layers' LoRA linears fwd+bwd + output layer: "
        + ", ".join(f"{w} {1000 * step[w]:.1f} ms" for w in WAYS)
    )
    share = head["float32 dense"]["fwd+bwd"] / step["float32 dense"]
    print(f"Output layer share of that float32 step: {share:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
