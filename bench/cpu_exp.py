"""MLX's CPU exp, and whether a faster one would speed up LoRA training here.

    python bench/cpu_exp.py [--model FOLDER] [--rounds 10]

On MLX's CPU backend (0.32.4, x86_64 wheel) exp runs one float at a time and calls libm's fmaf
out of line (`perf` shows `mlx::core::simd::exp<float, 1>` and `__fmaf_fma3`; bench/profile_cpu.py).
This measures, on this machine:

1. element-wise throughput: mx.exp, mx.sigmoid and nn.silu against a multiply, and against the
   classic single-precision exp (Cephes' expf: x = n ln 2 + r, a polynomial in r, 2^n written
   into the exponent bits) written as MLX operations and compiled, with its largest relative error;
2. one compiled LoRA training step of the bench model (8 x 72 and 2 x 1,024 tokens), with the
   model's SiLU as MLX computes it and as the polynomial exp computes it (same step otherwise, the
   two taken in turns), and the peak memory of each.

This is an experiment, not part of Lathe's engine: the result decides whether it should be.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOG2E = 1.4426950408889634
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4
LOW, HIGH = -87.33654, 88.3  # 0 below, inf from HIGH on (n stays in float32's exponent range)
POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 0.5)


def poly_exp(x):
    import mlx.core as mx

    c = mx.clip(x, LOW, HIGH)
    n = mx.floor(c * LOG2E + 0.5)
    r = c - n * LN2_HI - n * LN2_LO
    p = mx.array(POLY[0], mx.float32)
    for coefficient in POLY[1:]:
        p = p * r + coefficient
    y = (p * r * r + r + 1.0) * mx.left_shift(n.astype(mx.int32) + 127, 23).view(mx.float32)
    return mx.where(x >= HIGH, mx.inf, mx.where(x < LOW, 0.0, y))


def poly_silu():
    """SiLU with the polynomial exp and its own derivative (it keeps only x for the backward)."""
    import mlx.core as mx

    @mx.custom_function
    def silu(x):
        return x / (1.0 + poly_exp(-x))

    @silu.vjp
    def silu_vjp(primals, cotangent, output):
        x = primals[0] if isinstance(primals, (tuple, list)) else primals
        s = 1.0 / (1.0 + poly_exp(-x))
        return (cotangent * s * (1.0 + x * (1.0 - s)),)

    return silu


def _median_ms(fn, rounds: int = 20) -> float:
    import mlx.core as mx

    mx.eval(fn())
    times = []
    for _ in range(rounds):
        tic = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - tic)
    return statistics.median(times) * 1000


def elementwise() -> None:
    import mlx.core as mx
    import mlx.nn as nn

    x = mx.random.normal((1536, 1024))
    mx.eval(x)
    silu = poly_silu()
    fns = {
        "x * x": mx.compile(lambda x: x * x),
        "mx.exp": mx.compile(mx.exp),
        "mx.sigmoid": mx.compile(mx.sigmoid),
        "nn.silu": mx.compile(nn.silu),
        "polynomial exp, compiled": mx.compile(poly_exp),
        "SiLU with it, compiled": mx.compile(silu),
    }
    n = x.size
    print(f"element-wise, {n:,} float32 values:")
    for name, fn in fns.items():
        ms = _median_ms(lambda fn=fn: fn(x))
        print(f"  {name:28}{ms:8.2f} ms  {ms * 1e6 / n:6.2f} ns per value")
    grid = mx.linspace(-87.0, 88.0, 1_000_001)
    rel = mx.max(mx.abs(poly_exp(grid) - mx.exp(grid)) / mx.exp(grid)).item()
    print(f"  polynomial exp's largest relative error on [-87, 88]: {rel:.1e}")


def training_step(model_path: str, rows: int, width: int, rounds: int) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import mlx_lm.models.llama as llama
    import numpy as np
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    from engine.training.loss import masked_loss, select_positions

    model, _ = load(model_path)
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 8, "scale": 20.0, "dropout": 0.0})
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 1000, (rows, width)).astype(np.int32)
    weights = np.zeros((rows, width), np.float32)
    weights[:, width // 2 :] = 1
    sel = select_positions(weights)
    t, w = mx.array(tokens), mx.array(weights)
    s = None if sel is None else mx.array(sel)
    opt = optim.Adam(learning_rate=1e-5)
    value_and_grad = nn.value_and_grad(model, masked_loss)
    state = [model.state, opt.state, mx.random.state]

    def step():
        (value, _), grad = value_and_grad(model, t, w, None, None, s, "fused")
        opt.update(model, grad)
        return value

    original = llama.swiglu
    silu = poly_silu()
    steps = {}
    for name, swiglu in (("MLX SiLU", original), ("polynomial-exp SiLU", lambda g, x: silu(g) * x)):
        llama.swiglu = swiglu  # traced with it; the compiled step keeps it
        steps[name] = partial(mx.compile, inputs=state, outputs=state)(step)
        mx.eval(steps[name](), state)
    llama.swiglu = original
    times: dict = {k: [] for k in steps}
    peaks = {}
    for _ in range(rounds):
        for name, fn in steps.items():
            mx.reset_peak_memory()
            tic = time.perf_counter()
            mx.eval(fn(), state)
            times[name].append(time.perf_counter() - tic)
            peaks[name] = mx.get_peak_memory() / 1e6
    a, b = times.values()
    ratio = statistics.median(y / x for x, y in zip(a, b))
    print(f"compiled LoRA step, {rows} x {width} tokens ({rounds} rounds in turns):")
    for name in steps:
        ms = statistics.median(times[name]) * 1000
        print(f"  {name:28}{ms:8.1f} ms  peak {peaks[name]:6.0f} MB")
    print(f"  median of per-round ratios: {ratio:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="A llama model folder (default: the bench's tiny model).")
    p.add_argument("--rounds", type=int, default=10)
    a = p.parse_args()
    from bench.train_vs_mlx_lm import build_model, load_average

    print(load_average())
    elementwise()
    model = a.model or build_model(Path(tempfile.mkdtemp(prefix="lathe-exp-")), "tiny")
    training_step(model, 8, 72, a.rounds)
    training_step(model, 2, 1024, max(3, a.rounds // 3))
    print(load_average())


if __name__ == "__main__":
    main()
