"""Evaluation speed: Lathe's validation pass against its own training forward pass and mlx-lm's.

    python bench/eval_speed.py [--shape mixed|short|long] [--examples N] [--size tiny|tiny-vocab|0.5b]

The issue this answers: evaluation should be batched and no slower per token than the forward pass
of training. On the same model (LoRA rank 8 on all layers) and the same examples, one process measures:

- Lathe's `evaluate` over its fixed validation batches (grouped by length, compiled, the output
  layer on trained positions only), the first pass (which traces each batch shape) and the faster
  of two later ones;
- the forward pass of Lathe's training steps over the same examples in training batches (the loss
  only, compiled as the trainer compiles it, no gradient), the same way;
- mlx-lm's `tuner.trainer.evaluate` over the same examples (its batches, eager, as `mlx_lm.lora`
  runs it).

Prints real tokens per second for each. Timings include everything from batch to loss value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train_vs_mlx_lm import SHAPES, SIZES, build_model, describe_size, make_data  # noqa: E402


def measure(model_path: str, data: Path, batch_size: int, max_seq: int) -> dict:
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.tuner.datasets import CacheDataset, create_dataset
    from mlx_lm.tuner.trainer import evaluate as mlx_lm_evaluate
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from engine.batching import collate, fixed_eval_batches, plan_epoch
    from engine.encode import Encoder
    from engine.training.loop import compiled_loss, evaluate
    from engine.training.loss import masked_loss, output_head_supported, select_positions

    records = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    chat = "messages" in records[0]
    model, tokenizer = mlx_lm.load(model_path)
    model.freeze()
    mx.random.seed(0)
    linear_to_lora_layers(model, len(model.layers), {"rank": 8, "dropout": 0.0, "scale": 20.0})
    mx.eval(model.parameters())

    encoder = Encoder(tokenizer, mask_prompt=chat, max_seq_length=max_seq)
    encoded = [e for e in (encoder.encode(r) for r in records) if e.trained_tokens > 0]
    real = sum(len(e.tokens) for e in encoded)
    out: dict = {"examples": len(encoded), "real_tokens": real}

    # Lathe's evaluation, as the trainer runs it.
    select = output_head_supported(model, encoded[0].tokens)
    batches = fixed_eval_batches(encoded, batch_size, -1, 0, 8, max_seq)
    fn = compiled_loss(model, masked_loss, "split" if select else "full")
    prepared: dict = {}

    def lathe_eval():
        model.eval()
        out["lathe_eval_loss"] = evaluate(
            model, batches, fn=fn, select_outputs=select, prepared=prepared
        )

    # The forward pass of Lathe's training steps over the same examples (loss only, no gradient).
    plan = plan_epoch([len(e.tokens) for e in encoded], batch_size, 0, 0)
    train_batches = [collate([encoded[i] for i in item], 8, max_seq, batch_size) for item in plan]
    forward = mx.compile(
        lambda t, w, s: masked_loss(model, t, w, None, None, s)[0], inputs=[model.state]
    )

    def train_forward():
        model.train()
        for b in train_batches:
            sel = select_positions(b.weights) if select else None
            mx.eval(
                forward(
                    mx.array(b.tokens), mx.array(b.weights), None if sel is None else mx.array(sel)
                )
            )

    # First passes trace every batch shape; then two rounds, alternating, and the faster of each
    # (this machine's speed drifts by several percent within a minute).
    for name, fun in (("lathe_eval", lathe_eval), ("train_forward", train_forward)):
        tic = time.perf_counter()
        fun()
        out[name + "_first_seconds"] = time.perf_counter() - tic
    for _ in range(2):
        for name, fun in (("train_forward", train_forward), ("lathe_eval", lathe_eval)):
            tic = time.perf_counter()
            fun()
            seconds = time.perf_counter() - tic
            out[name + "_seconds"] = min(seconds, out.get(name + "_seconds", seconds))

    # mlx-lm's evaluation of the same examples.
    config = argparse.Namespace(mask_prompt=chat)
    dataset = CacheDataset(create_dataset(records, tokenizer, config))
    tic = time.perf_counter()
    out["mlx_lm_eval_loss"] = mlx_lm_evaluate(
        model, dataset, batch_size=batch_size, num_batches=-1, max_seq_length=max_seq
    )
    out["mlx_lm_eval_seconds"] = time.perf_counter() - tic
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="Model folder (default: one built here, see --size).")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--shape", choices=sorted(SHAPES), default="mixed")
    p.add_argument("--examples", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lathe-bench-eval-"))
    model = a.model or build_model(work, a.size)
    max_seq = SHAPES[a.shape][1]
    data = make_data(work / "data", a.examples, shape=a.shape)
    r = measure(model, data, a.batch_size, max_seq)
    import platform

    import mlx.core as mx

    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, MLX {mx.__version__} ({mx.default_device()})"
    )
    print(
        f"Model: {model}"
        + ("" if a.model else f" ({describe_size(a.size)})")
        + ", LoRA rank 8 on all layers"
    )
    print(
        f"Data: {r['examples']} examples ({SHAPES[a.shape][2]}), {r['real_tokens']} tokens, batch {a.batch_size}\n"
    )
    n = r["real_tokens"]
    rows = [
        ("Lathe evaluate, first pass (traces shapes)", r["lathe_eval_first_seconds"]),
        ("Lathe evaluate", r["lathe_eval_seconds"]),
        ("Lathe training forward pass, first", r["train_forward_first_seconds"]),
        ("Lathe training forward pass", r["train_forward_seconds"]),
        ("mlx_lm evaluate", r["mlx_lm_eval_seconds"]),
    ]
    print(f"{'':46}{'seconds':>9}{'tokens/s':>10}")
    for name, seconds in rows:
        print(f"{name:46}{seconds:>9.2f}{n / seconds:>10.0f}")
    ratio = r["train_forward_seconds"] / r["lathe_eval_seconds"]
    print(
        f"\nLathe evaluation runs at {ratio:.2f}x the per-token speed of its training forward pass "
        f"(target >= 1.0) and {r['mlx_lm_eval_seconds'] / r['lathe_eval_seconds']:.2f}x mlx_lm's evaluation."
    )
    print(
        f"Losses: Lathe {r['lathe_eval_loss']:.4f}, mlx_lm {r['mlx_lm_eval_loss']:.4f} (mlx-lm also scores "
        "each example's prediction of one padding token)."
    )


if __name__ == "__main__":
    main()
