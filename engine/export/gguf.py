"""GGUF export for llama.cpp, LM Studio and Ollama, built on mlx-lm's exporter (mlx_lm/gguf.py).

mlx-lm's exporter handles Llama-family weights (llama, mistral, mixtral): it renames tensors,
permutes the query/key projections for llama.cpp's rotary layout and writes F16 with
`mx.save_gguf`. Lathe uses its pieces and adds what a usable file needs: real SentencePiece token
scores (mlx-lm writes -1000 for every token, which breaks llama.cpp's SentencePiece merges), the
chat template, head_dim for models whose heads are not hidden/heads wide, an F32 option, and a
read-back check of every tensor's name and shape with an independent reader.

What it cannot do, it says: other architectures (Qwen, Gemma, Phi, ...) and byte-level BPE
tokenizers (Llama 3, Qwen, GPT-2 style) need llama.cpp's own converter; quantized GGUF types
(Q4_K, Q8_0) need llama.cpp's `llama-quantize` or `ollama create --quantize`. A quantized MLX base
is dequantized and written as F16.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine.export import destination
from engine.export.job import ExportError, ProgressFn, Reporter, private_output
from engine.export.source import AdapterSource, resolve_adapter, resolve_base_model
from engine.models.info import is_model_folder

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "mixtral")
SUPPORTED_TEXT = (
    "GGUF export supports Llama-family models (model types llama, mistral, mixtral) with a "
    "SentencePiece tokenizer, e.g. Llama 2, Mistral 7B, Mixtral, TinyLlama, written as F16 or F32"
)
CONVERT_HINT = (
    "Fuse to an MLX folder (dequantized) and convert that with llama.cpp's convert_hf_to_gguf.py."
)


@dataclass
class GgufCheck:
    tensors: int
    expected_tensors: int
    problems: list[str] = field(default_factory=list)
    values_checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class GgufResult:
    path: Path
    architecture: str
    dtype: str
    size_bytes: int
    tensor_count: int
    vocab_size: int
    chat_template: str | None
    check: GgufCheck
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "architecture": self.architecture,
            "dtype": self.dtype,
            "size_bytes": self.size_bytes,
            "tensor_count": self.tensor_count,
            "vocab_size": self.vocab_size,
            "has_chat_template": bool(self.chat_template),
            "check": {
                "ok": self.check.ok,
                "tensors": self.check.tensors,
                "expected_tensors": self.check.expected_tensors,
                "problems": self.check.problems,
                "values_checked": self.check.values_checked,
            },
            "notes": self.notes,
        }


def unsupported_reason(config: dict, tokenizer_dir: Path) -> str | None:
    """Why this model cannot be written as GGUF here (None when it can)."""
    model_type = config.get("model_type", "?")
    if model_type not in SUPPORTED_ARCHITECTURES:
        return f"{model_type} models cannot be exported to GGUF here. {SUPPORTED_TEXT}."
    if (tokenizer_dir / "tokenizer.model").is_file():
        return None
    try:
        tok = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return f"The model has neither tokenizer.model nor a readable tokenizer.json. {SUPPORTED_TEXT}."
    model = tok.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return None  # a SentencePiece BPE tokenizer converted to tokenizer.json (Llama 2, Mistral)
    return (
        "This model's tokenizer is byte-level BPE (as in Llama 3 and Qwen), which this exporter "
        f"cannot write yet. {SUPPORTED_TEXT}."
    )


def default_out_path(source: AdapterSource | Path, dtype: str) -> Path:
    if isinstance(source, AdapterSource):
        base = source.run_dir / "exports" if source.run_dir else source.adapter_path.parent
        return base / f"{source.label}-{dtype}.gguf"
    return Path(source).parent / f"{Path(source).name}-{dtype}.gguf"


@private_output
def export_gguf(
    spec: str | Path | AdapterSource,
    out: str | Path | None = None,
    *,
    dtype: str = "f16",
    base_model: str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> GgufResult:
    """Write a GGUF file for a run's adapter fused into its base (`RUN[:STEP]`, an adapter folder)
    or for an MLX model folder (e.g. one `fuse` wrote). The file is read back and checked."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if dtype not in ("f16", "f32"):
        raise ExportError(
            f"GGUF type '{dtype}' is not supported.",
            hint="Use f16 or f32; quantize afterwards "
            "with llama.cpp's llama-quantize or `ollama create --quantize q4_K_M`.",
        )
    rep = Reporter(progress, cancel)
    notes: list[str] = []
    folder = Path(str(spec)).expanduser() if not isinstance(spec, AdapterSource) else None
    if folder is not None and folder.is_dir() and is_model_folder(folder):
        from mlx_lm.utils import dequantize_model, load_config, load_model

        config = load_config(folder)
        tokenizer_dir, template, label_source = folder, None, folder.resolve()
        if reason := unsupported_reason(config, tokenizer_dir):
            raise ExportError(reason, hint=CONVERT_HINT)
        rep("load", f"Loading {folder.name}", 0.0)
        model, config = load_model(folder, lazy=True)
        if config.get("quantization"):
            notes.append(
                "The quantized weights were dequantized and written as " + dtype.upper() + "."
            )
            model = dequantize_model(model)
            config.pop("quantization", None)
            config.pop("quantization_config", None)
    else:
        source = spec if isinstance(spec, AdapterSource) else resolve_adapter(spec, base_model)
        from mlx_lm.utils import load_config

        tokenizer_dir = resolve_base_model(source.base_model)
        config = load_config(tokenizer_dir)
        if reason := unsupported_reason(config, tokenizer_dir):
            raise ExportError(reason, hint=CONVERT_HINT)
        if config.get("quantization"):
            notes.append("The quantized base was dequantized and written as " + dtype.upper() + ".")
        model, config, _ = fuse_in_memory_for(source, rep)
        template, label_source = source.chat_template, source
    from engine.export.fuse import base_chat_template

    template = template or base_chat_template(tokenizer_dir)
    out = Path(out).expanduser() if out else default_out_path(label_source, dtype)
    destination.check_file(out, overwrite)

    rep("convert", "Converting tensors to GGUF layout", 0.55)
    weights = dict(tree_flatten(model.parameters()))
    gguf_weights = to_gguf_tensors(weights, config, dtype)
    del model
    rep("convert", "Writing the vocabulary", 0.6)
    metadata = gguf_metadata(config, tokenizer_dir, template, dtype)

    rep("write", f"Writing {out.name}", 0.65)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{secrets.token_hex(3)}.partial.gguf")
    try:
        mx.save_gguf(str(tmp), gguf_weights, metadata)
        rep("check", "Reading the GGUF file back", 0.85)
        check = check_gguf(tmp, gguf_weights, metadata)
        if not check.ok:
            raise ExportError(
                "The written GGUF file does not match the model: " + "; ".join(check.problems[:3])
            )
        rep.check()
        destination.check_file(out, overwrite)  # again: the file may have appeared meanwhile
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    notes.append(
        "Quantize it further with llama.cpp's llama-quantize, or let Ollama do it: "
        "`ollama create NAME --quantize q4_K_M -f Modelfile`."
    )
    result = GgufResult(
        path=out,
        architecture=str(metadata["general.architecture"]),
        dtype=dtype,
        size_bytes=out.stat().st_size,
        tensor_count=len(gguf_weights),
        vocab_size=len(metadata["tokenizer.ggml.tokens"]),
        chat_template=template,
        check=check,
        notes=notes,
    )
    rep("done", f"GGUF written: {out} ({len(gguf_weights)} tensors, checked)", 1.0)
    return result


def fuse_in_memory_for(source: AdapterSource, rep: Reporter):
    from engine.export.fuse import fuse_in_memory

    model, config, base_path, _ = fuse_in_memory(source, dequantize=True, rep=rep.sub(0.0, 0.55))
    return model, config, base_path


def to_gguf_tensors(weights: dict, config: dict, dtype: str) -> dict:
    """mlx-lm's renaming and q/k permutation; matrices in `dtype`, norms and vectors in F32."""
    import mlx.core as mx
    from mlx_lm.gguf import permute_weights, translate_weight_names

    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    out = {}
    for name, w in weights.items():
        if "self_attn.q_proj.weight" in name:
            w = permute_weights(w, heads, heads)
        elif "self_attn.k_proj.weight" in name:
            w = permute_weights(w, heads, kv_heads)
        target = mx.float16 if dtype == "f16" and w.ndim >= 2 else mx.float32
        out[translate_weight_names(name)] = w.astype(target)
    return out


def gguf_metadata(config: dict, tokenizer_dir: Path, template: str | None, dtype: str) -> dict:
    import mlx.core as mx
    from mlx_lm.gguf import prepare_metadata

    metadata = prepare_metadata(config, _vocab_class()(tokenizer_dir))
    metadata["general.file_type"] = mx.array(1 if dtype == "f16" else 0, dtype=mx.uint32)
    metadata["general.quantization_version"] = mx.array(2, dtype=mx.uint32)
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim")
    if head_dim and heads and head_dim != config["hidden_size"] // heads:
        metadata["llama.rope.dimension_count"] = mx.array(head_dim, dtype=mx.uint32)
        metadata["llama.attention.key_length"] = mx.array(head_dim, dtype=mx.uint32)
        metadata["llama.attention.value_length"] = mx.array(head_dim, dtype=mx.uint32)
    if template:
        metadata["tokenizer.chat_template"] = template
    # Lathe's mark: `--force` replaces only a GGUF file that carries it (see destination.py).
    metadata[destination.GGUF_MARK] = destination.MADE_BY
    return metadata


def _sp_scores(tokenizer_dir: Path) -> dict[int, float] | None:
    model_file = tokenizer_dir / "tokenizer.model"
    if not model_file.is_file():
        return None
    try:
        import sentencepiece as spm  # a dependency of mlx-lm
    except ImportError:
        return None
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    return {i: float(sp.GetScore(i)) for i in range(sp.GetPieceSize())}


def _vocab_class():
    from mlx_lm.gguf import HfVocab

    class SentencePieceVocab(HfVocab):
        """mlx-lm's HfVocab with the SentencePiece scores llama.cpp needs to merge correctly."""

        def __init__(self, path: Path):
            super().__init__(path)
            self.scores = _sp_scores(path)

        def get_token_score(self, token_id: int) -> float:
            if self.scores is not None:
                return self.scores.get(token_id, 0.0)
            return -float(token_id)  # BPE pieces of a SentencePiece model are ordered by score

    return SentencePieceVocab


def check_gguf(path: Path, expected: dict, metadata: dict, sample: int = 3) -> GgufCheck:
    """Read `path` back with an independent reader: tensor count, names, shapes, a few values."""
    import numpy as np

    from engine.models.gguf_reader import read_gguf

    info = read_gguf(path)
    check = GgufCheck(tensors=len(info.tensors), expected_tensors=len(expected))
    names = {t.name for t in info.tensors}
    if len(info.tensors) != len(expected):
        check.problems.append(f"{len(info.tensors)} tensors written, {len(expected)} expected")
    for missing in sorted(set(expected) - names)[:5]:
        check.problems.append(f"tensor {missing} is missing")
    for extra in sorted(names - set(expected))[:5]:
        check.problems.append(f"unexpected tensor {extra}")
    for t in info.tensors:
        if t.name in expected and tuple(expected[t.name].shape) != t.shape:
            check.problems.append(
                f"{t.name} has shape {t.shape}, expected {tuple(expected[t.name].shape)}"
            )
    arch = info.metadata.get("general.architecture")
    if arch != metadata.get("general.architecture"):
        check.problems.append(f"architecture is {arch!r}")
    n_tokens = len(info.metadata.get("tokenizer.ggml.tokens", []))
    if n_tokens != len(metadata["tokenizer.ggml.tokens"]):
        check.problems.append(
            f"{n_tokens} vocabulary tokens written, {len(metadata['tokenizer.ggml.tokens'])} expected"
        )
    # Values: the embedding, the first and the last tensor, bit for bit.
    picks = [n for n in ("token_embd.weight",) if n in names]
    picks += [info.tensors[0].name, info.tensors[-1].name]
    for name in list(dict.fromkeys(picks))[:sample]:
        if name not in expected:
            continue
        got = info.read(name)
        want = np.array(expected[name])
        if got.dtype != want.dtype or not np.array_equal(got, want):
            check.problems.append(f"{name} values differ from the model")
        check.values_checked.append(name)
    return check
