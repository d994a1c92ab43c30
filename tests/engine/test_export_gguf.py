"""GGUF: written for a supported architecture and read back; unsupported ones say what is."""

from __future__ import annotations

import numpy as np
import pytest

from engine.export import ExportError, export_gguf
from engine.models.gguf_reader import GgufFormatError, read_gguf
from engine.templates import DEFAULT_CHAT_TEMPLATE
from tests.helpers import make_export_run


@pytest.fixture(scope="module")
def stories_run(tmp_path_factory, stories_path):
    return make_export_run(
        stories_path, tmp_path_factory.mktemp("runs"), "stories-g", template=DEFAULT_CHAT_TEMPLATE
    )


def test_stories_gguf_is_written_and_reads_back(stories_run, stories_path, tmp_path):
    import mlx.core as mx
    import sentencepiece as spm

    from engine.export import fuse

    result = export_gguf(str(stories_run), tmp_path / "stories.gguf")
    assert result.check.ok and result.architecture == "llama"
    info = read_gguf(result.path)  # independent of the writer
    assert info.version == 3
    # 5 layers x 9 tensors + embedding + final norm; tied embeddings: no separate output tensor.
    assert len(info.tensors) == result.tensor_count == 5 * 9 + 2
    shapes = {t.name: t.shape for t in info.tensors}
    assert shapes["token_embd.weight"] == (512, 64)
    assert shapes["blk.0.attn_k.weight"] == (32, 64)  # 4 kv heads x head_dim 8
    assert shapes["blk.4.ffn_down.weight"] == (64, 172)
    assert {t.type for t in info.tensors} == {"F16", "F32"}
    assert info.tensor("output_norm.weight").type == "F32"
    meta = info.metadata
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 5
    assert meta["llama.attention.head_count_kv"] == 4 and meta["general.file_type"] == 1
    assert len(meta["tokenizer.ggml.tokens"]) == 512 and meta["tokenizer.ggml.bos_token_id"] == 1
    assert meta["tokenizer.chat_template"] == DEFAULT_CHAT_TEMPLATE
    # Real SentencePiece scores (mlx-lm alone writes -1000 for every token).
    sp = spm.SentencePieceProcessor(model_file=str(stories_path / "tokenizer.model"))
    assert meta["tokenizer.ggml.scores"][300] == pytest.approx(sp.GetScore(300))
    # The adapter is in the file: v_proj (not permuted) equals the fused weights in F16.
    fused = fuse(str(stories_run), tmp_path / "fused", dequantize=True, check=False)
    weights = mx.load(str(fused.path / "model.safetensors"))
    want = np.array(weights["model.layers.4.self_attn.v_proj.weight"].astype(mx.float16))
    assert np.array_equal(info.read("blk.4.attn_v.weight"), want)
    base = mx.load(str(stories_path / "model.safetensors"))
    assert not np.array_equal(
        want, np.array(base["model.layers.4.self_attn.v_proj.weight"].astype(mx.float16))
    )


def test_fused_mlx_folder_exports_as_f32(stories_run, tmp_path):
    from engine.export import fuse

    fused = fuse(str(stories_run), tmp_path / "fused", dequantize=True, check=False)
    result = export_gguf(str(fused.path), tmp_path / "f32.gguf", dtype="f32")
    info = read_gguf(result.path)
    assert {t.type for t in info.tensors} == {"F32"} and info.metadata["general.file_type"] == 0
    assert (
        info.metadata["tokenizer.chat_template"] == DEFAULT_CHAT_TEMPLATE
    )  # carried by the fused folder


def test_unsupported_models_name_what_is_supported(tiny_qwen_model, tiny_chat_model, tmp_path):
    with pytest.raises(ExportError) as err:
        export_gguf(str(tiny_qwen_model), tmp_path / "q.gguf")
    assert "qwen2" in str(err.value) and "llama, mistral, mixtral" in str(err.value)
    with pytest.raises(ExportError, match="byte-level BPE"):
        export_gguf(str(tiny_chat_model), tmp_path / "l.gguf")
    assert not list(tmp_path.glob("*.gguf"))
    with pytest.raises(ExportError, match="f16 or f32"):
        export_gguf(str(tiny_chat_model), tmp_path / "x.gguf", dtype="q4_0")


def test_reader_rejects_other_files(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(GgufFormatError, match="not a GGUF"):
        read_gguf(bad)
