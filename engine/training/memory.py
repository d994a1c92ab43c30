"""Memory: refuse runs that will not fit, set MLX's limits from the machine, stop before memory runs out.

Three layers, from cheapest to last resort:

1. Before a run starts, `preflight` compares the fit estimate (`engine.models.estimate`) with the
   machine and refuses a run predicted not to fit, with the numbers and the cheapest change that
   makes it fit, unless the user overrides it (`training.ignore_fit_check`, `train --force`).
2. While it trains, `limits` sets MLX's memory limit and cache limit from the machine: on macOS
   relative to the GPU's recommended working set (the share of unified memory macOS lets the GPU
   keep resident), elsewhere relative to physical memory, which must also hold the OS and other apps.
   The cache limit keeps freed buffers from piling up, so memory does not creep over a long run.
3. `MemoryGuard.check` runs at every step boundary: when MLX's active memory approaches the limit it
   first frees the cache, and if that is not enough the run checkpoints and stops with a message,
   instead of pushing the Mac into swap until it freezes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LatheError

GB = 1024**3

# Share of physical memory MLX may use where there is no GPU working set to go by (Linux, CUDA):
# the rest is left to the OS, the app and whatever else the user runs.
PHYSICAL_SHARE = 0.80
# The cache may hold at most this share of the limit (MLX's default lets it grow to the limit).
CACHE_SHARE = 0.25
# A run stops (with a checkpoint) when active memory reaches this share of the limit.
STOP_SHARE = 0.95


class OutOfMemory(LatheError):
    """A run that will not fit, or that ran short of memory while training."""

    kind = "memory"


@dataclass(frozen=True)
class MemoryPlan:
    """How much memory a run may use, in bytes, and where the number came from."""

    budget_bytes: int  # what the machine offers (working set on macOS, physical memory elsewhere)
    source: str
    limit_bytes: int  # mx.set_memory_limit
    cache_limit_bytes: int  # mx.set_cache_limit
    stop_bytes: int  # active memory at which the run checkpoints and stops

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _device_info() -> dict:
    import mlx.core as mx

    for fn in (
        getattr(mx, "device_info", None),
        getattr(getattr(mx, "metal", None), "device_info", None),
    ):
        if fn is None:
            continue
        try:
            info = fn()
        except Exception:  # noqa: BLE001 - no Metal device, or an MLX without this call
            continue
        if isinstance(info, dict):
            return info
    return {}


def machine_budget(platform: str | None = None) -> tuple[int, str]:
    """(bytes, source): the GPU's recommended working set on macOS, physical memory elsewhere."""
    from engine.platform import total_memory_bytes

    platform = platform or sys.platform
    if platform == "darwin":
        size = int(_device_info().get("max_recommended_working_set_size") or 0)
        if size:
            return size, "GPU recommended working set"
    total = total_memory_bytes()
    if total:
        return total, "physical memory"
    return 8 * GB, "assumed 8 GB (memory size unknown)"


def plan_for(budget_bytes: int, source: str) -> MemoryPlan:
    """The limits for a machine offering `budget_bytes` (see the module docstring)."""
    share = 1.0 if source == "GPU recommended working set" else PHYSICAL_SHARE
    limit = int(budget_bytes * share)
    return MemoryPlan(
        budget_bytes=int(budget_bytes),
        source=source,
        limit_bytes=limit,
        cache_limit_bytes=int(limit * CACHE_SHARE),
        stop_bytes=int(limit * STOP_SHARE),
    )


def machine_plan() -> MemoryPlan:
    return plan_for(*machine_budget())


@contextmanager
def limits(plan: MemoryPlan) -> Iterator[MemoryPlan]:
    """Set MLX's memory and cache limits for the duration of a run, then restore the previous ones."""
    import mlx.core as mx

    previous = []
    for name, value in (
        ("set_memory_limit", plan.limit_bytes),
        ("set_cache_limit", plan.cache_limit_bytes),
    ):
        setter = getattr(mx, name, None) or getattr(getattr(mx, "metal", None), name, None)
        if setter is None:
            continue
        try:
            previous.append((setter, setter(int(value))))
        except Exception:  # noqa: BLE001 - a backend without limits still trains
            continue
    try:
        yield plan
    finally:
        for setter, value in reversed(previous):
            try:
                setter(value)
            except Exception:  # noqa: BLE001
                pass


# Smallest cache cap; also the whole cap on the CPU backend (see `fit_cache_to`).
MIN_CACHE_BYTES = 256 * 1024**2


def fit_cache_to(plan: MemoryPlan, training_peak_bytes: int, gpu: bool | None = None) -> int:
    """Cap MLX's buffer cache at about one training step's working set (the fit estimate's peak).

    Freed buffers are kept for reuse; on a GPU a cache the size of a step's working set lets a step
    reuse the last one's, and more only holds memory the user's other apps could use. On MLX's CPU
    backend the cache is emptied after every step (`clear_cache_threshold`), so it only serves reuse
    within a step: there it is capped at 256 MB. Measured on the 2-core machine, that took the
    resident size of a long-document run from 4.36 to 3.70 GB (mixed data 2.03 to 1.97 GB) at the
    same speed; no cache at all made short-turn runs ~7% slower. Returns the cap, which never
    exceeds the plan's. `limits` restores the previous cap when the run ends.
    """
    import mlx.core as mx

    if gpu is None:
        gpu = mx.default_device().type == mx.DeviceType.gpu
    step = max(training_peak_bytes, MIN_CACHE_BYTES) if gpu else MIN_CACHE_BYTES
    cap = int(min(plan.cache_limit_bytes, step))
    try:
        mx.set_cache_limit(cap)
    except Exception:  # noqa: BLE001 - a backend without a cache limit still trains
        pass
    return cap


def clear_cache_threshold(configured: int, gpu: bool | None = None) -> int:
    """Bytes of MLX buffer cache past which the training loop frees it after a step (0: never).

    A configured threshold wins. Otherwise, on MLX's CPU backend the cache is freed after every
    step, as mlx-lm does: measured on the 2-core machine, keeping it made steps slower (mixed data
    37 s vs 25-30 s, long documents 70 s vs 63 s) and the process 2-3x larger (6.0 vs 2.2 GB
    resident), without speeding up short data. On a GPU the cache stays, capped at one step's
    working set (`fit_cache_to`): reusing buffers there saves allocations.
    """
    if configured:
        return int(configured)
    if gpu is None:
        import mlx.core as mx

        gpu = mx.default_device().type != mx.DeviceType.cpu
    return 0 if gpu else 1


def active_memory() -> int:
    import mlx.core as mx

    return int(mx.get_active_memory())


def cache_memory() -> int:
    import mlx.core as mx

    return int(mx.get_cache_memory())


def clear_cache() -> None:
    import mlx.core as mx

    mx.clear_cache()


class MemoryGuard:
    """Checked at each step boundary: frees the cache under pressure, says when the run must stop."""

    def __init__(self, plan: MemoryPlan):
        self.plan = plan
        self.message: str | None = None  # set once the run must stop
        self.cache_clears = 0

    def check(self) -> bool:
        """True when memory has run short (the caller checkpoints and stops)."""
        if self.message is not None:
            return True
        active = active_memory()
        if active + cache_memory() >= self.plan.stop_bytes:
            # Cached buffers are free memory MLX kept for reuse: give them back before giving up.
            clear_cache()
            self.cache_clears += 1
            active = active_memory()
        if active >= self.plan.stop_bytes:
            self.message = (
                f"Memory ran short: training was using {active / GB:.1f} GB of the "
                f"{self.plan.limit_bytes / GB:.1f} GB Lathe allows on this machine "
                f"({self.plan.source}), so the run saved a checkpoint and stopped before the Mac "
                "ran out of memory."
            )
            return True
        return False


MEMORY_HINT = (
    "Resume with a smaller batch size, a shorter max_seq_length, fewer trained layers or "
    "gradient checkpointing, or close other apps that use a lot of memory."
)

_ALLOCATION_WORDS = (
    "unable to allocate",
    "out of memory",
    "outofmemory",
    "insufficient memory",
    "bad_alloc",
    "failed to allocate",
    "malloc",
)


def is_allocation_error(exc: BaseException) -> bool:
    """Whether `exc` is MLX (or Python) failing to allocate memory."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, (RuntimeError, ValueError, OSError)) and not isinstance(
        exc, FileNotFoundError
    ):
        text = str(exc).lower()
        return any(word in text for word in _ALLOCATION_WORDS)
    return False


def describe_loaded(info, model):
    """`info` (a ModelInfo) as the loaded `model` will train: its weights' bytes and activation
    dtype as loaded, so the estimate follows whatever the loader did (a dtype chosen for the
    backend, a dequantized copy). Reads shapes and dtypes only: lazy weights stay unevaluated."""
    import dataclasses

    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    params = tree_flatten(model.parameters())
    weights = sum(int(v.nbytes) for _, v in params)
    floats = [
        v.dtype.size for k, v in params if "norm" in k and mx.issubdtype(v.dtype, mx.floating)
    ]
    quantized = any(
        isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()
    )
    return dataclasses.replace(
        info,
        weights_bytes=weights or info.weights_bytes,
        activation_bytes=floats[0] if floats else info.activation_bytes,
        quantization=info.quantization if quantized else None,
    )


def preflight(
    config,
    model_path: str | Path,
    log: Callable[[str, str], None] | None = None,
    estimate: Callable | None = None,
    lengths=None,
    model=None,
):
    """The memory decision for a run: the FitReport, or OutOfMemory when it will not fit.

    `lengths` (the training examples' token lengths) make the estimate one for the largest batch
    the run really forms; `model` (the loaded model) makes it describe the model as it will train.
    The config is not changed: the report's `automatic` holds what the run should turn on by
    itself (gradient checkpointing when memory would be tight), for the caller to apply. Returns
    None when no estimate can be made (the loader then reports what is wrong with the model).
    `config.training.ignore_fit_check` turns the refusal into a warning.
    """
    if estimate is None:
        from engine.models import estimate
    try:
        target = str(model_path)
        if model is not None:
            from engine.models.info import inspect_model

            target = describe_loaded(inspect_model(model_path), model)
        report = estimate(target, config, lengths=lengths)
    except LatheError:
        return None
    automatic = getattr(report, "automatic", None)
    if automatic and log:
        notes = [n for n in report.notes if "turned on automatically" in n]
        why = notes[0].split(": ", 1)[-1].rstrip(".") if notes else ""
        log(
            "info",
            "Memory: gradient checkpointing is on for this run (same results, slower steps)"
            + (f": {why}" if why else "")
            + f"; {report.batch_text() or report.needs_text()}. Turn off "
            "training.auto_grad_checkpoint to decide yourself.",
        )
    if report.verdict != "will not fit":
        if log and report.verdict == "tight":
            log(
                "warning",
                f"Memory will be tight: {report.needs_text()}. Other apps may slow training down.",
            )
        elif log and not automatic:
            log("info", f"Memory: {report.summary()}.")
        return report
    needed, offered = report.training_peak_bytes / GB, report.budget_bytes / GB
    message = (
        f"This run needs about {needed:.1f} GB of memory but this machine offers "
        f"{offered:.1f} GB ({report.budget_source}), so it was not started."
    )
    if report.batch_text():
        message = message.replace(
            "so it was not started", f"so it was not started ({report.batch_text()})"
        )
    if getattr(config.training, "ignore_fit_check", False):
        if log:
            log(
                "warning",
                message.replace(
                    "so it was not started",
                    "and it was started anyway because the memory check is turned off",
                )
                + " It may stop when memory runs short.",
            )
        return report
    if report.suggestion is not None:
        hint = (
            f"To make it fit: {report.suggestion.description} (about "
            f"{report.suggestion.training_peak_bytes / GB:.1f} GB)."
        )
    else:
        hint = "Pick a smaller or quantized model, or shorten max_seq_length and the batch size."
    hint += " To start anyway, use `train --force` (or turn off the memory check in settings)."
    error = OutOfMemory(message, hint)
    error.details = {"fit": report.to_dict()}
    raise error


def train_lengths(config, model_dir: str | Path, tokenizer=None) -> list[int]:
    """Token lengths of a run's training examples, encoded as training encodes them (split, chat
    template, prompt masking, truncation to max_seq_length); examples that train no token are left
    out, as training leaves them out. For the memory estimate's largest batch."""
    from engine.data import load_splits
    from engine.data.tokens import load_tokenizer
    from engine.encode import Encoder

    d = config.data
    encoder = Encoder.for_data(
        tokenizer if tokenizer is not None else load_tokenizer(model_dir),
        d,
        config.model.chat_template,
    )
    splits = load_splits(d.path, valid_fraction=d.valid_fraction, seed=config.training.seed)
    lengths = []
    for record in splits.train:
        try:
            enc = encoder.encode(record)
        except (ValueError, TypeError, KeyError):
            continue  # training reports it; the estimate only needs the lengths it will see
        if enc.trained_tokens:
            lengths.append(len(enc))
    return lengths
