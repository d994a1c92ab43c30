"""Import a GGUF file (llama.cpp, Ollama, LM Studio) as an MLX model folder Lathe can train.

MLX trains from safetensors folders, so the GGUF is converted once into `workspace/models/<name>/`
(a "converted" library entry: the user's file is only read). What is built, and from what:
- config.json from the `<arch>.*` metadata (llama and qwen2 architectures; Mistral GGUFs say
  llama), with `quantization` per module where bits differ (e.g. an 8-bit embedding, 4-bit layers).
- weights renamed to Hugging Face names; Q4_0/Q4_1/Q8_0/Q4_K kept quantized (MLX affine, group 32),
  every other type dequantized (gguf_tensors.py). llama.cpp's converter reorders the rows of the
  llama query and key projections for its rotary layout; that is undone here.
- tokenizer.json built with `tokenizers` from the vocabulary in the metadata: byte-level BPE
  ("gpt2": tokens + merges, the pre-tokenizer chosen by `tokenizer.ggml.pre`) or SentencePiece BPE
  ("llama": tokens + scores, merges recovered from the scores as transformers does), and
  tokenizer_config.json with the special tokens and `tokenizer.chat_template`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from engine import workspace
from engine.errors import ModelError
from engine.models import library
from engine.models.gguf_reader import GgufFormatError, GgufInfo, read_gguf

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# GGUF tensor name (after `blk.N.`) -> Hugging Face module name (after `model.layers.N.`)
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp), as Hugging Face tokenizer.json parts.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_DIGITS = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}
_PRE_GPT2 = {"gpt-2", "gpt2", "default", "phi-2", "jina-es", "jina-de", "olmo", "jais"}
_PRE_LLAMA3 = {"llama3", "llama-bpe", "llama-v3", "falcon3", "dbrx", "smaug-bpe"}
_PRE_QWEN2 = {"qwen2", "deepseek-r1-qwen", "megrez"}

ProgressFn = Callable[[str, float], None]


def import_gguf(
    path: str | Path,
    name: str | None = None,
    *,
    progress: ProgressFn | None = None,
    source_label: str | None = None,
) -> library.LibraryEntry:
    """Convert the GGUF at `path` into a library model and return its entry.

    `progress(stage, fraction)` is called as it goes. Importing the same file again returns the
    model already made from it (same path, size and modification time)."""
    from engine.models.info import validate_model_dir

    src = Path(path).expanduser().resolve()
    if not src.is_file():
        raise ModelError(f"{src} does not exist or is not a file.")
    report = progress or (lambda stage, fraction: None)
    try:
        info = read_gguf(src)
        info.check_complete()
    except GgufFormatError as exc:
        raise ModelError(f"{src} cannot be read as GGUF: {exc}") from None
    stamp = {"size": src.stat().st_size, "mtime": src.stat().st_mtime}
    for existing in _converted_from(src, stamp):
        return existing
    report("reading", 0.0)
    config = gguf_config(info)
    tokenizer_json, tokenizer_config, notes = gguf_tokenizer(info)
    label = source_label or str(info.metadata.get("general.name") or src.stem)
    new_name = library.new_converted_name(name or _default_name(src, label))
    final = library.converted_dir(new_name)
    need, free = output_bytes(info, config), shutil.disk_usage(final.parent).free
    if need > free:
        raise ModelError(
            f"Importing {src.name} needs about {need / 1e9:.1f} GB in {final.parent}, and "
            f"{free / 1e9:.1f} GB are free.",
            "Free some disk space, or choose a Q4_0/Q4_1/Q8_0 version of the model (those stay "
            "quantized; other types are stored as 16-bit).",
        )
    tmp = final.with_name(f".{final.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, mode=workspace.DIR_MODE)
    try:
        bits: dict[str, int | None] = {}
        write_shards(
            tmp,
            GgufWeights(info, config, bits),
            lambda f: report("converting", 0.02 + 0.95 * f),
        )
        if quant := _quantization(bits):
            config["quantization"] = quant
            config["quantization_config"] = quant
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        library.write_meta(
            tmp,
            {
                "source": str(src),
                "created": time.time(),
                "op": "gguf-import",
                "gguf": {
                    **stamp,
                    "name": label,
                    "file_type": _file_type(info),
                    "tensor_types": dict(Counter(t.type for t in info.tensors)),
                },
                "notes": notes,
            },
        )
        validate_model_dir(tmp)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report("done", 1.0)
    return library.converted_entry(final)


def output_bytes(info: GgufInfo, config: dict) -> int:
    """About how many bytes the converted folder takes: kept-quantized tensors as in the file
    (plus MLX's scales and biases), everything else at 2 bytes (4 for a float32 model) a value."""
    from engine.models.gguf_tensors import KEPT_QUANTIZED

    width = 4 if config.get("torch_dtype") == "float32" else 2
    total = 0
    for t in info.tensors:
        if t.type in KEPT_QUANTIZED:
            total += t.n_elements * KEPT_QUANTIZED[t.type] // 8 + t.n_elements // 32 * 4
        else:
            total += t.n_elements * width
    return total


def _converted_from(src: Path, stamp: dict):
    root = workspace.models_dir()
    for meta_path in sorted(root.glob(f"*/{library.META}")):
        meta = workspace.read_json(meta_path, default={}) or {}
        gg = meta.get("gguf") or {}
        if (
            meta.get("op") == "gguf-import"
            and meta.get("source") == str(src)
            and gg.get("size") == stamp["size"]
            and gg.get("mtime") == stamp["mtime"]
        ):
            yield library.converted_entry(meta_path.parent)


def _default_name(src: Path, label: str) -> str:
    # A .gguf file's own name; an Ollama blob (sha256-...) has none worth keeping.
    return src.stem if src.suffix.lower() == ".gguf" else label


def _file_type(info: GgufInfo) -> str:
    counts = Counter(t.type for t in info.tensors if len(t.shape) >= 2)
    return counts.most_common(1)[0][0] if counts else "?"


# ---------------------------------------------------------------------------------------------
# config.json


def _meta_int(meta: dict, key: str, default=None):
    value = meta.get(key, default)
    if isinstance(value, list):  # per-layer values (some files): all equal for these models
        value = value[0] if value else default
    return None if value is None else int(value)


def gguf_config(info: GgufInfo) -> dict:
    """A Hugging Face config.json for the model in `info` (ModelError for an unsupported one)."""
    meta = info.metadata
    arch = str(meta.get("general.architecture", "?"))
    if arch not in ARCHITECTURES:
        raise ModelError(
            f"{info.path.name} is a '{arch}' model; Lathe imports GGUF files of the llama "
            "(Llama, Mistral, SmolLM, TinyLlama, ...) and qwen2 (Qwen 2 / 2.5) architectures.",
            "Download the model's safetensors version instead (models download ID).",
        )
    p = f"{arch}."
    try:
        hidden = _meta_int(meta, p + "embedding_length")
        heads = _meta_int(meta, p + "attention.head_count")
        layers = _meta_int(meta, p + "block_count")
        ffn = _meta_int(meta, p + "feed_forward_length")
    except (TypeError, ValueError):
        hidden = heads = layers = ffn = None
    if not (hidden and heads and layers and ffn):
        raise ModelError(
            f"{info.path.name} lacks the {arch}.embedding_length / attention.head_count / "
            "block_count / feed_forward_length metadata a model needs."
        )
    try:
        embed = info.tensor("token_embd.weight")
    except KeyError:
        raise ModelError(f"{info.path.name} has no token_embd.weight tensor.") from None
    kv_heads = _meta_int(meta, p + "attention.head_count_kv", heads)
    head_dim = _meta_int(meta, p + "attention.key_length") or hidden // heads
    names = {t.name for t in info.tensors}
    config = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": _meta_int(meta, p + "context_length", 4096),
        "rms_norm_eps": float(meta.get(p + "attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(meta.get(p + "rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(meta, p),
        "tie_word_embeddings": "output.weight" not in names,
        "vocab_size": embed.shape[0],
        "hidden_act": "silu",
    }
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in names
        config["mlp_bias"] = "blk.0.ffn_up.bias" in names
    for key, meta_key in (
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ):
        if meta_key in meta:
            config[key] = int(meta[meta_key])
    float_types = {t.type for t in info.tensors if len(t.shape) >= 2}
    config["torch_dtype"] = (
        "bfloat16" if "BF16" in float_types else "float32" if float_types == {"F32"} else "float16"
    )
    if "rope_freqs.weight" in names:
        factors = info.read("rope_freqs.weight").astype("float64")
        config["rope_scaling"] = llama3_rope_scaling(factors, config["rope_theta"], head_dim)
        if config["rope_scaling"] is None:
            raise ModelError(
                f"{info.path.name} carries per-frequency rotary factors (rope_freqs) that match no "
                "Llama 3 rope scaling Lathe knows.",
                "Download the model's safetensors version instead (models download ID).",
            )
    return config


def llama3_rope_factors(base: float, dim: int, scaling: dict):
    """The rope_freqs tensor llama.cpp's converter writes for a Llama 3.1+ `rope_scaling`."""
    import numpy as np

    freqs = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * np.pi / freqs
    smooth = (old / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, mid))


def llama3_rope_scaling(factors, base: float, dim: int) -> dict | None:
    """The Llama 3 `rope_scaling` whose factors are `factors` (GGUF keeps only the tensor):
    factor is the largest one; the other three come from the values Meta's releases use."""
    import numpy as np

    if factors.shape != (dim // 2,) or not np.isfinite(factors).all():
        return None
    factor = float(np.float32(factors.max()))
    for old in (8192, 4096, 16384, 32768, 65536, 131072):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (1.0, 8.0), (2.0, 8.0)):
            scaling = {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": old,
            }
            if np.allclose(llama3_rope_factors(base, dim, scaling), factors, rtol=1e-5):
                return scaling
    return None


def _rope_scaling(meta: dict, p: str) -> dict | None:
    kind = meta.get(p + "rope.scaling.type")
    factor = meta.get(p + "rope.scaling.factor")
    if not kind or kind == "none" or not factor:
        return None
    if kind == "linear":
        return {"type": "linear", "factor": float(factor)}
    if kind == "yarn":
        out = {"type": "yarn", "factor": float(factor)}
        orig = meta.get(p + "rope.scaling.original_context_length")
        if orig:
            out["original_max_position_embeddings"] = int(orig)
        return out
    raise ModelError(f"Rotary scaling '{kind}' in the GGUF metadata is not supported.")


# ---------------------------------------------------------------------------------------------
# Weights


def _hf_name(gguf_name: str) -> tuple[str, str] | None:
    """(module, suffix) of a GGUF tensor name, or None for a tensor the model does not use."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        if part not in LAYER_NAMES:
            return None
        return f"model.layers.{layer}.{LAYER_NAMES[part]}", suffix
    if stem in TOP_NAMES:
        return TOP_NAMES[stem], suffix
    return None


SHARD_BYTES = 5 * 1024**3  # as mlx-lm's make_shards


def write_shards(folder: Path, parts, progress) -> int:
    """Save the tensors `parts` yields (name -> mx.array dicts, with `len(parts)`) as safetensors
    shards of at most SHARD_BYTES plus an index, holding one shard in memory at a time (a
    dequantized 7B model would not fit whole). Returns the bytes written."""
    import mlx.core as mx

    files: list[tuple[str, list[str]]] = []
    shard: dict = {}
    size = total = 0

    def flush() -> None:
        nonlocal shard, size
        name = f".part-{len(files) + 1}.safetensors"
        mx.save_safetensors(str(folder / name), shard, metadata={"format": "mlx"})
        files.append((name, list(shard)))
        shard, size = {}, 0

    n = len(parts)
    for i, tensors in enumerate(parts):
        nbytes = sum(v.nbytes for v in tensors.values())
        if shard and size + nbytes > SHARD_BYTES:
            flush()
        shard.update(tensors)
        size += nbytes
        total += nbytes
        progress((i + 1) / n)
    if shard:
        flush()
    weight_map = {}
    for k, (part_name, keys) in enumerate(files):
        final = (
            "model.safetensors"
            if len(files) == 1
            else f"model-{k + 1:05d}-of-{len(files):05d}.safetensors"
        )
        (folder / part_name).rename(folder / final)
        weight_map.update({key: final for key in keys})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


class GgufWeights:
    """The model's tensors one GGUF tensor at a time, as {Hugging Face name: mx.array} (weight,
    and scales/biases for a kept-quantized one); each module's bits (None: float) go into `bits`.
    Tensors a llama/qwen2 model does not have are refused before anything is converted."""

    def __init__(self, info: GgufInfo, config: dict, bits: dict):
        self.info, self.config, self.bits = info, config, bits
        self.tensors = [t for t in info.tensors if t.name != "rope_freqs.weight"]
        unused = [t.name for t in self.tensors if _hf_name(t.name) is None]
        if unused:
            arch = config["model_type"]
            raise ModelError(
                f"{info.path.name} holds tensors a {arch} model does not have "
                f"({', '.join(unused[:3])}), so it is not a plain {arch} language model.",
            )

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self):
        import mlx.core as mx
        import numpy as np

        from engine.models.gguf_tensors import convert_tensor, unpermute_rotary

        config = self.config
        dtype = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}[
            config["torch_dtype"]
        ]
        perms = {
            "attn_q": unpermute_rotary(config["num_attention_heads"]),
            "attn_k": unpermute_rotary(config["num_key_value_heads"]),
        }
        for t in self.tensors:
            module, suffix = _hf_name(t.name)
            c = convert_tensor(self.info, t)
            part = t.name.split(".")[2] if t.name.startswith("blk.") else ""
            if config["model_type"] == "llama" and part in perms:
                c = c.rows_permuted(perms[part])
            if c.weight.dtype == np.uint32:  # packed quantized weights
                w = mx.array(c.weight)
            elif c.bfloat16:
                w = mx.array(c.weight).view(mx.bfloat16).astype(dtype)
            else:
                w = mx.array(c.weight).astype(dtype)
            out = {f"{module}.{suffix}": w}
            if suffix == "weight" and len(t.shape) >= 2:
                self.bits[module] = c.bits
            if c.scales is not None:
                out[f"{module}.scales"] = mx.array(c.scales)
                out[f"{module}.biases"] = mx.array(c.biases)
            mx.eval(out)
            yield out


def _quantization(bits: dict[str, int | None]) -> dict | None:
    quantized = {m: b for m, b in bits.items() if b}
    if not quantized:
        return None
    common = Counter(quantized.values()).most_common(1)[0][0]
    quant: dict = {"group_size": 32, "bits": common, "mode": "affine"}
    for module, b in sorted(bits.items()):
        if b and b != common:
            quant[module] = {"group_size": 32, "bits": b, "mode": "affine"}
    # Modules kept as float matrices need no entry: mlx-lm quantizes a module only where the
    # weights have `.scales` (or the config names it).
    return quant


# ---------------------------------------------------------------------------------------------
# Tokenizer


def gguf_tokenizer(info: GgufInfo) -> tuple[dict, dict, list[str]]:
    """(tokenizer.json, tokenizer_config.json, notes) from the vocabulary in the GGUF metadata."""
    meta = info.metadata
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelError(f"{info.path.name} carries no vocabulary (tokenizer.ggml.tokens).")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    notes: list[str] = []
    if model == "gpt2":
        tok, add_bos_default = _bpe_tokenizer(meta, tokens, types, notes), False
    elif model == "llama":
        tok, add_bos_default = _sentencepiece_tokenizer(meta, tokens, types), True
    else:
        raise ModelError(
            f"{info.path.name} uses a '{model}' tokenizer; Lathe's GGUF import reads byte-level "
            "BPE ('gpt2') and SentencePiece ('llama') vocabularies.",
            "Download the model's safetensors version instead (models download ID).",
        )

    def special(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    bos, eos = special("bos"), special("eos")
    if add_bos and bos or add_eos and eos:
        single = ([{"SpecialToken": {"id": bos, "type_id": 0}}] if add_bos and bos else []) + [
            {"Sequence": {"id": "A", "type_id": 0}}
        ]
        if add_eos and eos:
            single.append({"SpecialToken": {"id": eos, "type_id": 0}})
        specials = {
            t: {"id": t, "ids": [tokens.index(t)], "tokens": [t]}
            for t in {bos if add_bos else None, eos if add_eos else None} - {None}
        }
        pair = single + [{"Sequence": {"id": "B", "type_id": 1}}]
        processor = {"type": "TemplateProcessing", "single": single, "pair": pair}
        processor["special_tokens"] = specials
        if model == "gpt2":
            tok["post_processor"] = {
                "type": "Sequence",
                "processors": [tok["post_processor"], processor],
            }
        else:
            tok["post_processor"] = processor
    tok_cfg: dict = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _meta_int(
            meta, f"{meta.get('general.architecture')}.context_length", 4096
        ),
    }
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token")):
        if value := special(key):
            tok_cfg[name] = value
    tok_cfg["pad_token"] = special("padding") or tok_cfg.get("eos_token")
    if template := meta.get("tokenizer.chat_template"):
        tok_cfg["chat_template"] = template
    return tok, tok_cfg, notes


def _added_tokens(tokens: list[str], types: list[int], normalized: bool) -> list[dict]:
    # 3: control (special), 4: user-defined (added, not special); see llama.cpp's token types.
    return [
        {
            "id": i,
            "content": tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": normalized and types[i] == 4,
            "special": types[i] == 3,
        }
        for i in range(len(tokens))
        if types[i] in (3, 4)
    ]


def _bpe_tokenizer(meta: dict, tokens: list[str], types: list[int], notes: list[str]) -> dict:
    merges = meta.get("tokenizer.ggml.merges")
    if not merges:
        raise ModelError("The GGUF's byte-level BPE vocabulary has no merges.")
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    if pre in _PRE_DIGITS:
        pre_tok = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {**byte_level, "use_regex": True},
            ],
        }
    elif pre in _PRE_LLAMA3 or pre in _PRE_QWEN2:
        regex = _LLAMA3_REGEX if pre in _PRE_LLAMA3 else _QWEN2_REGEX
        pre_tok = {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": regex},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {**byte_level, "use_regex": False},
            ],
        }
    else:
        if pre not in _PRE_GPT2:
            notes.append(
                f"Pre-tokenizer '{pre}' is not one Lathe knows; GPT-2's was used, so text may "
                "split slightly differently than in llama.cpp."
            )
        pre_tok = {**byte_level, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(tokens, types, normalized=False),
        "normalizer": {"type": "NFC"} if pre in _PRE_QWEN2 else None,
        "pre_tokenizer": pre_tok,
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": pre in _PRE_LLAMA3,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }


def _sentencepiece_tokenizer(meta: dict, tokens: list[str], types: list[int]) -> dict:
    """A SentencePiece BPE vocabulary as tokenizer.json, the way transformers' LlamaConverter
    writes it (byte fallback, "▁" for spaces), with merges recovered from the piece scores."""
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    unk_id = int(meta.get("tokenizer.ggml.unknown_token_id", 0))
    mergeable = {t: s for t, s, ty in zip(tokens, scores, types) if ty == 1}
    merges = []
    for piece, score in mergeable.items():
        local = [
            (piece[:i], piece[i:], score)
            for i in range(1, len(piece))
            if piece[:i] in mergeable and piece[i:] in mergeable
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2], reverse=True)  # stable: ties keep the order above
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(tokens, types, normalized=True),
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Metaspace",
            "replacement": "▁",
            "prepend_scheme": "first" if prefix else "never",
            "split": False,
        },
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ]
            + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if prefix else []),
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": tokens[unk_id] if 0 <= unk_id < len(tokens) else None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[a, b] for a, b, _ in merges],
        },
    }
