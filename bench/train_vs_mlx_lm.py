"""Train the same model on the same data through `mlx_lm.lora` and through Lathe, in one run.

    python bench/train_vs_mlx_lm.py [--shape mixed|short|long] [--examples N] [--batch-size 8]
                                    [--size tiny|tiny-vocab|0.5b | --model PATH] [--packing auto|budget|pack|off]

Each trainer runs in its own process (so peak memory is its own) on identical settings: LoRA on
all layers, rank 8, scale 20, Adam at 1e-4, prompt masking on chat data, no validation, one epoch over the same
examples (Lathe with its defaults unless --packing says otherwise). Only the training
call is timed (model and data loading excluded). Prints wall time, trained tokens per second,
padding fraction, peak memory and utilisation (training FLOP/s over this machine's FLOP/s on a plain
matmul of the model's shapes, measured in the same process) for both.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = (
    "account fee transfer card bank money day euro branch limit app help savings rate loan "
    "interest statement payment cash deposit withdraw online mobile secure support"
).split()


SHAPES = {
    # shape: (default examples, max_seq_length, description)
    "mixed": (256, 1024, "chat, long-tailed lengths (~20 to ~700 tokens)"),
    "short": (2048, 256, "short chat turns (~15 to ~70 tokens)"),
    "long": (48, 1024, "documents near the context limit (~850 to ~1024 tokens)"),
}


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_data(folder: Path, n: int, seed: int = 0, shape: str = "mixed") -> Path:
    """A train.jsonl of `n` examples of the given shape (see SHAPES)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for _ in range(n):
        if shape == "long":
            rows.append({"text": _words(rng, rng.randint(800, 960)) + "."})
            continue
        if shape == "short":
            q, a = _words(rng, rng.randint(3, 15)) + "?", _words(rng, rng.randint(3, 40)) + "."
        else:
            q = _words(rng, rng.randint(4, 40)) + "?"
            a = _words(rng, min(600, int(rng.lognormvariate(3.8, 0.8)) + 5)) + "."
        rows.append(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
    with open(folder / "train.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return folder


def _is_chat(data: str) -> bool:
    """Prompt masking for chat data; text documents train on every token (mlx-lm refuses masking there)."""
    with open(Path(data) / "train.jsonl") as fh:
        return "messages" in json.loads(fh.readline())


def run_mlx_lm(model: str, data: str, iters: int, batch_size: int, max_seq: int) -> dict:
    import types

    import mlx.core as mx
    import mlx_lm.lora as lora
    import mlx_lm.tuner.trainer as trainer

    stats = {"real": 0, "padded": 0, "trained": 0}
    original_iterate = trainer.iterate_batches

    def counting_iterate(*args, **kwargs):
        for batch, lengths in original_iterate(*args, **kwargs):
            lens = lengths.tolist()
            stats["real"] += sum(e for _, e in lens)
            stats["padded"] += batch.size
            # mlx-lm's mask: steps in [offset, length] of the shifted targets.
            stats["trained"] += sum(e - o + 1 for o, e in lens) - len(lens)
            yield batch, lengths

    original_train = trainer.train

    def timed_train(*args, **kwargs):
        kwargs["iterate_batches"] = counting_iterate
        mx.reset_peak_memory()
        tic = time.perf_counter()
        original_train(*args, **kwargs)
        stats["seconds"] = time.perf_counter() - tic
        stats["peak_gb"] = mx.get_peak_memory() / 1e9
        from engine.perf import utilisation

        model = kwargs.get("model", args[0] if args else None)
        steps = max(1, iters)
        stats.update(
            utilisation(
                model,
                len(model.layers),
                False,
                stats["real"],
                stats["seconds"],
                stats["real"] / max(1, steps * batch_size),
                stats["real"] // steps,
            )
        )

    lora.train = timed_train
    args = dict(lora.CONFIG_DEFAULTS)
    args.update(
        model=model,
        data=data,
        train=True,
        iters=iters,
        batch_size=batch_size,
        num_layers=-1,
        learning_rate=1e-4,
        max_seq_length=max_seq,
        mask_prompt=_is_chat(data),
        steps_per_report=10_000,
        steps_per_eval=10_000_000,
        save_every=10_000_000,
        seed=0,
        val_batches=0,
        adapter_path=tempfile.mkdtemp(),
        lora_parameters={"rank": 8, "dropout": 0.0, "scale": 20.0},
    )
    with open(os.devnull, "w") as null:
        old = sys.stdout
        sys.stdout = null
        try:
            lora.run(types.SimpleNamespace(**args))
        finally:
            sys.stdout = old
    return stats


def run_lathe(
    model: str, data: str, iters: int, batch_size: int, max_seq: int, packing: str = "auto"
) -> dict:
    import mlx.core as mx

    import engine.trainer as trainer
    from engine import events
    from engine.config import RunConfig
    from engine.runs import create_run
    from engine.train import run

    stats: dict = {}
    original_train = trainer.train

    def timed_train(*args, **kwargs):
        mx.reset_peak_memory()
        tic = time.perf_counter()
        result = original_train(*args, **kwargs)
        stats["seconds"] = time.perf_counter() - tic
        stats["peak_gb"] = mx.get_peak_memory() / 1e9
        return result

    trainer.train = timed_train
    cfg = RunConfig()
    cfg.model.path, cfg.data.path = model, data
    cfg.data.max_seq_length, cfg.data.valid_fraction, cfg.data.mask_prompt = (
        max_seq,
        0.0,
        _is_chat(data),
    )
    cfg.data.packing = packing
    cfg.lora.num_layers, cfg.lora.rank, cfg.lora.scale = -1, 8, 20.0
    t = cfg.training
    t.iters, t.epochs, t.batch_size, t.learning_rate = None, 1.0, batch_size, 1e-4
    t.steps_per_report, t.steps_per_eval, t.save_every = 1, 10_000_000, 10_000_000
    rec = events.Recorder()
    run(cfg, create_run(cfg), rec)
    progress = rec.of("progress")
    errors = rec.of("error")
    if errors:
        raise SystemExit(f"Lathe run failed: {errors[0]['message']}")
    stats["trained"] = progress[-1]["trained_tokens"]
    pads = [e["padding_fraction"] for e in progress]
    stats["padding_fraction"] = sum(pads) / len(pads)
    summary = rec.of("finished")[0]["summary"]
    stats.update({k: summary[k] for k in ("utilisation", "achieved_gflops", "reference_gflops")})
    stats["packing"] = rec.of("started")[0]["config"]["batching"]
    stats["steps"] = summary["steps"]
    return stats


def child(
    which: str, model: str, data: str, iters: int, batch_size: int, max_seq: int, packing: str
) -> None:
    if which == "mlx_lm":
        stats = run_mlx_lm(model, data, iters, batch_size, max_seq)
    else:
        stats = run_lathe(model, data, iters, batch_size, max_seq, packing)
    import resource

    # The process's peak resident memory: MLX's active peak plus its buffer cache, Python, the data.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats["rss_gb"] = rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9
    print("RESULT " + json.dumps(stats))


# Model shapes for the benchmark. "tiny" runs on a 2-core CPU in minutes; its 8,192-entry output
# layer is ~25% of the model's work per token, about what a 0.5B model's 152k vocabulary costs it
# (the proportion decides how much skipping the output layer on masked tokens saves). "0.5b" is
# Qwen2.5-0.5B's shape (random weights, bfloat16), for a GPU.
SIZES = {
    "tiny": dict(
        arch="llama",
        hidden_size=384,
        num_layers=6,
        num_heads=6,
        num_kv_heads=2,
        intermediate_size=1024,
        model_vocab_size=8192,
    ),
    "tiny-vocab": dict(
        arch="llama",
        hidden_size=384,
        num_layers=6,
        num_heads=6,
        num_kv_heads=2,
        intermediate_size=1024,
    ),
    "0.5b": dict(
        arch="qwen2",
        hidden_size=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        intermediate_size=4864,
        model_vocab_size=151936,
        dtype="bfloat16",
    ),
}


def describe_size(size: str) -> str:
    c = SIZES[size]
    vocab = c.get("model_vocab_size") or "~600"
    return (
        f"{c['num_layers']}-layer, {c['hidden_size']}-wide {c['arch']} ({c.get('dtype', 'float32')}, random "
        f"weights, vocabulary {vocab})"
    )


def build_model(work: Path, size: str = "tiny") -> str:
    from engine.tinymodel import build_tiny_model

    return str(
        build_tiny_model(
            work / f"model-{size}",
            vocab_size=1024,
            max_position_embeddings=2048,
            extra_texts=[" ".join(WORDS)] * 20,
            **SIZES[size],
        )
    )


def compare(
    model: str,
    shape: str,
    examples: int | None = None,
    batch_size: int = 8,
    work: Path | None = None,
    packing: str = "auto",
) -> dict:
    """Run both trainers on one dataset shape; returns {"mlx_lm": stats, "lathe": stats, ...}."""
    n_default, max_seq, _ = SHAPES[shape]
    n = examples or n_default
    work = work or Path(tempfile.mkdtemp(prefix="lathe-bench-"))
    data = make_data(work / f"data-{shape}", n, shape=shape)
    iters = n // batch_size  # one epoch for mlx-lm (it drops a last partial batch)
    env = dict(os.environ, LATHE_HOME=str(work / "home"))
    blas = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
    if sys.platform.startswith("linux") and Path(blas).exists() and "LD_PRELOAD" not in env:
        env["LD_PRELOAD"] = blas  # both trainers get the same BLAS
    results = {}
    for which in ("mlx_lm", "lathe"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            which,
            "--model",
            model,
            "--data",
            str(data),
            "--iters",
            str(iters),
            "--batch-size",
            str(batch_size),
            "--max-seq-length",
            str(max_seq),
            "--packing",
            packing,
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{which} failed:\n{out.stderr[-3000:]}")
        results[which] = json.loads(line[7:])
    m = results["mlx_lm"]
    m["padding_fraction"] = 1 - m["real"] / m["padded"]
    results.update(shape=shape, examples=n, batch_size=batch_size, max_seq_length=max_seq)
    return results


def print_table(rows: list[dict], with_examples: bool = False, file=None) -> None:
    print = partial(builtins.print, file=file or sys.stdout, flush=True)
    ex = f"{'examples':>9}  " if with_examples else ""
    print(
        f"{'shape':8}{ex}{'trainer':15}{'wall s':>8}{'trained tok/s':>15}{'padding':>9}{'peak GB':>9}"
        f"{'RSS GB':>8}{'utilisation':>13}{'wall vs mlx_lm':>16}"
    )
    for r in rows:
        m = r["mlx_lm"]
        for name, x in (("mlx_lm.lora", m), (f"Lathe/{r['lathe']['packing']}", r["lathe"])):
            ratio = f"{x['seconds'] / m['seconds']:.2f}x" if name != "mlx_lm.lora" else ""
            n = f"{r['examples']:>9}  " if with_examples else ""
            print(
                f"{r['shape']:8}{n}{name:15}{x['seconds']:>8.1f}{x['trained'] / x['seconds']:>15.0f}"
                f"{x['padding_fraction']:>9.1%}{x['peak_gb']:>9.3f}{x.get('rss_gb', 0):>8.2f}"
                f"{x['utilisation']:>13.1%}{ratio:>16}"
            )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", help="Model folder (default: one built here, see --size).")
    p.add_argument(
        "--size", choices=sorted(SIZES), default="tiny", help="Shape of the model built here."
    )
    p.add_argument(
        "--packing", default="auto", help="Lathe's data.packing (auto, budget, pack, off)."
    )
    p.add_argument("--shape", choices=sorted(SHAPES), default="mixed")
    p.add_argument("--examples", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-length", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--child", choices=["mlx_lm", "lathe"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.model, a.data, a.iters, a.batch_size, a.max_seq_length, a.packing)
        return
    work = Path(tempfile.mkdtemp(prefix="lathe-bench-"))
    model = a.model or build_model(work, a.size)
    r = compare(model, a.shape, a.examples, a.batch_size, work, a.packing)
    import platform

    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} cores; model {model}"
        + ("" if a.model else f" ({describe_size(a.size)})")
    )
    print(
        f"Data: {r['examples']} examples, {SHAPES[a.shape][2]}; batch {a.batch_size}, one epoch, "
        "LoRA rank 8 on all layers, prompt masking on, same settings for both.\n"
    )
    print_table([r])
    m, lt = r["mlx_lm"], r["lathe"]
    print(
        f"\nLathe wall time: {lt['seconds'] / m['seconds']:.2f}x mlx_lm's (target <= 0.6x); "
        f"peak memory {lt['peak_gb'] / m['peak_gb']:.2f}x (target <= 1.0x); Lathe batching: {lt['packing']}."
    )
    print(
        "Trained tokens differ slightly: mlx-lm also trains each example to predict one padding token."
    )


if __name__ == "__main__":
    main()
