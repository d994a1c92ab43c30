"""A LoRA training step with the batch in one piece on one stream against two groups of rows on two
CPU streams (engine.training.parts), on the bench's model, in one process.

    python bench/two_streams.py [--rows 8] [--length 1024] [--modes one,two] [--compiled]

Prints each mode's median step time and the process's CPU use during the timed steps (200% is
both cores of the 2-core machine busy). "one": OpenBLAS at its default threads, one stream, as
before the change; "two": OpenBLAS at one thread per call, two streams. MLX reads its evaluation
order (MLX_BFS_MAX_WIDTH) once, so run the script twice to compare orders:

    MLX_BFS_MAX_WIDTH=20 python bench/two_streams.py        (MLX's default: the streams take turns)
    python bench/two_streams.py                              (the worker's setting, breadth-first)

Needs OpenBLAS preloaded (LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3) for
the thread setting to mean anything.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--modes", default="one,two")
    p.add_argument("--compiled", action="store_true", help="time compiled steps (else eager)")
    p.add_argument("--steps", type=int, default=4)
    a = p.parse_args()
    from engine.training.parts import EVAL_WIDTH

    os.environ.setdefault("MLX_BFS_MAX_WIDTH", EVAL_WIDTH)  # before MLX's first evaluation

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.utils import load

    from bench.train_vs_mlx_lm import build_model
    from engine import platform
    from engine.batching import Batch
    from engine.training import attention, parts
    from engine.training.loss import masked_loss
    from engine.training.method import add_adapters

    model, _ = load(build_model(Path(tempfile.mkdtemp(prefix="lathe-streams-"))))
    add_adapters(model, "lora", -1, {"rank": 8, "dropout": 0.0, "scale": 20.0})
    rng = np.random.default_rng(0)
    rows, length = a.rows, a.length
    lengths = rng.integers(int(length * 0.85), length + 1, rows)
    tokens = np.zeros((rows, length), np.int32)
    weights = np.zeros((rows, length), np.float32)
    for r, n in enumerate(lengths):
        tokens[r, :n] = rng.integers(3, 1000, n)
        weights[r, 1:n] = 1
    batch = Batch(tokens, weights, lengths.astype(np.int32), None, examples=rows)
    denom = mx.array(float(weights[:, 1:].sum()))
    optimizer = optim.Adam(learning_rate=1e-5)
    state = [model.state, optimizer.state, mx.random.state]
    streams = [mx.default_stream(mx.cpu), mx.new_stream(mx.cpu)]
    default_threads = platform.blas_threads()

    def step_for(n: int):
        def loss(groups):
            total = None
            for stream, group in zip(streams[:n], groups):
                with mx.stream(stream):
                    value, _ = masked_loss(model, *group[:3], denom, group[3], "fused")
                total = value if total is None else total + value
            return total

        value_and_grad = nn.value_and_grad(model, loss)

        def step(groups):
            value, grad = value_and_grad(groups)
            optimizer.update(model, grad)
            return value

        return partial(mx.compile, inputs=state, outputs=state)(step) if a.compiled else step

    print(
        f"{rows} x {length} tokens, {'compiled' if a.compiled else 'eager'} steps, "
        f"MLX_BFS_MAX_WIDTH={os.environ['MLX_BFS_MAX_WIDTH']}, OpenBLAS threads {default_threads}"
    )
    with attention.blocked(model):
        for mode in a.modes.split(","):
            n = 2 if mode == "two" else 1
            if default_threads is not None:
                platform.set_blas_threads(1 if n == 2 else default_threads)
            groups = parts.arrays(parts.split_rows(batch, n, select_outputs=False))
            step = step_for(n)
            mx.eval(step(groups), state)  # warm-up (and tracing)
            times = []
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            for _ in range(a.steps):
                tic = time.perf_counter()
                mx.eval(step(groups), state)
                times.append(time.perf_counter() - tic)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            print(
                f"{mode:4s} median step {1000 * float(np.median(times)):8.1f} ms, "
                f"CPU {100 * cpu / wall:4.0f}%, peak {mx.get_peak_memory() / 1e9:.2f} GB"
            )
            mx.reset_peak_memory()


if __name__ == "__main__":
    main()
