"""Why Lathe's validation loss after N steps differs from mlx_lm.lora's: one factor at a time.

    python bench/val_parity.py MODEL DATA [--variants mlx+mlx,lathe+lathe,mlx+lathe,lathe+mlx]
                               [--seeds 0,1,2] [--window 64]

MODEL, DATA: a model folder and a bench data folder (bench/train_vs_mlx_lm.py's make_data:
train.jsonl, eval/valid.jsonl). Every variant starts from the same LoRA draw (MLX seeded right
before linear_to_lora_layers, as mlx_lm.lora does), takes one epoch of batch-8 Adam steps at 1e-4
(eager, in this process), and is scored with the bench's validation loss (real tokens only).
A variant is BATCHING+LOSS:

  BATCHING  mlx: mlx_lm's iterate_batches (unsorted groups of 8, permuted);
            lathe: engine.batching.plan_epoch (sorted by token length in windows of --window
            batches, permuted), padded to multiples of 8.
  LOSS      mlx: mlx-lm's default loss (also scores the padding token after each example);
            lathe: real tokens only, each batch divided by its own trained tokens;
            tokmean: real tokens only, every batch divided by the epoch's mean trained tokens
            per batch (each token weighs the same in every batch).

Prints one JSON line per (variant, seed). Timing-free: run it on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--variants", default="mlx+mlx,lathe+lathe,mlx+lathe,lathe+mlx")
    p.add_argument("--seeds", default="0")
    p.add_argument("--window", type=int, help="engine.batching.GROUP_WINDOW_BATCHES")
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
    from mlx_lm.tuner.trainer import default_loss, evaluate, iterate_batches
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    import engine.batching as eb
    from bench.train_vs_mlx_lm import real_token_loss

    if a.window:
        eb.GROUP_WINDOW_BATCHES = a.window
    data, bs = Path(a.data), a.batch_size
    cfg = types.SimpleNamespace(mask_prompt=True)
    _, tok = load(a.model, lazy=True)
    train, _, _ = load_local_dataset(data, tok, cfg)
    _, valid, _ = load_local_dataset(data / "eval", tok, cfg)
    train, valid = CacheDataset(train), CacheDataset(valid)
    items = [train[i] for i in range(len(train))]
    mean_tokens = sum(len(t) - o for t, o in items) / (len(items) / bs)

    def lathe_batches(seed):
        for idx in eb.plan_epoch([len(t) for t, _ in items], bs, seed, 0):
            rows = [items[i] for i in idx]
            width = -(-max(len(t) for t, _ in rows) // 8) * 8
            arr = np.zeros((len(rows), width), np.int32)
            for r, (t, _) in enumerate(rows):
                arr[r, : len(t)] = t
            yield mx.array(arr), mx.array([[o, len(t)] for t, o in rows])

    def mlx_batches(seed):
        it = iterate_batches(train, bs, 1 << 20, seed=seed)
        for _ in range(len(train) // bs):
            yield next(it)

    def tokmean(model, batch, lengths):
        value, n = real_token_loss(model, batch, lengths)
        return value * n / mean_tokens, n

    losses = {"mlx": default_loss, "lathe": real_token_loss, "tokmean": tokmean}
    for seed in (int(s) for s in a.seeds.split(",")):
        for variant in a.variants.split(","):
            batching, loss = variant.split("+")
            model, _ = load(a.model)
            mx.random.seed(seed)
            model.freeze()
            linear_to_lora_layers(
                model, len(model.layers), {"rank": 8, "scale": 20.0, "dropout": 0.0}
            )
            opt = optim.Adam(learning_rate=1e-4)
            value_and_grad = nn.value_and_grad(model, losses[loss])
            tic, steps = time.time(), 0
            batches = mlx_batches(seed) if batching == "mlx" else lathe_batches(seed)
            for b, lengths in batches:
                _, grad = value_and_grad(model, b, lengths)
                opt.update(model, grad)
                mx.eval(model.parameters(), opt.state)
                steps += 1
            val = evaluate(
                model,
                valid,
                batch_size=4,
                num_batches=-1,
                max_seq_length=1 << 20,
                loss=real_token_loss,
            )
            print(
                json.dumps(
                    {
                        "variant": variant,
                        "seed": seed,
                        "window": eb.GROUP_WINDOW_BATCHES,
                        "steps": steps,
                        "val_loss": round(val, 4),
                        "seconds": round(time.time() - tic),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
