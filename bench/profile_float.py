"""Where a float LoRA training step's time goes on this machine, and what utilisation it reaches.

    python bench/profile_float.py [--size tiny] [--shapes short,mixed,long] [--seconds 2]

Builds the bench's model (bench/train_vs_mlx_lm.py SIZES), adds LoRA rank 8 to every layer, and
for one batch typical of each shape (short: 8 x 48 tokens, mixed: 8 x 200, long: 8 x 1024; half of
each chat row a masked prompt, as prompt masking makes it) times, per step:

  - fwd: the loss alone (Lathe's masked_loss: output layer on trained positions, in chunks);
  - fwd+bwd: loss and LoRA gradients, eager;
  - step eager / step compiled: gradients and the Adam update (engine.training.loop step, compiled
    with the model, optimizer and random state as in `train`);
  - the same compiled step with the output layer on every position ("full" head, as mlx-lm runs it);
  - the reference: engine.training.utilisation's plain matmul of the model's shapes at the batch's token count.

The variants are timed in turns (one call of each per round, medians), so load changes hit all
alike.

Utilisation is engine.training.utilisation's: training FLOPs per token (the model's matmuls, forward and
backward) x tokens / seconds / reference FLOP/s. Reports the machine's load beside the numbers;
on a shared machine read the ratios within one run, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCHES = {"short": (8, 48, 0.5), "mixed": (8, 200, 0.2), "long": (8, 1024, 0.0)}


def interleaved(fns: dict, seconds: float) -> dict:
    """Median seconds per call of each fn, the calls taken in turns (one of each per round), so
    that a change of the machine's load hits every variant alike: on a shared machine the ratios
    between variants hold where the absolute times do not."""
    import statistics

    import mlx.core as mx

    for fn in fns.values():
        mx.eval(fn())  # warm-up (and trace, for compiled functions)
    times: dict = {k: [] for k in fns}
    start = time.perf_counter()
    while len(times[next(iter(fns))]) < 3 or time.perf_counter() - start < seconds * len(fns):
        for k, fn in fns.items():
            tic = time.perf_counter()
            mx.eval(fn())
            times[k].append(time.perf_counter() - tic)
    return {k: statistics.median(v) for k, v in times.items()}


def profile(model_path: str, shape: str, seconds: float) -> dict:
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    from engine.training.loss import masked_loss, select_positions, training_head
    from engine.training.utilisation import flop_model, reference_flops_per_second

    model, _ = load(model_path)
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 8, "scale": 20.0, "dropout": 0.0})
    rows, width, prompt = BATCHES[shape]
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 1000, (rows, width)).astype(np.int32)
    weights = np.zeros((rows, width), np.float32)
    weights[:, int(width * prompt) :] = 1
    head = training_head(model, tokens[0].tolist())
    sel = select_positions(weights) if head != "full" else None
    t, w = mx.array(tokens), mx.array(weights)
    s = None if sel is None else mx.array(sel)
    denom = mx.array(float(weights[:, 1:].sum()))
    opt = optim.Adam(learning_rate=1e-5)
    vg = nn.value_and_grad(model, masked_loss)
    state = [model.state, opt.state, mx.random.state]

    def step(t, w, s, head):
        (value, _), grad = vg(model, t, w, None, denom, s, head)
        opt.update(model, grad)
        return value

    compiled = partial(mx.compile, inputs=state, outputs=state)(step)
    compiled_full = partial(mx.compile, inputs=state, outputs=state)(
        lambda t, w: step(t, w, None, "full")
    )
    h = "fused" if head == "fused" else "auto"
    out = interleaved(
        {
            "fwd": lambda: masked_loss(model, t, w, None, denom, s, h)[0],
            "fwd+bwd": lambda: vg(model, t, w, None, denom, s, h),
            "step eager": lambda: (step(t, w, s, h), state),
            "step compiled": lambda: (compiled(t, w, s, h), state),
            "step compiled, full head": lambda: (compiled_full(t, w), state),
        },
        seconds,
    )
    fm = flop_model(model)
    n_tokens = rows * width
    per_token = fm.training_flops_per_token(len(model.layers), context=width / 2)
    ref = reference_flops_per_second(fm.shapes, n_tokens, mx.float32)
    out["reference GFLOP/s"] = ref / 1e9
    out["utilisation"] = {
        k: per_token * n_tokens / v / ref for k, v in out.items() if k.startswith("step")
    }
    # The reference shape by shape, and the output layer's share of the work
    per_shape = {}
    for i, o in fm.shapes:
        per_shape[f"{i}x{o}"] = reference_flops_per_second([(i, o)], n_tokens, mx.float32) / 1e9
    out["reference by shape GFLOP/s"] = per_shape
    out["head share of FLOPs"] = 4 * fm.head / per_token
    out["tokens"] = n_tokens
    out["head"] = head
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="tiny")
    p.add_argument("--model", help="A model folder instead of building --size.")
    p.add_argument("--shapes", default="short,mixed,long")
    p.add_argument("--seconds", type=float, default=2.0, help="Timing per measurement.")
    a = p.parse_args()
    from bench.train_vs_mlx_lm import build_model, load_average

    model = a.model or build_model(Path(tempfile.mkdtemp(prefix="lathe-prof-")), a.size)
    print(f"{load_average()} at the start; {os.cpu_count()} cores", flush=True)
    for shape in a.shapes.split(","):
        r = profile(model, shape, a.seconds)
        rows, width, _ = BATCHES[shape]
        print(f"\n{shape}: batch {rows} x {width} ({r['tokens']} tokens), head {r['head']}")
        for k in ("fwd", "fwd+bwd", "step eager", "step compiled", "step compiled, full head"):
            util = r["utilisation"].get(k)
            print(
                f"  {k:26}{r[k] * 1000:9.1f} ms"
                + (f"   utilisation {util:.0%}" if util is not None else "")
            )
        print(f"  reference {r['reference GFLOP/s']:.1f} GFLOP/s; by shape:", end="")
        print(", ".join(f" {k} {v:.1f}" for k, v in r["reference by shape GFLOP/s"].items()))
        print(f"  output layer: {r['head share of FLOPs']:.0%} of the step's FLOPs")
        print(f"  {load_average()}", flush=True)


if __name__ == "__main__":
    main()
