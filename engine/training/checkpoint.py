"""Checkpoints that describe themselves: weights, optimizer, step and data position.

`checkpoints/<step:07d>/` holds `adapters.safetensors` and `adapter_config.json` (so the folder is
itself an mlx-lm adapter path), `optimizer.safetensors` and `state.json`. The folder is written
under a temporary name and renamed, so a checkpoint is either complete or absent.

MLX is imported by the functions that read or write arrays, not by the module: listing runs and
their checkpoints (the window's Runs and Train pages) loads no native MLX code.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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
    from mlx.utils import tree_flatten

    ensure_dir(folder)
    weights = dict(tree_flatten(model.trainable_parameters()))
    tmp = temp_path_for(folder / ADAPTER_FILE)
    try:
        write_safetensors(tmp, weights)
        commit_temp(tmp, folder / ADAPTER_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_json_atomic(folder / ADAPTER_CONFIG, config)


def write_safetensors(path: Path, arrays: dict) -> None:
    """`mx.save_safetensors`, with a failed or short write raised as an OSError (ENOSPC when the disk
    is full). MLX reports a failed write as a RuntimeError without an errno, and a file cut short
    must never be renamed into place as if it were complete."""
    import mlx.core as mx

    path = Path(path)
    try:
        mx.save_safetensors(str(path), arrays)
    except RuntimeError as exc:
        if "write" not in str(exc).lower() and "open" not in str(exc).lower():
            raise
        raise OSError(
            _write_errno(path), f"{path.name} could not be written ({exc})", str(path)
        ) from exc
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
        complete = size == 8 + length + end
    except (OSError, ValueError, KeyError, struct.error):
        complete = False
    if not complete:
        raise OSError(_write_errno(path), f"{path.name} was not written completely", str(path))


def _write_errno(path: Path) -> int:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return errno.EIO
    return errno.ENOSPC if free < 64 * 1024 * 1024 else errno.EIO


def save_checkpoint(run_dir: Path, model, optimizer, state: TrainState, config: dict) -> Path:
    """Write checkpoints/<step>/ completely, then rename it into place; returns its path.

    A failure (a full disk) removes the partial folder and raises; earlier checkpoints are never
    touched. Saving the same step twice (a stop right after a periodic save) keeps the first.
    """
    root = ensure_dir(Path(run_dir) / "checkpoints")
    final = root / f"{state.step:07d}"
    record = json.dumps(asdict(state), indent=2)
    if _is_complete(final) and _read_text(final / STATE_FILE) == record and _readable(final):
        return final
    tmp = root / f".tmp-{state.step:07d}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        ensure_dir(tmp)
        save_adapters(tmp, model, config)
        _test_pause()
        from mlx.utils import tree_flatten

        opt_state = {k: v for k, v in tree_flatten(optimizer.state)}
        write_safetensors(tmp / OPTIMIZER_FILE, opt_state)
        _test_pause()
        (tmp / STATE_FILE).write_text(record)
        _test_pause()
        _fsync_dir_files(tmp)
        if final.exists():
            # Same step, different state: swap, so that a kill in between leaves one to restore.
            old = root / f".old-{state.step:07d}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _readable(folder: Path) -> bool:
    """Whether a checkpoint's weight files pass the header-and-size check (no data is read)."""
    from engine.errors import ModelError
    from engine.models.info import check_safetensors

    try:
        for name in (ADAPTER_FILE, OPTIMIZER_FILE):
            check_safetensors(folder / name)
    except (ModelError, OSError):
        return False
    return True


def _is_complete(folder: Path) -> bool:
    return folder.is_dir() and all(
        (folder / f).exists() for f in (ADAPTER_FILE, STATE_FILE, OPTIMIZER_FILE)
    )


def _test_pause() -> None:
    """Test-only hook: LATHE_TEST_SLOW_CHECKPOINT=<seconds> sleeps between a checkpoint's files,
    so fault-injection tests can kill the worker while a checkpoint is being written."""
    delay = os.environ.get("LATHE_TEST_SLOW_CHECKPOINT")
    if delay:
        time.sleep(float(delay))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.name.isdigit() and _is_complete(p):
            found.append(p)
    return sorted(found, key=lambda p: int(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def clean_partial(run_dir: Path) -> list[Path]:
    """Tidy what a killed worker left behind; returns what was removed.

    Removes temporary checkpoint folders (`.tmp-*`) and the temporary files of interrupted atomic
    writes (`.<name>.<random>.tmp*`) in the run folder and its adapters/ folder. A checkpoint that
    was being replaced (`.old-<step>-*`) is put back when its step is missing, else removed.
    """
    run_dir = Path(run_dir)
    removed = []
    root = run_dir / "checkpoints"
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".old-"):
                final = root / p.name.split("-")[1]
                if not final.exists() and _is_complete(p):
                    os.replace(p, final)
                    continue
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    for folder in (run_dir, run_dir / "adapters"):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and is_temp_name(p.name):
                    p.unlink(missing_ok=True)
                    removed.append(p)
    return removed


def is_temp_name(name: str) -> bool:
    """Whether `name` is a temporary name of an atomic write (workspace.temp_path_for, mkstemp)."""
    return name.startswith(".") and ".tmp" in name


class CheckpointUnreadable(Exception):
    """A checkpoint whose files cannot be read back (damaged on disk); the message says which."""


def read_checkpoint(folder: Path) -> tuple[dict, dict, TrainState]:
    """Every file of a checkpoint, read and checked, nothing applied yet: (adapter weights,
    optimizer state, train state). Raises CheckpointUnreadable naming the damaged file."""
    import mlx.core as mx

    from engine.errors import ModelError
    from engine.models.info import check_safetensors

    folder = Path(folder)
    loaded = []
    for name in (ADAPTER_FILE, OPTIMIZER_FILE):
        try:
            check_safetensors(folder / name)
            arrays = mx.load(str(folder / name))
            mx.eval(list(arrays.values()))
        except (ModelError, OSError, RuntimeError, ValueError) as exc:
            raise CheckpointUnreadable(f"{name} cannot be read ({exc})") from exc
        loaded.append(arrays)
    try:
        state = TrainState(**json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointUnreadable(f"{STATE_FILE} cannot be read ({exc})") from exc
    return loaded[0], loaded[1], state


def load_checkpoint(folder: Path, model, optimizer) -> TrainState:
    """Restore weights and optimizer state from `folder`; returns the train state. Nothing is
    changed when a file cannot be read (CheckpointUnreadable).

    The RNG needs no restoring: the trainer reseeds it from (seed, step) before every step.
    """
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    weights, opt, state = read_checkpoint(folder)
    model.load_weights(list(weights.items()), strict=False)
    optimizer.state = tree_unflatten(list(opt.items()))
    mx.eval(model.parameters(), optimizer.state)
    return state


def load_newest_readable(run_dir: Path, model, optimizer) -> tuple[TrainState | None, list[str]]:
    """Restore the newest checkpoint of `run_dir` that reads back whole; returns its state (None
    when there is none) and one note per newer checkpoint that was damaged and passed over."""
    notes = []
    for folder in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(folder, model, optimizer), notes
        except CheckpointUnreadable as exc:
            notes.append(f"The checkpoint at step {int(folder.name)} is damaged: {exc}.")
    return None, notes


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


def publish_adapters(checkpoint: Path, adapters: Path) -> None:
    """Copy a checkpoint's adapter files to `adapters/` (the run's current adapter), atomically each."""
    ensure_dir(adapters)
    for name in (ADAPTER_FILE, ADAPTER_CONFIG):
        tmp = temp_path_for(adapters / name)
        try:
            shutil.copyfile(checkpoint / name, tmp)
            commit_temp(tmp, adapters / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


# Optimizer state saved per checkpoint, in copies of the trained parameters (Adam's two moments;
# SGD's and Muon's momentum; Adafactor's factored moments are far smaller, counted as one).
OPTIMIZER_STATE_COPIES = {"adam": 2, "adamw": 2, "sgd": 1, "muon": 1, "adafactor": 1}


def check_disk_space(config, run_dir: Path, adapter_bytes: int, steps: int, done: int, log) -> None:
    """Refuse a run whose checkpoints would not fit on the disk (with the numbers), before step 1.

    Every checkpoint is kept: adapter + optimizer state, one every `save_every` steps and one at the
    end, plus the run's current adapter. `training.ignore_fit_check` (`--force`) makes it a warning.
    """
    t = config.training
    per_checkpoint = adapter_bytes * (1 + OPTIMIZER_STATE_COPIES.get(t.optimizer, 2))
    saves = steps // t.save_every - done // t.save_every + (1 if steps % t.save_every else 0)
    needed = per_checkpoint * max(saves, 0) + adapter_bytes
    free = shutil.disk_usage(run_dir).free
    if needed <= free:
        return
    message = (
        f"This run would write {saves} checkpoints of {_size(per_checkpoint)} each "
        f"({_size(needed)} with the adapter; one every {t.save_every} steps of {steps}), but the disk "
        f"has {_size(free)} free, so it was not started."
    )
    if t.ignore_fit_check:
        log("warning", message.replace("so it was not started", "and it was started anyway"))
        return
    from engine.errors import DiskFullError

    raise DiskFullError(
        message,
        "Save less often (a larger training.save_every), use a smaller lora.rank, or free disk "
        "space; `train --force` starts it anyway (it stops cleanly when the disk is full).",
    )


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 / 10 else f"{n / 1024**2:.1f} MB"
