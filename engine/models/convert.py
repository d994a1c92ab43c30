"""Quantize (4/8-bit) and dequantize models through mlx-lm, as new library entries.

Uses mlx-lm's own pieces (`load_model`, `quantize_model`, `dequantize_model`, `make_shards`,
`save_config`) so the result is what `mlx_lm.convert` writes, with three differences: progress is
reported tensor by tensor while the shards are written, no Python files are copied from the source
(Lathe never carries model code around), and the folder is built under a temporary name and renamed
into `workspace/models/<name>/` only when complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import workspace
from engine.errors import ModelError
from engine.models import library
from engine.models.info import validate_model_dir

BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tiktoken.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


@dataclass
class ConvertProgress:
    """stage is "loading", "converting", "writing" or "done"; bytes refer to the written weights."""

    stage: str
    done_bytes: int
    total_bytes: int

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0


def _is_quantized(config: dict) -> bool:
    q = config.get("quantization") or config.get("quantization_config")
    return isinstance(q, dict) and "bits" in q


def quantize(
    model: str | Path,
    bits: int = 4,
    group_size: int = 64,
    *,
    name: str | None = None,
    progress: Callable[[ConvertProgress], None] | None = None,
) -> library.LibraryEntry:
    """Write a `bits`-bit copy of `model` (path or library name) to the library and return it."""
    if bits not in BITS:
        raise ModelError(f"bits must be 4 or 8, not {bits}.")
    if group_size not in GROUP_SIZES:
        raise ModelError(f"group size must be 32, 64 or 128, not {group_size}.")
    src = library.resolve(model)
    config = validate_model_dir(src)
    if _is_quantized(config):
        raise ModelError(
            f"{src.name} is already quantized.",
            "Dequantize it first, or quantize the original model.",
        )
    base = name or f"{src.name}-{bits}bit" + ("" if group_size == 64 else f"-g{group_size}")
    return _convert(src, base, {"op": "quantize", "bits": bits, "group_size": group_size}, progress)


def dequantize(
    model: str | Path,
    *,
    name: str | None = None,
    progress: Callable[[ConvertProgress], None] | None = None,
) -> library.LibraryEntry:
    """Write a 16-bit (unquantized) copy of a quantized `model` to the library and return it."""
    src = library.resolve(model)
    config = validate_model_dir(src)
    if not _is_quantized(config):
        raise ModelError(f"{src.name} is not quantized; there is nothing to dequantize.")
    base = name or f"{src.name.removesuffix('-4bit').removesuffix('-8bit')}-dequantized"
    return _convert(src, base, {"op": "dequantize"}, progress)


def _convert(src: Path, base: str, op: dict, progress) -> library.LibraryEntry:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model, load_model, make_shards, quantize_model, save_config

    def report(stage: str, done: int = 0, total: int = 0) -> None:
        if progress is not None:
            progress(ConvertProgress(stage, done, total))

    name = library.new_converted_name(base)
    final = library.converted_dir(name)
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    report("loading")
    model, config = load_model(src, lazy=True)
    report("converting")
    # mlx-lm prints its bits-per-weight line; keep stdout clean for --json callers.
    with contextlib.redirect_stdout(io.StringIO()):
        if op["op"] == "quantize":
            model, config = quantize_model(model, config, op["group_size"], op["bits"])
        else:
            config.pop("quantization", None)
            config.pop("quantization_config", None)
            model = dequantize_model(model)

    weights = dict(tree_flatten(model.parameters()))
    total = sum(v.nbytes for v in weights.values())
    shards = make_shards(weights)
    del weights
    tmp.mkdir(parents=True, mode=workspace.DIR_MODE)
    try:
        fmt = "model-{:05d}-of-{:05d}.safetensors" if len(shards) > 1 else "model.safetensors"
        weight_map: dict[str, str] = {}
        done = 0
        report("writing", 0, total)
        for i, shard in enumerate(shards):
            for value in shard.values():
                mx.eval(value)  # the lazy quantization of this tensor happens here
                done += value.nbytes
                report("writing", done, total)
            shard_name = fmt.format(i + 1, len(shards))
            mx.save_safetensors(str(tmp / shard_name), shard, metadata={"format": "mlx"})
            weight_map.update({k: shard_name for k in shard})
            shards[i] = None
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        save_config(config, config_path=tmp / "config.json")
        for fname in COPIED_FILES:
            if (src / fname).is_file():
                shutil.copyfile(src / fname, tmp / fname)
        library.write_meta(
            tmp,
            {"source": str(src), "created": time.time(), **op},
        )
        validate_model_dir(tmp)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report("done", total, total)
    return library.converted_entry(final)
