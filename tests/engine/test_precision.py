"""How the base model computes on each backend (issue 18, item 2: precision on the CPU backend).

The decision (`choose_compute`) is pure and checked for every backend on every platform; applying it
is checked on a tiny 4-bit model with float16 scales, the kind that has no fast path on MLX's CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.models.precision import ModelPrecision, choose_compute

GB = 1_000_000_000
Q4_FP16 = ModelPrecision("float16", True, (4, 8), "float16", 135_000_000)  # SmolLM2-135M 4-bit
FP16 = ModelPrecision("float16", False, parameters=135_000_000)
BF16 = ModelPrecision("bfloat16", False, parameters=135_000_000)
FP32 = ModelPrecision("float32", False, parameters=135_000_000)


@pytest.mark.parametrize("backend", ["metal", "cuda"])
@pytest.mark.parametrize("precision", [Q4_FP16, FP16, BF16, FP32])
def test_gpu_backends_compute_the_model_as_stored(backend, precision):
    plan = choose_compute(precision, backend, "lora", 24 * GB)
    assert plan.action == "none"
    assert plan.compute_dtype == precision.stored
    assert plan.note == ""


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_cpu_dequantizes_a_quantized_model_to_float32_and_says_why(method):
    plan = choose_compute(Q4_FP16, "cpu", method, 24 * GB)
    assert (plan.action, plan.compute_dtype, plan.stored) == (
        "dequantize",
        "float32",
        "4-bit (float16 scales)",
    )
    assert plan.quantized
    assert "CPU" in plan.note and "float32" in plan.note and "adapter" in plan.note


@pytest.mark.parametrize("precision", [FP16, BF16])
def test_cpu_computes_a_half_precision_model_in_float32(precision):
    plan = choose_compute(precision, "cpu", "lora", 24 * GB)
    assert (plan.action, plan.compute_dtype, plan.quantized) == ("upcast", "float32", False)
    assert precision.weight_dtype in plan.note


def test_cpu_leaves_a_float32_model_alone_without_a_note():
    plan = choose_compute(FP32, "cpu", "lora", 24 * GB)
    assert (plan.action, plan.compute_dtype, plan.note) == ("none", "float32", "")


def test_full_fine_tuning_of_a_quantized_model_keeps_its_layers_with_float32_scales():
    plan = choose_compute(Q4_FP16, "cpu", "full", 24 * GB)
    assert plan.action == "upcast_scales"
    assert plan.compute_dtype == "4-bit (float32 scales)"
    assert "slow" in plan.note


def test_a_model_too_large_for_float32_in_memory_is_not_expanded():
    seven_b = 7_000_000_000
    q4 = ModelPrecision("float16", True, (4,), "float16", seven_b)
    plan = choose_compute(q4, "cpu", "lora", 24 * GB)  # 28 GB in float32 on a 24 GB machine
    assert plan.action == "upcast_scales"
    assert "28.0 GB" in plan.note and "memory" in plan.note
    fp16 = ModelPrecision("float16", False, parameters=seven_b)
    plan = choose_compute(fp16, "cpu", "lora", 24 * GB)
    assert plan.action == "none" and "memory" in plan.note
    # Unknown memory (0) applies no limit.
    assert choose_compute(q4, "cpu", "lora", 0).action == "dequantize"


@pytest.fixture(scope="module")
def tiny_4bit_fp16(tmp_path_factory, tiny_chat_model) -> Path:
    """The tiny chat model in float16, quantized to 4 bits (float16 scales, like mlx-community's)."""
    from mlx_lm.convert import convert

    out = tmp_path_factory.mktemp("q") / "tiny-4bit-fp16"
    convert(
        str(tiny_chat_model),
        mlx_path=str(out),
        quantize=True,
        q_bits=4,
        q_group_size=32,
        dtype="float16",
    )
    return out


def test_dequantizing_for_the_cpu_is_exact_and_leaves_a_gpu_model_untouched(tiny_4bit_fp16):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm import load

    from engine.models.precision import inspect_loaded, prepare_for_backend

    model, _ = load(str(tiny_4bit_fp16))
    precision = inspect_loaded(model)
    assert precision.quantized and precision.bits == (4,) and precision.scales_dtype == "float16"
    q = model.layers[0].self_attn.q_proj
    expected = mx.dequantize(q.weight, q.scales, q.biases, q.group_size, q.bits).astype(mx.float32)
    x = mx.array([[1, 5, 9, 42, 7]])
    quantized_logits = model(x).astype(mx.float32)

    same, plan = prepare_for_backend(model, "lora", backend="metal")
    assert same is model and plan.action == "none"

    model, plan = prepare_for_backend(model, "lora", backend="cpu")
    assert plan.action == "dequantize" and plan.compute_dtype == "float32"
    assert not any(
        isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()
    )
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float32}
    assert mx.array_equal(model.layers[0].self_attn.q_proj.weight, expected)
    logits = model(x)
    # The quantized path computes in float16; float32 differs only by that rounding.
    assert mx.allclose(logits, quantized_logits, atol=0.05, rtol=0.02)
    assert mx.array_equal(logits.argmax(-1), quantized_logits.argmax(-1))


@pytest.mark.slow
def test_a_cpu_run_on_a_4bit_model_trains_in_float32_says_so_and_its_adapter_loads_on_the_4bit_model(
    tiny_4bit_fp16, tmp_path
):
    import mlx.core as mx
    from mlx_lm import load

    from engine import events
    from engine.config import RunConfig
    from engine.runs import create_run
    from engine.train import run
    from tests.helpers import completion_data

    if mx.default_device().type == mx.DeviceType.gpu:
        pytest.skip("checks the CPU backend's choice")
    cfg = RunConfig()
    cfg.model.path = str(tiny_4bit_fp16)
    cfg.data.path = str(completion_data(tmp_path / "data"))
    cfg.lora.num_layers = -1
    cfg.training.iters = 4
    cfg.training.save_every = 4
    cfg.training.report_utilisation = False
    recorder = events.Recorder()
    run_dir = create_run(cfg)
    assert run(cfg, run_dir, recorder) == "completed"

    kinds = [e["event"] for e in recorder.events]
    started = next(e for e in recorder.events if e["event"] == "started")
    note = next(
        i
        for i, e in enumerate(recorder.events)
        if e["event"] == "log" and "float32" in e["message"]
    )
    assert note < kinds.index("started")  # said before the run
    assert started["config"]["compute_dtype"] == "float32"
    assert started["config"]["stored_dtype"] == "4-bit (float16 scales)"
    assert started["config"]["method"] == "qlora" and started["config"]["quantized"]
    assert "float32" in started["config"]["compute_note"]

    # The adapter is an ordinary LoRA adapter of the 4-bit model, as stored.
    model, _ = load(str(tiny_4bit_fp16), adapter_path=str(run_dir / "adapters"))
    lora = model.layers[0].self_attn.q_proj
    assert type(lora).__name__ == "LoRALinear"
    assert type(lora.linear).__name__ == "QuantizedLinear"
    assert lora.linear.scales.dtype == mx.float16
