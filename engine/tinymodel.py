"""Build tiny, random-weight models locally: for tests, benchmarks and the offline demo.

A Llama or Qwen2 config with a few layers, a byte-level BPE tokenizer trained on the spot with
`tokenizers` (a dependency of transformers, so always installed), optionally a ChatML chat
template. The folder loads with `mlx_lm.load` like any downloaded model.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.templates import CHATML_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a little girl named Lily who loved to play outside.",
    "What is the fee for an international transfer? The fee is 5 euros per transfer.",
    "How long does a transfer take? Transfers within the country arrive the same day.",
    'Please answer in JSON: {"name": "value", "count": 3}.',
    "You are a helpful assistant. Answer briefly and politely.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}<>/\\-_=+*&^%$#@~`|",
]


def train_tokenizer(texts: list[str], vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_tiny_model(
    path: str | Path,
    *,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    max_position_embeddings: int = 1024,
    chat_template: bool = True,
    extra_texts: list[str] | None = None,
    seed: int = 0,
    model_vocab_size: int | None = None,
    tie_word_embeddings: bool = True,
    dtype: str = "float32",
) -> Path:
    """Write a tiny random-weight model folder at `path` and return it.

    `model_vocab_size` pads the embedding table beyond the tokenizer's vocabulary, as many real
    models do (benchmarks use it to give the output layer a real model's share of the work).
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(_CORPUS + list(extra_texts or []), vocab_size)
    tok.save(str(path / "tokenizer.json"))
    real_vocab = tok.get_vocab_size()
    eos = "<|im_end|>" if chat_template else "<|endoftext|>"
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": eos,
        "pad_token": "<|endoftext|>",
        "model_max_length": max_position_embeddings,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template:
        tok_cfg["chat_template"] = CHATML_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))

    if arch not in ("llama", "qwen2"):
        raise ValueError("arch must be llama or qwen2")
    config = {
        "model_type": arch,
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "vocab_size": max(real_vocab, model_vocab_size or 0),
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": tie_word_embeddings,
        "hidden_act": "silu",
        "eos_token_id": tok.token_to_id(eos),
        "torch_dtype": dtype,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))

    if arch == "llama":
        from mlx_lm.models.llama import Model, ModelArgs
    else:
        from mlx_lm.models.qwen2 import Model, ModelArgs
    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(config))
    weights = {k: v.astype(getattr(mx, dtype)) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path
