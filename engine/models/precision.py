"""How a loaded model computes on this backend: its weights as stored, or in float32 on a CPU.

On a GPU (Metal, CUDA) MLX has fast kernels for float16/bfloat16 matmuls and for quantized matmuls,
so a model computes as it is stored. MLX's CPU backend multiplies float32 matrices through BLAS, but
has no fast path for quantized matmuls with float16 scales and runs float16/bfloat16 matmuls far
slower than float32 (bench/cpu_precision.py measures all of it on SmolLM2-135M 4-bit). There the
frozen base is computed in float32: a quantized model is dequantized (exactly: float32 holds every
value a 4-bit group with float16 scale and bias produces), a float16/bfloat16 model is cast up. The
LoRA adapter is the same adapter, and it loads on the stored model with
`mlx_lm.load(model, adapter_path=...)`. Full fine-tuning of a quantized model keeps its layers
(their trained weights must stay loadable on the stored model); only the scales go to float32.

`choose_compute` is the decision (pure, tested on every platform); `prepare_for_backend` applies it
to a loaded model. Training (engine.training.prepare), chat and evaluation
(engine.chat.generation.ChatModel.load) and the fused export's check all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# Dequantize / cast up only while the float32 weights take at most this share of physical memory;
# beyond it the memory matters more than the speed (a 7B 4-bit model would need 28 GB in float32).
MAX_FLOAT32_SHARE = 0.4
HALF = ("float16", "bfloat16")


@dataclass(frozen=True)
class ModelPrecision:
    """How a loaded model stores its weights."""

    weight_dtype: (
        str  # the floating dtype of its dense weights (or of the scales when all quantized)
    )
    quantized: bool
    bits: tuple[int, ...] = ()  # the bit widths of its quantized layers, most weights first
    scales_dtype: str | None = None  # the dtype of the quantization scales
    parameters: int = 0  # logical weights (a packed 4-bit weight counts its 8 values)

    @property
    def stored(self) -> str:
        """How a person would name it: "4-bit (float16 scales)", "float16"."""
        if not self.quantized:
            return self.weight_dtype
        return f"{self.bits[0]}-bit ({self.scales_dtype} scales)"


@dataclass(frozen=True)
class ComputePlan:
    """What to do with the base model before training or generating on this backend."""

    action: str  # "none" | "dequantize" | "upcast" | "upcast_scales"
    compute_dtype: (
        str  # what the base computes in: "float32", "float16", "4-bit (float16 scales)", ...
    )
    stored: str  # how the model is stored (ModelPrecision.stored)
    backend: str  # "metal" | "cuda" | "cpu"
    note: str = ""  # for the user, before the run; empty when nothing changes
    quantized: bool = False  # the stored model is quantized (a run on it is QLoRA)

    def to_dict(self) -> dict:
        return {
            "action": self.action,
            "quantized": self.quantized,
            "compute_dtype": self.compute_dtype,
            "stored": self.stored,
            "backend": self.backend,
            "note": self.note,
        }


def backend_kind() -> str:
    """ "metal", "cuda" or "cpu": where MLX computes by default in this process."""
    import mlx.core as mx

    if mx.default_device().type == mx.DeviceType.gpu:
        return "metal" if mx.metal.is_available() else "cuda"
    return "cpu"


def choose_compute(
    precision: ModelPrecision,
    backend: str,
    fine_tune_type: str = "lora",
    memory_bytes: int = 0,
) -> ComputePlan:
    """The fastest correct way to run this model on `backend` (see the module docstring).

    `fine_tune_type` is the run's (lora, dora, full), or "lora" for chat: only the adapter trains.
    `memory_bytes` is the machine's physical memory (0: unknown, no limit applied).
    """
    plan = _choose(precision, backend, fine_tune_type, memory_bytes)
    return replace(plan, quantized=precision.quantized)


def _choose(precision: ModelPrecision, backend: str, fine_tune_type: str, memory_bytes: int):
    stored = precision.stored
    keep = ComputePlan("none", stored, stored, backend)
    if backend != "cpu":
        return keep
    float32_bytes = 4 * precision.parameters
    fits = not memory_bytes or float32_bytes <= MAX_FLOAT32_SHARE * memory_bytes
    size = f"{float32_bytes / 1e9:.1f} GB"
    if precision.quantized:
        slow = (
            "MLX's CPU backend has no fast path for quantized matrix multiplies with "
            f"{precision.scales_dtype} scales (minutes per training step even for a small model)"
        )
        if fits and fine_tune_type != "full":
            return ComputePlan(
                "dequantize",
                "float32",
                stored,
                backend,
                f"This model is {stored}; {slow}. On this CPU Lathe computes the frozen base in "
                f"float32 instead (dequantized in memory, {size}: the same weights, computed at higher "
                "precision; the adapter still loads on the quantized model). On a Mac's GPU the model stays quantized.",
            )
        if precision.scales_dtype in HALF:
            why = (
                "full fine-tuning keeps the quantized layers"
                if fits
                else f"in float32 it would need {size}, too much of this machine's memory"
            )
            return ComputePlan(
                "upcast_scales",
                f"{precision.bits[0]}-bit (float32 scales)",
                stored,
                backend,
                f"This model is {stored}; {slow}. Lathe keeps it quantized ({why}) with float32 "
                "scales, which MLX's CPU backend multiplies tens of times faster than float16 ones "
                "but still far slower than float32: expect slow steps, and prefer a Mac's GPU.",
            )
        return ComputePlan(
            "none",
            stored,
            stored,
            backend,
            f"This model is {stored}, which is slow on MLX's CPU backend; expect slow steps.",
        )
    if precision.weight_dtype in HALF:
        if fits:
            return ComputePlan(
                "upcast",
                "float32",
                stored,
                backend,
                f"This model is stored in {stored}, which MLX's CPU backend multiplies far more "
                f"slowly than float32. On this CPU Lathe computes in float32 ({size} in memory; "
                "the adapter is the same). On a Mac's GPU the model stays in "
                f"{stored}.",
            )
        return ComputePlan(
            "none",
            stored,
            stored,
            backend,
            f"This model is stored in {stored}, which is slow on MLX's CPU backend, and in float32 "
            f"it would need {size}, too much of this machine's memory; expect slow steps.",
        )
    return keep


def inspect_loaded(model) -> ModelPrecision:
    """The storage of a loaded mlx-lm model: dtype of its weights, quantization, size."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    bits: dict[int, int] = {}  # bit width -> weights
    scales: set[str] = set()
    dense: dict[str, int] = {}
    parameters = 0
    quantized: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            quantized.add(name)
            count = module.weight.size * (32 // module.bits)
            bits[int(module.bits)] = bits.get(int(module.bits), 0) + count
            scales.add(_name(module.scales.dtype))
            parameters += count
    for name, value in tree_flatten(model.parameters()):
        if name.rsplit(".", 1)[0] in quantized:
            continue  # packed weights, scales and biases: counted above
        if mx.issubdtype(value.dtype, mx.floating):
            dense[_name(value.dtype)] = dense.get(_name(value.dtype), 0) + value.size
            parameters += value.size
    weight_dtype = max(dense, key=dense.get) if dense else (min(scales) if scales else "float32")
    return ModelPrecision(
        weight_dtype=weight_dtype,
        quantized=bool(bits),
        bits=tuple(sorted(bits, key=bits.get, reverse=True)),
        scales_dtype=min(scales) if scales else None,
        parameters=parameters,
    )


def apply_compute(model, plan: ComputePlan):
    """Apply `plan` to a loaded model (frozen or not); returns the model to use from now on."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map

    if plan.action == "none":
        return model
    if plan.action == "upcast_scales":
        for _, module in model.named_modules():
            if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
                module.scales = module.scales.astype(mx.float32)
                if getattr(module, "biases", None) is not None:
                    module.biases = module.biases.astype(mx.float32)
        return model
    if plan.action == "dequantize":
        from mlx_lm.utils import dequantize_model

        model = dequantize_model(model)
    # dequantize and upcast: every floating weight to float32 (norms and embeddings included).
    model.update(
        tree_map(
            lambda p: (
                p.astype(mx.float32)
                if mx.issubdtype(p.dtype, mx.floating) and p.dtype != mx.float32
                else p
            ),
            model.parameters(),
        )
    )
    mx.eval(model.parameters())
    return model


def prepare_for_backend(model, fine_tune_type: str = "lora", backend: str | None = None):
    """(model, plan): a loaded model made ready to compute fast and correctly on this backend."""
    from engine.platform import total_memory_bytes

    plan = choose_compute(
        inspect_loaded(model), backend or backend_kind(), fine_tune_type, total_memory_bytes()
    )
    return apply_compute(model, plan), plan


def _name(dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]
