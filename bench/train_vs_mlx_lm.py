"""Train the same model on the same data through Lathe, `mlx_lm.lora` and `mlx_lm_lora.train`.

    python bench/train_vs_mlx_lm.py [--shape mixed|short|long|qlora] [--examples N] [--batch-size 8]
                                    [--size tiny|tiny-vocab|0.5b | --model PATH] [--packing auto|budget|pack|off]
                                    [--base as-is|float32] [--trainers mlx_lm,mlx_lm_lora,lathe] [--timeout S]

Each trainer runs in its own process (so peak memory is its own) on identical settings: LoRA on
all layers, rank 8, scale 20, Adam at 1e-4, prompt masking on chat data, no validation while
training, one epoch over the same examples (Lathe with its defaults unless --packing says
otherwise). Only the training call is timed (model and data loading excluded). Prints wall time,
trained tokens per second, padding fraction, peak memory, utilisation (training FLOP/s over this
machine's FLOP/s on the model's own matmul shapes: plain matmul for float layers, quantized matmul
for quantized ones, engine.training.utilisation) and the validation loss of each trainer's final adapter. The
validation loss is computed afterwards in one separate process, the same way for all three (mlx-lm's
`evaluate` on held-out examples, scoring the real tokens only, the base in float32), so it
compares what the same work learnt.

`--shape qlora` is the real 4-bit path: ../shared/models/smollm2-135m-instruct-4bit (SmolLM2-135M-
Instruct, MLX 4-bit, float16 scales) on the bundled resources/samples/bank-support sample (the
first N training conversations, its own valid.jsonl for the loss). `--base float32` dequantizes every
trainer's base to float32 right after loading (mlx_lm.utils.dequantize_model), which is what Lathe
does by itself on MLX's CPU backend (engine.models.precision, branch realmodel): it compares the
trainers with the precision choice made equal. `--base as-is` (default) runs each trainer on the
model as stored. A trainer that does not finish within --timeout seconds is stopped and reported
with the steps it finished (on a CPU, 4-bit matmuls with float16 scales take minutes per step).

The second peer is PyPI `mlx-lm-lora` (5.10.2 measured; SFT mode). It needs mlx>=0.32.3 and pulls
`datasets`/`transformers`; install it beside Lathe without changing mlx or mlx-lm:
    pip install 'mlx-lm-lora==5.10.2'     (or: pip install -e '.[bench]')
and check `pip show mlx mlx-lm` afterwards. Without it, its rows are skipped with a note.
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

REAL_MODEL = ROOT.parent / "shared" / "models" / "smollm2-135m-instruct-4bit"
SAMPLE = ROOT / "resources" / "samples" / "bank-support"

SHAPES = {
    # shape: (default examples, max_seq_length, description)
    "mixed": (256, 1024, "chat, long-tailed lengths (~20 to ~700 tokens)"),
    "short": (2048, 256, "short chat turns (~15 to ~70 tokens)"),
    "long": (48, 1024, "documents near the context limit (~850 to ~1024 tokens)"),
    "qlora": (128, 1024, "bank-support sample on SmolLM2-135M-Instruct 4-bit (real model)"),
}

# trainer id -> name in the table
TRAINERS = {"mlx_lm": "mlx_lm.lora", "mlx_lm_lora": "mlx_lm_lora", "lathe": "Lathe"}
# held-out examples of the synthetic shapes, for the validation loss (fewer long documents: each
# is ~1,000 tokens, and every trainer's adapter is evaluated on all of them)
VALID_EXAMPLES = {"long": 8}
VALID_DEFAULT = 32


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _rows(rng: random.Random, n: int, shape: str) -> list[dict]:
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
    return rows


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def make_data(folder: Path, n: int, seed: int = 0, shape: str = "mixed") -> Path:
    """`folder/train.jsonl` with `n` examples of the given shape (see SHAPES), and held-out
    examples in `folder/eval/valid.jsonl` (kept out of the trainers' folder: none validates while
    timed). The qlora shape takes the first `n` conversations of the bank-support sample."""
    if shape == "qlora":
        train = [json.loads(ln) for ln in open(SAMPLE / "train.jsonl") if ln.strip()]
        valid = [json.loads(ln) for ln in open(SAMPLE / "valid.jsonl") if ln.strip()]
        if n > len(train):
            raise SystemExit(f"--examples {n}: the bank-support sample has {len(train)} examples")
        train = train[:n]
    else:
        rng = random.Random(seed)
        train = _rows(rng, n, shape)
        valid = _rows(random.Random(seed + 1), VALID_EXAMPLES.get(shape, VALID_DEFAULT), shape)
    _write(folder / "train.jsonl", train)
    _write(folder / "eval" / "valid.jsonl", valid)
    return folder


def _is_chat(data: str) -> bool:
    """Prompt masking for chat data; text documents train on every token (mlx-lm refuses masking there)."""
    with open(Path(data) / "train.jsonl") as fh:
        return "messages" in json.loads(fh.readline())


def _float32_base(model):
    """The frozen base in float32: quantized layers dequantized, half-precision weights cast up."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.utils import dequantize_model

    model = dequantize_model(model)
    model.update(
        tree_map(
            lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p,
            model.parameters(),
        )
    )
    mx.eval(model.parameters())
    return model


def patch_load(base: str) -> None:
    """With base "float32", every trainer's mlx_lm load returns the base dequantized to float32."""
    if base != "float32":
        return
    import mlx_lm
    import mlx_lm.utils

    original = mlx_lm.utils.load

    def load(*args, **kwargs):
        model, *rest = original(*args, **kwargs)
        return (_float32_base(model), *rest)

    mlx_lm.utils.load = load
    mlx_lm.load = load  # `from mlx_lm import load` (Lathe's chat) reads the package's name
    for name in ("mlx_lm.lora", "mlx_lm_lora.utils"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "load"):
            module.load = load


def _progress(steps_done: int) -> None:
    """`STEP n t`: n steps finished at time t (step 0: training started). The parent reads these
    lines when it stops a slow run (perf_counter is the system's monotonic clock on Linux and
    macOS, the same in every process)."""
    # sys.__stdout__: the peers run with sys.stdout silenced (_quiet)
    print(f"STEP {steps_done} {time.perf_counter():.3f}", file=sys.__stdout__, flush=True)


def _counting(original_iterate, stats: dict):
    """Wrap an mlx-lm style iterate_batches to count real, padded and trained tokens and steps."""

    def counting_iterate(*args, **kwargs):
        for batch, lengths in original_iterate(*args, **kwargs):
            lens = lengths.tolist()
            stats["real"] += sum(e for _, e in lens)
            stats["padded"] += batch.size
            # mlx-lm's mask: steps in [offset, length] of the shifted targets.
            stats["trained"] += sum(e - o + 1 for o, e in lens) - len(lens)
            stats["batches"] += 1
            if stats["batches"] > 1:  # batch k is fetched when step k-1 has finished
                _progress(stats["batches"] - 1)
            yield batch, lengths

    return counting_iterate


def _finish_peer(stats: dict, model, tic: float, iters: int, batch_size: int) -> None:
    import mlx.core as mx

    from engine.training.utilisation import utilisation

    stats["seconds"] = time.perf_counter() - tic
    stats["peak_gb"] = mx.get_peak_memory() / 1e9
    stats["steps"] = iters
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


def _peer_args(
    defaults: dict, model, data, iters, batch_size, max_seq, adapter_out, seed=0
) -> dict:
    args = dict(defaults)
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
        seed=seed,
        val_batches=0,
        adapter_path=adapter_out,
        lora_parameters={"rank": 8, "dropout": 0.0, "scale": 20.0},
    )
    return args


def _quiet(fn, *args) -> None:
    with open(os.devnull, "w") as null:
        old = sys.stdout
        sys.stdout = null
        try:
            fn(*args)
        finally:
            sys.stdout = old


def run_mlx_lm(
    model: str, data: str, iters: int, batch_size: int, max_seq: int, adapter_out: str, seed=0
) -> dict:
    import types

    import mlx.core as mx
    import mlx_lm.lora as lora
    import mlx_lm.tuner.trainer as trainer

    stats = {"real": 0, "padded": 0, "trained": 0, "batches": 0}
    counting_iterate = _counting(trainer.iterate_batches, stats)
    original_train = trainer.train

    def timed_train(*args, **kwargs):
        kwargs["iterate_batches"] = counting_iterate
        mx.reset_peak_memory()
        _progress(0)
        tic = time.perf_counter()
        original_train(*args, **kwargs)
        _finish_peer(stats, kwargs.get("model", args[0] if args else None), tic, iters, batch_size)

    lora.train = timed_train
    args = _peer_args(
        lora.CONFIG_DEFAULTS, model, data, iters, batch_size, max_seq, adapter_out, seed
    )
    _quiet(lora.run, types.SimpleNamespace(**args))
    return stats


def run_mlx_lm_lora(
    model: str, data: str, iters: int, batch_size: int, max_seq: int, adapter_out: str, seed=0
) -> dict:
    """`mlx_lm_lora.train` in SFT mode, as its command line runs it (`run(args)`), not fused."""
    import types

    import mlx.core as mx
    import mlx_lm_lora.train as peer
    import mlx_lm_lora.trainer.sft_trainer as sft

    stats = {"real": 0, "padded": 0, "trained": 0, "batches": 0}
    counting_iterate = _counting(sft.iterate_batches, stats)
    original_train = peer.train_sft

    def timed_train(*args, **kwargs):
        kwargs["iterate_batches"] = counting_iterate
        mx.reset_peak_memory()
        _progress(0)
        tic = time.perf_counter()
        original_train(*args, **kwargs)
        _finish_peer(stats, kwargs["model"], tic, iters, batch_size)

    peer.train_sft = timed_train
    # mlx_lm_lora 5.10 reads a Metal-only key (max_recommended_working_set_size) to set the wired
    # memory limit, a KeyError on the CPU and CUDA backends; give it the machine's memory there
    # (the wired limit only matters on Metal).
    info = mx.device_info()
    if "max_recommended_working_set_size" not in info:
        info = dict(info, max_recommended_working_set_size=info.get("memory_size", 0))
        sft.mx.device_info = lambda: info
    args = _peer_args(
        peer.CONFIG_DEFAULTS, model, data, iters, batch_size, max_seq, adapter_out, seed
    )
    # steps_per_eval None: no validation inside the timed loop (it would run at step 1 and the end).
    args.update(fuse=False, wandb=None, val_batches=1, steps_per_eval=None)
    # Its dataset loader wants a validation split; an unused copy of one training example.
    if not (Path(data) / "valid.jsonl").exists():
        with open(Path(data) / "train.jsonl") as fh:
            (Path(data) / "valid.jsonl").write_text(fh.readline())
    _quiet(peer.run, types.SimpleNamespace(**args))
    return stats


def run_lathe(
    model: str,
    data: str,
    iters: int,
    batch_size: int,
    max_seq: int,
    packing: str = "off",
    adapter_out: str = "",
    seed: int = 0,
) -> dict:
    import shutil

    import mlx.core as mx

    import engine.training.loop as trainer
    from engine import events
    from engine.config import RunConfig
    from engine.runs import create_run
    from engine.train import run
    from engine.training import checkpoint as ckpt

    stats: dict = {}
    original_train = trainer.train

    def timed_train(*args, **kwargs):
        mx.reset_peak_memory()
        _progress(0)
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
    t.seed = seed
    # The forgetting check answers general prompts at the last checkpoint, inside the timed
    # loop (on the qlora model, whose base passes some); the peers evaluate nothing.
    t.general_check = False

    class Progress(events.Recorder):
        def __call__(self, event):  # one line per finished step, for a run stopped early
            super().__call__(event)
            if event.get("event") == "progress":
                _progress(event.get("step", 0))

    rec = Progress()
    run_dir = create_run(cfg)
    run(cfg, run_dir, rec)
    progress = rec.of("progress")
    errors = rec.of("error")
    if errors:
        raise SystemExit(f"Lathe run failed: {errors[0]['message']}")
    stats["trained"] = progress[-1]["trained_tokens"]
    pads = [e["padding_fraction"] for e in progress]
    stats["padding_fraction"] = sum(pads) / len(pads)
    summary = rec.of("finished")[0]["summary"]
    stats.update({k: summary[k] for k in ("utilisation", "achieved_gflops", "reference_gflops")})
    started = rec.of("started")[0]["config"]
    stats["packing"] = started["batching"]
    # Gradient checkpointing turned on by Lathe's memory check (slower steps): shown in the table
    stats["grad_checkpoint"] = bool(started.get("grad_checkpoint"))
    if "compute_dtype" in started:
        stats["compute_dtype"] = started["compute_dtype"]
    stats["steps"] = summary["steps"]
    latest = ckpt.latest_checkpoint(Path(run_dir))
    if latest is not None and adapter_out:
        shutil.copytree(latest, adapter_out, dirs_exist_ok=True)
    return stats


def real_token_loss(model, batch, lengths):
    """mlx-lm's default loss without the one target past each example's end.

    mlx-lm's mask (`steps <= length`) also scores predicting the padding token after the last
    one; its trainers learn that (a systematic target), Lathe does not train on padding. On short
    answers that one token moves the mean by tenths of a nat, so the common validation loss
    scores the real tokens only: targets at steps offset..length-1.
    """
    import mlx.core as mx
    import mlx.nn as nn

    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    steps = mx.arange(1, targets.shape[1] + 1)
    mask = mx.logical_and(steps >= lengths[:, 0:1], steps < lengths[:, 1:])
    ce = nn.losses.cross_entropy(logits, targets) * mask
    ntoks = mask.sum()
    return ce.astype(mx.float32).sum() / ntoks, ntoks


def evaluate_adapters(model: str, data: str, adapters: dict, max_seq: int) -> dict:
    """Validation loss of each trainer's final adapter, computed the same way for all: mlx-lm's
    `evaluate` (mean loss over the trained tokens) on `data`/valid.jsonl, the base in float32."""
    import types

    from mlx.utils import tree_flatten
    from mlx_lm.tuner.datasets import CacheDataset, load_local_dataset
    from mlx_lm.tuner.trainer import evaluate
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    base, tokenizer = load(model)
    base = _float32_base(base)
    base.freeze()
    cfg = types.SimpleNamespace(mask_prompt=_is_chat(str(Path(data).parent)))
    _, valid, _ = load_local_dataset(Path(data), tokenizer, cfg)
    lora_set = None
    out = {}
    for name, folder in adapters.items():
        conf = json.loads((Path(folder) / "adapter_config.json").read_text())
        params = conf.get("lora_parameters", {})
        if lora_set is None:
            linear_to_lora_layers(base, len(base.layers), params)
            lora_set = {k for k, _ in tree_flatten(base.trainable_parameters())}
            scale = params.get("scale")
        elif params.get("scale") != scale:
            raise SystemExit(f"{name}'s adapter has LoRA scale {params.get('scale')}, not {scale}")
        import mlx.core as mx

        weights = mx.load(str(Path(folder) / "adapters.safetensors"))
        if set(weights) != lora_set:
            raise SystemExit(
                f"{name}'s adapter has different LoRA layers: {sorted(set(weights) ^ lora_set)[:4]}"
            )
        base.load_weights(list(weights.items()), strict=False)
        out[name] = evaluate(
            base,
            CacheDataset(valid),
            batch_size=4,
            num_batches=-1,
            max_seq_length=max_seq,
            loss=real_token_loss,
        )
    return out


def child(a) -> None:
    if a.child == "lathe":
        # What Lathe's training worker does before its first MLX evaluation (engine.commands.train):
        # the evaluation order under which its two groups of rows run side by side on the CPU.
        # Lathe's own setting, not the peers': mlx_lm.lora measured the same either way.
        from engine.training.parts import set_eval_order

        set_eval_order()
    patch_load(a.base)
    if a.child == "eval":
        print(
            "RESULT "
            + json.dumps(
                evaluate_adapters(a.model, a.data, json.loads(a.adapters), a.max_seq_length)
            )
        )
        return
    if a.child == "mlx_lm":
        stats = run_mlx_lm(
            a.model, a.data, a.iters, a.batch_size, a.max_seq_length, a.adapter_out, a.seed
        )
    elif a.child == "mlx_lm_lora":
        stats = run_mlx_lm_lora(
            a.model, a.data, a.iters, a.batch_size, a.max_seq_length, a.adapter_out, a.seed
        )
    else:
        stats = run_lathe(
            a.model,
            a.data,
            a.iters,
            a.batch_size,
            a.max_seq_length,
            a.packing,
            a.adapter_out,
            a.seed,
        )
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


def available_trainers(wanted: list[str]) -> tuple[list[str], list[str]]:
    """(trainers to run, notes about the ones skipped)."""
    import importlib.util

    run, notes = [], []
    for t in wanted:
        if t not in TRAINERS:
            raise SystemExit(f"unknown trainer {t!r}; choose from {', '.join(TRAINERS)}")
        if t == "mlx_lm_lora" and importlib.util.find_spec("mlx_lm_lora") is None:
            notes.append("mlx_lm_lora skipped: not installed (pip install 'mlx-lm-lora==5.10.2')")
            continue
        run.append(t)
    return run, notes


def _run_child(cmd: list[str], env: dict, timeout: float | None) -> tuple[dict | None, str]:
    """(the child's RESULT, or None when stopped at the timeout; its output for errors)."""
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        stop = time.perf_counter()
        text = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        marks = [ln.split()[1:] for ln in text.splitlines() if ln.startswith("STEP ")]
        marks = [(int(n), float(t)) for n, t in marks]
        return (
            {
                "stopped": True,
                "timeout_s": timeout,
                "elapsed_s": stop - start,  # the whole process: loading included
                "training_s": stop - marks[0][1] if marks else 0.0,
                "steps_finished": marks[-1][0] if marks else 0,
                "step_seconds": [round(b[1] - a[1], 2) for a, b in zip(marks, marks[1:])],
            },
            "",
        )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return None, out.stderr[-3000:]
    return json.loads(line[7:]), ""


def compare(
    model: str,
    shape: str,
    examples: int | None = None,
    batch_size: int = 8,
    work: Path | None = None,
    packing: str = "off",
    trainers: list[str] | None = None,
    base: str = "as-is",
    timeout: float | None = None,
    seed: int = 0,
) -> dict:
    """Run the trainers on one dataset shape; returns {"mlx_lm": stats, "lathe": stats, ...}.

    Each trainer's stats hold its final adapter's validation loss ("val_loss"), computed in one
    process for all of them after they finished."""
    n_default, max_seq, _ = SHAPES[shape]
    n = examples or n_default
    work = work or Path(tempfile.mkdtemp(prefix="lathe-bench-"))
    data = make_data(work / f"data-{shape}", n, shape=shape)
    iters = n // batch_size  # one epoch for mlx-lm (it drops a last partial batch)
    env = dict(os.environ, LATHE_HOME=str(work / "home"))
    # Every trainer gets the environment Lathe's worker runs in on Linux: OpenBLAS preloaded and
    # glibc's malloc keeping freed arrays (engine.platform.cpu_worker_env). A user running a peer
    # from a shell has neither unless they set them up.
    from engine.platform import cpu_worker_env

    env.update(cpu_worker_env(env))
    common = ["--model", model, "--max-seq-length", str(max_seq), "--base", base]
    common += ["--seed", str(seed)]
    results: dict = {"order": []}
    adapters = {}
    for which in trainers or list(TRAINERS):
        run_data = work / f"data-{shape}-{which}"  # its own copy: mlx_lm_lora adds a valid.jsonl
        run_data.mkdir(parents=True, exist_ok=True)
        (run_data / "train.jsonl").write_bytes((data / "train.jsonl").read_bytes())
        adapter = work / f"adapter-{shape}-{which}"
        cmd = [sys.executable, __file__, "--child", which, *common, "--data", str(run_data)]
        cmd += ["--iters", str(iters), "--batch-size", str(batch_size), "--packing", packing]
        cmd += ["--adapter-out", str(adapter)]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        stats, err = _run_child(cmd, env, timeout)
        if stats is not None:
            # 1-minute load average before and after: on a shared machine, read ratios with it
            stats["load"] = [round(load, 1), round(os.getloadavg()[0], 1) if load else 0.0]
        if stats is None:
            raise SystemExit(f"{which} failed:\n{err}")
        if "real" in stats:
            stats["padding_fraction"] = 1 - stats["real"] / stats["padded"]
        results[which] = stats
        results["order"].append(which)
        if not stats.get("stopped") and (adapter / "adapters.safetensors").exists():
            adapters[which] = str(adapter)
    if adapters:
        cmd = [sys.executable, __file__, "--child", "eval", *common, "--data", str(data / "eval")]
        cmd += ["--adapters", json.dumps(adapters)]
        losses, err = _run_child(cmd, env, None)
        if losses is None:
            raise SystemExit(f"validation failed:\n{err}")
        for which, loss in losses.items():
            results[which]["val_loss"] = loss
    results.update(
        shape=shape,
        examples=n,
        batch_size=batch_size,
        max_seq_length=max_seq,
        base=base,
        seed=seed,
    )
    return results


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def print_table(rows: list[dict], with_examples: bool = False, file=None) -> None:
    print = partial(builtins.print, file=file or sys.stdout, flush=True)
    ex = f"{'examples':>9}  " if with_examples else ""
    print(
        f"{'shape':8}{ex}{'trainer':20}{'wall s':>8}{'steps':>6}{'trained tok/s':>14}{'padding':>9}"
        f"{'peak GB':>9}{'RSS GB':>8}{'util':>7}{'ref GF/s':>9}{'val loss':>9}{'vs mlx_lm':>10}"
        f"{'vs peer2':>9}{'load':>10}"
    )
    for r in rows:
        ref = {
            k: r[k]["seconds"] for k in ("mlx_lm", "mlx_lm_lora") if k in r and "seconds" in r[k]
        }
        for which in r["order"]:
            x = r[which]
            name = TRAINERS[which]
            if which == "lathe":
                name += f"/{x.get('packing', '?')}" + ("+ckpt" if x.get("grad_checkpoint") else "")
            n = f"{r['examples']:>9}  " if with_examples else ""
            if x.get("stopped"):
                print(
                    f"{r['shape']:8}{n}{name:20}{'>' + format(x['timeout_s'], '.0f'):>8}"
                    f"  stopped: {x['steps_finished']} step(s) finished in {x['training_s']:.0f} s"
                    f" of training ({x['elapsed_s']:.0f} s with loading)"
                    + (f", step times {x['step_seconds']} s" if x["step_seconds"] else "")
                )
                continue
            vs = [
                f"{x['seconds'] / ref[k]:.2f}x" if k in ref and k != which else ""
                for k in ("mlx_lm", "mlx_lm_lora")
            ]
            loss = f"{x['val_loss']:.4f}" if "val_loss" in x else "n/a"
            print(
                f"{r['shape']:8}{n}{name:20}{x['seconds']:>8.1f}{x.get('steps', 0):>6}"
                f"{x['trained'] / x['seconds']:>14.0f}{x['padding_fraction']:>9.1%}"
                f"{x['peak_gb']:>9.3f}{x.get('rss_gb', 0):>8.2f}{x['utilisation']:>7.1%}"
                f"{x['reference_gflops']:>9.1f}{loss:>9}{vs[0]:>10}{vs[1]:>9}"
                f"{'-'.join(format(v, '.1f') for v in x.get('load', [])):>10}"
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
        "--packing",
        default="off",
        help="Lathe's data.packing (off, auto, budget, pack). Default off, Lathe's own default: "
        "batch_size examples per step, so every trainer takes the same steps and the validation "
        "losses compare at the same step; auto/budget put more short examples into fewer steps.",
    )
    p.add_argument("--shape", choices=sorted(SHAPES), default="mixed")
    p.add_argument("--examples", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--trainers", default=",".join(TRAINERS), help="Comma-separated: mlx_lm,mlx_lm_lora,lathe"
    )
    p.add_argument(
        "--base",
        choices=["as-is", "float32"],
        default="as-is",
        help="float32: every trainer's base dequantized/cast to float32 after loading.",
    )
    p.add_argument(
        "--timeout", type=float, help="Stop a trainer after this many seconds (report its steps)."
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Every trainer's seed (LoRA init, data order); the data itself stays the same.",
    )
    p.add_argument("--max-seq-length", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--child", choices=[*TRAINERS, "eval"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, help=argparse.SUPPRESS)
    p.add_argument("--adapter-out", default="", help=argparse.SUPPRESS)
    p.add_argument("--adapters", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
        return
    work = Path(tempfile.mkdtemp(prefix="lathe-bench-"))
    model = a.model or (str(REAL_MODEL) if a.shape == "qlora" else build_model(work, a.size))
    trainers, notes = available_trainers(a.trainers.split(","))
    load_before = load_average()
    r = compare(
        model,
        a.shape,
        a.examples,
        a.batch_size,
        work,
        a.packing,
        trainers,
        a.base,
        a.timeout,
        a.seed,
    )
    import platform

    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} cores; {load_before} before, "
        f"{load_average()} after; model {model}"
        + ("" if a.model or a.shape == "qlora" else f" ({describe_size(a.size)})")
    )
    print(
        f"Data: {r['examples']} examples, {SHAPES[a.shape][2]}; batch {a.batch_size}, one epoch, "
        f"LoRA rank 8 on all layers, prompt masking on chat data, same settings for all; base {a.base}.\n"
    )
    print_table([r])
    for note in notes:
        print(note)
    print(
        "Trained tokens differ slightly: mlx-lm also trains each example to predict one padding token."
    )


if __name__ == "__main__":
    main()
