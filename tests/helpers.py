"""Helpers shared by the test modules: datasets, run configs, in-process runs, run folders.

Test modules import these from here, never from one another (tests/test_suite_layout.py checks it).
Heavy imports (MLX, Qt) happen inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from engine import events
from engine.config import RunConfig
from engine.runs import create_run

# -- datasets and in-process training runs (from tests/engine/test_train.py) -----------------

FACTS = [
    ("What color is the sky?", "The sky is blue."),
    ("What do cats say?", "Cats say meow."),
    ("Where do fish live?", "Fish live in water."),
    ("What is the fee?", "The fee is five euros."),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def completion_data(folder: Path, copies: int = 6) -> Path:
    rows = [{"prompt": q, "completion": a} for q, a in FACTS] * copies
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "valid.jsonl", [{"prompt": q, "completion": a} for q, a in FACTS])
    return folder


def variable_chat_data(path: Path, n: int = 160, seed: int = 0) -> Path:
    """Chat examples whose lengths vary widely (3 to ~120 words), like real support data."""
    rng = random.Random(seed)
    words = "account fee transfer card bank money day euro branch limit app help".split()
    rows = []
    for _ in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) + "?"
        a = " ".join(rng.choice(words) for _ in range(int(rng.expovariate(1 / 30)) + 3)) + "."
        rows.append(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
    return write_jsonl(path, rows)


def make_config(model: Path, data: Path, **training) -> RunConfig:
    cfg = RunConfig()
    cfg.model.path = str(model)
    cfg.data.path = str(data)
    cfg.data.max_seq_length = 256
    cfg.lora.num_layers = -1
    cfg.training.batch_size = 4
    cfg.training.learning_rate = 1e-3
    cfg.training.steps_per_report = 5
    cfg.training.steps_per_eval = 10
    cfg.training.save_every = 10
    cfg.training.report_utilisation = False  # ~0.5 s per run; tested once below
    cfg.training.general_check = False  # ~1 s per run on the tiny chat model; see test_eval.py
    for key, value in training.items():
        setattr(cfg.training, key, value)
    return cfg


def train_run(cfg: RunConfig, resume_dir: Path | None = None, stop_after: int | None = None):
    from engine.train import run

    recorder = events.Recorder()
    run_dir = resume_dir or create_run(cfg)
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return stop_after is not None and calls["n"] > stop_after

    status = run(cfg, run_dir, recorder, should_stop=should_stop, resume=resume_dir is not None)
    return status, run_dir, recorder


# -- runs logged as the worker logs them (from tests/engine/test_faults.py) -----------------


def config_for(model: Path, tmp_path: Path, **training):
    data = variable_chat_data(tmp_path / "chat.jsonl", n=24)
    cfg = make_config(
        model,
        data,
        **{"iters": 20, "save_every": 5, "steps_per_report": 1, "steps_per_eval": 1000, **training},
    )
    cfg.data.max_seq_length = 64
    return cfg


def run_logged(cfg, run_dir: Path | None = None, resume: bool = False):
    """Train as the worker does: events.jsonl plus a recorder for the test."""
    from engine.train import run

    run_dir = run_dir or create_run(cfg)
    recorder = events.Recorder()
    log = events.EventLog(run_dir / "events.jsonl")
    try:
        status = run(cfg, run_dir, events.Fanout([log, recorder]), resume=resume)
    finally:
        log.close()
    return status, run_dir, recorder


# -- chat run folders (from tests/engine/test_chat.py) ---------------------------------------

STORY = [{"role": "user", "content": "Tell me a story about a cat and a dog."}]


def make_chat_adapter(
    model_path: Path,
    out: Path,
    *,
    fine_tune_type: str = "lora",
    num_layers: int = 2,
    rank: int = 4,
    scale: float = 10.0,
    dropout: float = 0.0,
    seed: int = 1,
) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = load(str(model_path))
    model.freeze()
    mx.random.seed(seed)
    params = {"rank": rank, "scale": scale, "dropout": dropout}
    if fine_tune_type == "full":
        for layer in model.layers[-num_layers:]:
            layer.unfreeze()
        weights = {
            k: v + mx.random.normal(v.shape) * 0.05
            for k, v in tree_flatten(model.trainable_parameters())
        }
    else:
        linear_to_lora_layers(model, num_layers, params, use_dora=fine_tune_type == "dora")
        for _, module in model.named_modules():
            if hasattr(module, "lora_b"):
                # A fresh adapter has lora_b = 0 (a no-op); a trained one does not.
                module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
        weights = dict(tree_flatten(model.trainable_parameters()))
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    config = {"fine_tune_type": fine_tune_type, "num_layers": num_layers, "lora_parameters": params}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def make_chat_run(
    model_path: Path,
    run_dir: Path,
    *,
    steps=(10, 20),
    final: bool = True,
    template: str | None = None,
    **adapter_kwargs,
) -> Path:
    """A run folder as docs/CONTRACTS.md describes it; each adapter has different weights."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = RunConfig()
    config.model.path = str(model_path)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    (run_dir / "status.json").write_text(
        json.dumps({"state": "completed", "step": max(steps, default=0)})
    )
    for i, step in enumerate(steps):
        make_chat_adapter(
            model_path, run_dir / "checkpoints" / f"{step:07d}", seed=100 + i, **adapter_kwargs
        )
    if final:
        make_chat_adapter(model_path, run_dir / "adapters", seed=1, **adapter_kwargs)
    if template:
        (run_dir / "chat_template.jinja").write_text(template)
    return run_dir


# -- export run folders (from tests/engine/test_export_support.py) --------------------------


def make_export_adapter(
    model_path: Path,
    out: Path,
    *,
    num_layers: int = 2,
    rank: int = 4,
    scale: float = 10.0,
    seed: int = 0,
    std: float = 0.05,
) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(model_path))
    model.freeze()
    params = {"rank": rank, "scale": scale, "dropout": 0.0}
    linear_to_lora_layers(model, num_layers, params)
    mx.random.seed(seed)
    for _, module in model.named_modules():
        if hasattr(module, "lora_b"):
            module.lora_b = std * mx.random.normal(module.lora_b.shape)
    weights = dict(tree_flatten(model.trainable_parameters()))
    assert weights and all(k.endswith(("lora_a", "lora_b")) for k in weights)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    config = {
        "model": str(model_path),
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": params,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def make_export_run(
    model_path: Path,
    runs_dir: Path,
    name: str = "run-1",
    *,
    template: str | None = None,
    checkpoint_steps: tuple[int, ...] = (),
    dataset: Path | None = None,
    **adapter_kwargs,
) -> Path:
    """A run folder as docs/CONTRACTS.md lays it out, with a finished adapter and events."""
    run = runs_dir / name
    run.mkdir(parents=True)
    cfg = RunConfig()
    cfg.name = name
    cfg.model.path = str(model_path)
    cfg.data.path = str(dataset or "")
    cfg.lora.rank = adapter_kwargs.get("rank", 4)
    cfg.lora.num_layers = adapter_kwargs.get("num_layers", 2)
    cfg.lora.scale = adapter_kwargs.get("scale", 10.0)
    cfg.training.iters = 30
    (run / "config.yaml").write_text(cfg.to_yaml())
    make_export_adapter(model_path, run / "adapters", **adapter_kwargs)
    for step in checkpoint_steps:
        ckpt = run / "checkpoints" / f"{step:07d}"
        make_export_adapter(
            model_path, ckpt, seed=step, **{k: v for k, v in adapter_kwargs.items() if k != "seed"}
        )
    if template is not None:
        (run / "chat_template.jinja").write_text(template)
    events = [
        {"event": "started", "time": 1.0, "run_id": name, "config": {}, "total_steps": 30},
        {
            "event": "progress",
            "time": 2.0,
            "step": 30,
            "total": 30,
            "train_loss": 1.25,
            "learning_rate": 1e-4,
            "tokens_per_second": 900.0,
            "trained_tokens": 12345,
            "peak_memory_gb": 0.1,
            "eta_seconds": 0,
        },
        {"event": "eval", "time": 3.0, "step": 30, "val_loss": 1.5},
        {
            "event": "finished",
            "time": 4.0,
            "status": "completed",
            "adapter_path": str(run / "adapters"),
            "summary": {"test_loss": 1.75},
        },
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run / "status.json").write_text(
        json.dumps(
            {
                "state": "completed",
                "reason": "",
                "pid": None,
                "step": 30,
                "total_steps": 30,
                "updated": 4.0,
            }
        )
    )
    return run


def quantized_copy(model_path: Path, out: Path, *, bits: int = 4, group_size: int = 32) -> Path:
    """`model_path` quantized with mlx-lm's convert (affine, `bits`, `group_size`)."""
    from mlx_lm.convert import convert

    if out.exists():
        shutil.rmtree(out)
    convert(str(model_path), mlx_path=str(out), quantize=True, q_bits=bits, q_group_size=group_size)
    return out


# -- examples in every format (from tests/engine/test_packing.py) ---------------------------


def mixed_examples(tokenizer):
    """Eight encoded examples of every format (completion, text, multi-turn chat), lengths varied."""
    from engine.encode import Encoder

    enc = Encoder(tokenizer, mask_prompt=True)
    ex = [
        enc.encode(
            {"prompt": f"Question {i} about the fee{'!' * i}?", "completion": "Answer " * (i + 1)}
        )
        for i in range(6)
    ]
    ex.append(enc.encode({"text": "Once upon a time there was a cat."}))
    ex.append(
        enc.encode(
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Bye"},
                    {"role": "assistant", "content": "Bye!"},
                ]
            }
        )
    )
    return ex


# -- GUI helpers (from tests/app/conftest.py and tests/app/test_data_page.py) ----------------

QUESTIONS = [
    ("What is the fee for a transfer?", "A transfer costs 5 euros."),
    ("How long does a transfer take?", "Transfers arrive the same day."),
    ("Can I open an account online?", "Yes, in the app in ten minutes."),
    ("How do I block my card?", "Tap Block card in the app, or call us."),
    ("What are your opening hours?", "We are open from 9 to 5 on weekdays."),
    ("Do you charge for cash withdrawals?", "Withdrawals are free in the euro area."),
]


def chat_records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        q, a = QUESTIONS[i % len(QUESTIONS)]
        out.append(
            {
                "messages": [
                    {"role": "user", "content": f"{q} (case {i})"},
                    {"role": "assistant", "content": f"{a} Reference {i}."},
                ]
            }
        )
    return out


def tiny_config(model: Path, data: Path, **training):
    cfg = RunConfig()
    cfg.model.path = str(model)
    cfg.data.path = str(data)
    cfg.data.max_seq_length = 128
    cfg.lora.num_layers = -1
    cfg.lora.rank = 4
    t = cfg.training
    t.iters = 12
    t.batch_size = 2
    t.steps_per_report = 1
    t.steps_per_eval = 4
    t.save_every = 6
    t.learning_rate = 1e-3
    for k, v in training.items():
        setattr(t, k, v)
    return cfg


def drop(window, path) -> None:
    """Drop `path` onto the window as a file manager would."""
    from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
    from PySide6.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(
        QPoint(400, 300),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    window.dropEvent(event)


class Plan:
    """A training loop's batch plan over 4 `examples` (as engine.training.plans makes them): two
    batches of two examples per epoch; remembers which epochs the loop asked for."""

    def __init__(self, examples):
        self.examples, self.epochs = examples, []

    def epoch(self, epoch: int) -> list:
        self.epochs.append(epoch)
        return [[0, 1], [2, 3]]

    def batch(self, item):
        from engine.batching import collate

        return collate([self.examples[i] for i in item], 8, None, 2)


def fresh_model(path):
    """(model, optimizer): the model at `path` with fresh LoRA layers (rank 4), and Adam."""
    import mlx.optimizers as optim
    import mlx_lm

    from engine.training.method import add_adapters

    model, _ = mlx_lm.load(str(path))
    add_adapters(model, "lora", -1, {"rank": 4, "dropout": 0.0, "scale": 10.0})
    return model, optim.Adam(learning_rate=1e-3)
