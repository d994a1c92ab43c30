"""Checkpoints that describe themselves: weights, optimizer, step and data position.

`checkpoints/<step:07d>/` holds `adapters.safetensors` and `adapter_config.json` (so the folder is
itself an mlx-lm adapter path), `optimizer.safetensors` and `state.json`. The folder is written
under a temporary name and renamed, so a checkpoint is either complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from engine.workspace import commit_temp, ensure_dir, temp_path_for, write_json_atomic

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


@dataclass
class TrainState:
    step: int = 0  # optimizer updates done
    epoch: int = 0  # epoch of the next batch
    position: int = 0  # index of the next batch within that epoch's plan
    trained_tokens: int = 0
    processed_tokens: int = 0  # real (non-padding) tokens through the model, prompts included
    seen_examples: int = 0
    best_val_loss: float | None = None
    best_val_step: int | None = None
    evals_since_best: int = 0
    elapsed_seconds: float = 0.0


def adapter_config(lora_cfg, num_layers: int) -> dict:
    """The adapter_config.json that `mlx_lm.load(..., adapter_path=...)` reads."""
    cfg = {
        "fine_tune_type": lora_cfg.fine_tune_type,
        "num_layers": num_layers,
        "lora_parameters": {
            "rank": lora_cfg.rank,
            "scale": lora_cfg.scale,
            "dropout": lora_cfg.dropout,
        },
    }
    if lora_cfg.keys:
        cfg["lora_parameters"]["keys"] = list(lora_cfg.keys)
    return cfg


def save_adapters(folder: Path, model, config: dict) -> None:
    """Write the trainable weights and their adapter_config.json into `folder`, atomically each."""
    ensure_dir(folder)
    weights = dict(tree_flatten(model.trainable_parameters()))
    tmp = temp_path_for(folder / ADAPTER_FILE)
    mx.save_safetensors(str(tmp), weights)
    commit_temp(tmp, folder / ADAPTER_FILE)
    write_json_atomic(folder / ADAPTER_CONFIG, config)


def save_checkpoint(run_dir: Path, model, optimizer, state: TrainState, config: dict) -> Path:
    """Write checkpoints/<step>/ completely, then rename it into place; returns its path."""
    root = ensure_dir(Path(run_dir) / "checkpoints")
    final = root / f"{state.step:07d}"
    tmp = root / f".tmp-{state.step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    ensure_dir(tmp)
    save_adapters(tmp, model, config)
    opt_state = {k: v for k, v in tree_flatten(optimizer.state)}
    mx.save_safetensors(str(tmp / OPTIMIZER_FILE), opt_state)
    (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    _fsync_dir_files(tmp)
    if final.exists():  # a stop right after a periodic save at the same step
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.isdigit() and all((p / f).exists() for f in (ADAPTER_FILE, STATE_FILE, OPTIMIZER_FILE)):
            found.append(p)
    return sorted(found, key=lambda p: int(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def clean_partial(run_dir: Path) -> None:
    """Remove temporary checkpoint folders that a killed worker left behind."""
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(folder: Path, model, optimizer) -> TrainState:
    """Restore weights and optimizer state from `folder`; returns the train state.

    The RNG needs no restoring: the trainer reseeds it from (seed, step) before every step.
    """
    folder = Path(folder)
    model.load_weights(str(folder / ADAPTER_FILE), strict=False)
    opt = mx.load(str(folder / OPTIMIZER_FILE))
    optimizer.state = tree_unflatten(list(opt.items()))
    state = TrainState(**json.loads((folder / STATE_FILE).read_text()))
    mx.eval(model.parameters(), optimizer.state)
    return state


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir_files(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(p, 0o600)
    _fsync(folder)
