"""Helpers for the export tests: run folders with real adapters made by mlx-lm's own functions.

No trainer is involved: the adapter is mlx-lm's LoRA layers with a small random non-zero `lora_b`,
saved the way `mlx_lm.lora` saves one (adapters.safetensors + adapter_config.json), inside a run
folder laid out as docs/CONTRACTS.md says.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def make_adapter(
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


def make_run(
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
    from engine.config import RunConfig

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
    make_adapter(model_path, run / "adapters", **adapter_kwargs)
    for step in checkpoint_steps:
        ckpt = run / "checkpoints" / f"{step:07d}"
        make_adapter(
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
