"""How fast is one LoRA training step on MLX's CPU backend, by how the frozen base is stored?

`python -m bench.cpu_precision [MODEL] [--variants a,b,c,d,e] [--batch 4] [--timeout 600]`

Loads the model (by default ../shared/models/smollm2-135m-instruct-4bit) four ways and times one
forward + backward + optimizer update of a LoRA step (rank 8, every layer, a batch of the bundled
bank-support conversations) after one untimed warm-up step, each variant in its own process:
  a: the folder as it is (4-bit, float16 scales and biases)
  b: still 4-bit, scales and biases cast to float32
  c: dequantized to float32
  d: dequantized to bfloat16
  e: dequantized to float16
A variant that does not finish within --timeout seconds is reported as such. `--matmul` instead
times one of the model's layers (576 -> 1536, 64 tokens) forward, dense and 4-bit, per dtype. These
are the measurements behind engine.models.precision's choice on the CPU backend.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT.parent / "shared" / "models" / "smollm2-135m-instruct-4bit"
NAMES = {
    "a": "4-bit, float16 scales (as is)",
    "b": "4-bit, float32 scales",
    "c": "dequantized float32",
    "d": "dequantized bfloat16",
    "e": "dequantized float16",
}


def _one(model_path: str, variant: str, batch: int, steps: int) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_map
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import dequantize_model, load

    from engine.data import load_splits
    from engine.encode import Encoder

    t0 = time.perf_counter()
    model, tokenizer = load(model_path)
    if variant == "b":

        def cast(m):
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
                m.scales = m.scales.astype(mx.float32)
                if getattr(m, "biases", None) is not None:
                    m.biases = m.biases.astype(mx.float32)

        for _, m in model.named_modules():
            cast(m)
    elif variant in "cde":
        dtype = {"c": mx.float32, "d": mx.bfloat16, "e": mx.float16}[variant]
        model = dequantize_model(model)
        model.update(tree_map(lambda p: p.astype(dtype), model.parameters()))
    mx.eval(model.parameters())
    load_s = time.perf_counter() - t0

    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 8, "scale": 20.0, "dropout": 0.0})
    splits = load_splits(str(ROOT / "resources" / "samples" / "bank-support"))
    enc = Encoder(tokenizer, mask_prompt=True, max_seq_length=512)
    examples = [enc.encode(r) for r in splits.train[:batch]]
    width = max(len(e.tokens) for e in examples)
    width = -(-width // 8) * 8
    tokens = np.zeros((batch, width), np.int32)
    weights = np.zeros((batch, width), np.float32)
    for i, e in enumerate(examples):
        tokens[i, : len(e.tokens)] = e.tokens
        weights[i, : len(e.weights)] = e.weights
    x, y, w = mx.array(tokens[:, :-1]), mx.array(tokens[:, 1:]), mx.array(weights[:, 1:])

    def loss_fn(m):
        logits = m(x).astype(mx.float32)
        ce = nn.losses.cross_entropy(logits, y) * w
        return ce.sum() / w.sum()

    opt = optim.Adam(learning_rate=1e-4)
    step = nn.value_and_grad(model, loss_fn)
    times, losses = [], []
    for _ in range(steps + 1):
        s = time.perf_counter()
        loss, grads = step(model)
        opt.update(model, grads)
        mx.eval(loss, model.trainable_parameters(), opt.state)
        times.append(time.perf_counter() - s)
        losses.append(float(loss))
    return {
        "variant": variant,
        "what": NAMES[variant],
        "load_s": round(load_s, 2),
        "first_step_s": round(times[0], 2),
        "step_s": round(min(times[1:]), 2),
        "tokens": int(batch * (width - 1)),
        "loss": round(losses[0], 4),
        "peak_gb": round(mx.get_peak_memory() / 1e9, 3),
    }


def matmul_table() -> None:
    """One linear layer's forward, dense and 4-bit quantized (scales in the same dtype), per dtype."""
    import mlx.core as mx
    import mlx.nn as nn

    x = mx.random.normal((64, 576))
    print("| dtype | dense ms | 4-bit ms |")
    print("|---|---|---|")
    for name in ("float32", "float16", "bfloat16"):
        dt = getattr(mx, name)
        dense = nn.Linear(576, 1536)
        dense.weight = dense.weight.astype(dt)
        quant = nn.QuantizedLinear.from_linear(dense, 32, 4)
        quant.scales, quant.biases = quant.scales.astype(dt), quant.biases.astype(dt)
        xx = x.astype(dt)
        row = []
        for layer in (dense, quant):
            mx.eval(layer(xx))
            t, n = time.perf_counter(), 0
            while time.perf_counter() - t < 2 and n < 50:
                mx.eval(layer(xx))
                n += 1
            row.append(f"{(time.perf_counter() - t) / n * 1000:.1f}")
        print(f"| {name} | {row[0]} | {row[1]} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default=str(DEFAULT_MODEL))
    p.add_argument("--variants", default="a,b,c,d,e")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up step")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--matmul", action="store_true", help="time one layer's matmul per dtype")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.matmul:
        matmul_table()
        return
    if args.one:
        print(json.dumps(_one(args.model, args.one, args.batch, args.steps)))
        return
    print(f"model {args.model}, batch {args.batch}, LoRA rank 8 on every layer")
    print("| variant | load s | first step s | step s | tokens | loss | peak GB |")
    print("|---|---|---|---|---|---|---|")
    for v in args.variants.split(","):
        cmd = [sys.executable, "-m", "bench.cpu_precision", args.model, "--one", v]
        cmd += ["--batch", str(args.batch), "--steps", str(args.steps)]
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, check=True
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"| {r['what']} | {r['load_s']} | {r['first_step_s']} | {r['step_s']} | "
                f"{r['tokens']} | {r['loss']} | {r['peak_gb']} |",
                flush=True,
            )
        except subprocess.TimeoutExpired:
            print(f"| {NAMES[v]} | | > {args.timeout:.0f} s (stopped) | | | | |", flush=True)
        except subprocess.CalledProcessError as exc:
            print(f"| {NAMES[v]} | failed: {exc.stderr.strip().splitlines()[-1]} |", flush=True)


if __name__ == "__main__":
    main()
