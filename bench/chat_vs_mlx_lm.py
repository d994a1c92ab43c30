"""Lathe's chat against mlx-lm's own generation: tokens per second and time to first token.

Both sides run the same model, the same adapter and the same prompt tokens, greedy, in one process,
interleaved (Lathe first, then mlx-lm first, ...) so that drift in the machine's speed hits both alike.
Lathe runs with its adapter switched on in a model it loaded once (the chat page's "tuned" side);
mlx-lm runs a model loaded with `adapter_path`, as `mlx_lm.generate --adapter-path` does.

    python bench/chat_vs_mlx_lm.py                 # a random-weight Llama, hidden 512, 8 layers
    python bench/chat_vs_mlx_lm.py --model PATH --adapter RUN[:STEP]
    python bench/chat_vs_mlx_lm.py --json
    python bench/chat_vs_mlx_lm.py --model ../shared/models/smollm2-135m-instruct-4bit \
        --random-adapter --base float32 --max-tokens 64 --repeats 6

`--random-adapter` gives `--model` a LoRA adapter (rank --rank on every layer, small random
`lora_b`, so it is not a no-op) written for that model, in the mlx-lm adapter format both sides
load. `--base float32` dequantizes the base to float32 right after loading on both sides (what
Lathe's chat does by itself on a CPU from branch realmodel on); `--base as-is` (default) runs the
model as stored (on MLX's CPU backend a 4-bit model with float16 scales decodes at seconds per
token; use few --max-tokens). The machine's load average is recorded before the first and after
each pair, beside every pair's ratio.

Tokens per second is the decoding speed after the first token, (tokens - 1) / (last - first), timed
the same way on both sides; time to first token runs from the call to the first token and includes
the prompt (Lathe's also includes applying the chat template). The target (Lathe at least 0.95x
mlx-lm's tokens per second) is judged on the median of the back-to-back pairs' ratios, which a busy
machine disturbs least; the ratio of the medians is printed beside it. Lathe's own per-token work
is measured separately, to show how little of any difference can be Lathe's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET = 0.95
PROMPT = (
    "You are a helpful assistant for a bank. A customer asks: what is the fee for an "
    "international transfer, how long does it take, and can I cancel it afterwards?"
)


def build_model_and_adapter(folder: Path, hidden: int, layers: int, rank: int) -> tuple[Path, Path]:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from engine.tinymodel import build_tiny_model

    model_path = build_tiny_model(
        folder / "model",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=hidden * 11 // 4,
        max_position_embeddings=4096,
    )
    model, _ = load(str(model_path))
    model.freeze()
    params = {"rank": rank, "scale": 20.0, "dropout": 0.0}
    linear_to_lora_layers(model, layers, params)
    mx.random.seed(0)
    for _, module in model.named_modules():
        if hasattr(module, "lora_b"):  # a trained adapter is not a no-op
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.01
    adapter = folder / "adapter"
    adapter.mkdir()
    mx.save_safetensors(
        str(adapter / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    (adapter / "adapter_config.json").write_text(
        json.dumps({"fine_tune_type": "lora", "num_layers": layers, "lora_parameters": params})
    )
    return model_path, adapter


def random_adapter(model_path: str, folder: Path, rank: int) -> Path:
    """A LoRA adapter for `model_path` (every layer, rank `rank`, lora_b small and random)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = load(str(model_path))
    model.freeze()
    layers = len(model.layers)
    params = {"rank": rank, "scale": 20.0, "dropout": 0.0}
    linear_to_lora_layers(model, layers, params)
    mx.random.seed(0)
    for _, module in model.named_modules():
        if hasattr(module, "lora_b"):
            module.lora_b = (mx.random.normal(module.lora_b.shape) * 0.01).astype(
                module.lora_a.dtype
            )
    adapter = folder / "adapter"
    adapter.mkdir()
    mx.save_safetensors(
        str(adapter / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    (adapter / "adapter_config.json").write_text(
        json.dumps({"fine_tune_type": "lora", "num_layers": layers, "lora_parameters": params})
    )
    return adapter


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def time_mlx_lm(model, tokenizer, tokens: list[int], max_tokens: int) -> dict:
    from mlx_lm import stream_generate

    start = time.perf_counter()
    first = last = None
    n = 0
    text = []
    for response in stream_generate(model, tokenizer, tokens, max_tokens=max_tokens):
        last = time.perf_counter()
        first = first or last
        n = response.generation_tokens
        text.append(response.text)
    return {
        "tokens": n,
        "ttft": first - start,
        "tps": (n - 1) / (last - first),
        "seconds": last - start,
        "text": "".join(text),
    }


def time_lathe(chat, messages: list[dict], settings) -> dict:
    reply = chat.reply(messages, settings, use_adapter=True)
    s = reply.stats
    return {
        "tokens": s.tokens,
        "ttft": s.time_to_first_token,
        "tps": s.tokens_per_second,
        "seconds": s.seconds,
        "text": reply.text,
    }


def wrapper_overhead_us(pieces: int = 100_000) -> float:
    """Lathe's own work per token around mlx-lm's loop (cancel check, stop matching, event), in µs.

    On a busy machine the two sides' speeds wander by more than this; it shows what Lathe adds.
    """
    import threading

    from engine.chat import ChatEvent, StopMatcher

    matcher, cancel, out = StopMatcher(["\n### Question:"]), threading.Event(), []
    start = time.perf_counter()
    for i in range(pieces):
        time.perf_counter()
        if cancel.is_set():
            break
        shown, _ = matcher.feed(" word")
        if shown:
            out.append(ChatEvent("text", shown, token=i))
    return (time.perf_counter() - start) / pieces * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", help="Model folder or repo id (default: build a random-weight one)."
    )
    parser.add_argument("--adapter", help="RUN[:STEP] or adapter folder (required with --model).")
    parser.add_argument(
        "--random-adapter",
        action="store_true",
        help="With --model: a random LoRA adapter made for it instead of --adapter.",
    )
    parser.add_argument(
        "--base",
        choices=["as-is", "float32"],
        default="as-is",
        help="float32: both sides' base dequantized/cast to float32 after loading.",
    )
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import mlx.core as mx

    from bench.train_vs_mlx_lm import patch_load
    from engine.chat import ChatModel, ChatSettings, resolve_adapter

    loads = {"start": load_average()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model and args.random_adapter:
            model_path, adapter_path = args.model, random_adapter(args.model, Path(tmp), args.rank)
            what = f"{args.model} + a random LoRA adapter (rank {args.rank}, every layer)"
        elif args.model:
            if not args.adapter:
                parser.error("--adapter (or --random-adapter) is required with --model")
            model_path, adapter_path = args.model, resolve_adapter(args.adapter).path
            what = f"{args.model} + {adapter_path}"
        else:
            model_path, adapter_path = build_model_and_adapter(
                Path(tmp), args.hidden, args.layers, args.rank
            )
            what = (
                f"random-weight Llama, hidden {args.hidden}, {args.layers} layers, "
                f"LoRA rank {args.rank} on every linear layer"
            )

        patch_load(args.base)
        import mlx_lm

        load = mlx_lm.load
        # mlx-lm's model is loaded first: on CPU the model loaded first ran a few percent faster in
        # trials, and any such edge should go to the reference, not to Lathe.
        ref_model, ref_tokenizer = load(str(model_path), adapter_path=str(adapter_path))
        chat = ChatModel.load(model_path, adapter=adapter_path)
        # A random model may emit EOS at any point; both sides must generate the same count.
        chat.tokenizer.eos_token_ids = set()
        ref_tokenizer.eos_token_ids = set()
        messages = [{"role": "user", "content": PROMPT}]
        tokens = chat.prompt_tokens(messages)
        settings = ChatSettings(temperature=0.0, max_tokens=args.max_tokens, stop=[])

        time_lathe(chat, messages, settings)  # warm-up: first-call allocations on both sides
        time_mlx_lm(ref_model, ref_tokenizer, tokens, args.max_tokens)
        lathe, mlx_lm, pair_loads = [], [], []
        for i in range(args.repeats):
            # Alternate which side goes first, so neither always runs on a just-warmed cache.
            if i % 2 == 0:
                lathe.append(time_lathe(chat, messages, settings))
            mlx_lm.append(time_mlx_lm(ref_model, ref_tokenizer, tokens, args.max_tokens))
            if i % 2 == 1:
                lathe.append(time_lathe(chat, messages, settings))
            pair_loads.append(load_average())

    def summary(runs):
        return {
            "tokens": runs[0]["tokens"],
            "tokens_per_second": statistics.median(r["tps"] for r in runs),
            "time_to_first_token_ms": 1000 * statistics.median(r["ttft"] for r in runs),
            "seconds": statistics.median(r["seconds"] for r in runs),
        }

    result = {
        "model": what,
        "prompt_tokens": len(tokens),
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "base": args.base,
        "load_average_start": loads["start"],
        "pairs": [
            {"ratio": round(a["tps"] / b["tps"], 4), "load_average": ld}
            for a, b, ld in zip(lathe, mlx_lm, pair_loads, strict=True)
        ],
        "device": str(mx.default_device()),
        "machine": f"{platform.system()} {platform.machine()}",
        "same_text": all(a["text"] == b["text"] for a, b in zip(lathe, mlx_lm, strict=True)),
        "lathe": summary(lathe),
        "mlx_lm": summary(mlx_lm),
    }
    ratio = result["lathe"]["tokens_per_second"] / result["mlx_lm"]["tokens_per_second"]
    result["ratio"] = ratio
    # Each pair ran back to back under the same load; on a busy machine the median of the pairs'
    # ratios is steadier than the ratio of the medians.
    result["paired_ratio"] = statistics.median(
        a["tps"] / b["tps"] for a, b in zip(lathe, mlx_lm, strict=True)
    )
    result["lathe_overhead_us_per_token"] = wrapper_overhead_us()
    result["target"] = TARGET
    result["meets_target"] = result["paired_ratio"] >= TARGET
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{what}; {len(tokens)} prompt tokens, {args.max_tokens} generated, "
            f"median of {args.repeats}, {result['device']} on {result['machine']}, base {args.base}"
        )
        print(
            f"load average (1, 5, 15 min) at the start {loads['start']}; per pair: "
            + ", ".join(f"{p['ratio']:.3f}x at {p['load_average'][0]}" for p in result["pairs"])
        )
        print(f"{'':10}{'tokens/s':>10}{'first token':>14}{'total':>9}")
        for name in ("lathe", "mlx_lm"):
            s = result[name]
            print(
                f"{name:10}{s['tokens_per_second']:10.1f}{s['time_to_first_token_ms']:11.1f} ms"
                f"{s['seconds']:8.2f}s"
            )
        print(
            f"Lathe / mlx-lm tokens per second: {ratio:.3f}x (median of pairs "
            f"{result['paired_ratio']:.3f}x; target {TARGET}x: "
            f"{'met' if result['meets_target'] else 'NOT met'}); same text: {result['same_text']}"
        )
        per_token_us = 1e6 / result["mlx_lm"]["tokens_per_second"]
        print(
            f"Lathe's own work per token: {result['lathe_overhead_us_per_token']:.1f} µs "
            f"({100 * result['lathe_overhead_us_per_token'] / per_token_us:.2f}% of a token)"
        )
    return 0 if result["same_text"] else 1


if __name__ == "__main__":
    sys.exit(main())
