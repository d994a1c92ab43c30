"""Will it fit? Predict peak memory of training and chat, compare with what the machine offers.

The estimate counts what MLX keeps alive during one LoRA training step:

- weights: the exact byte size of the safetensors tensors (quantized weights included as stored);
- LoRA parameters in float32, plus their gradients and Adam's two moment buffers (4 copies);
- per trained layer and token, the activations the backward pass needs: the residual input, the
  two normed inputs, q, attention output and the second residual (6 hidden-sized vectors), k and v,
  four intermediate-sized MLP values (gate, silu(gate), up, their product) and one row of attention
  probabilities per head (heads x sequence length: the score matrix is materialised for the
  backward pass). Layers below the trained ones keep nothing: their forward values are freed;
- at the peak, on top of that, the transients of one layer's backward pass (6 hidden-sized,
  6 intermediate-sized and 2 attention-matrix-sized values per token) and the logits of the loss.
  Where the trainer runs the output layer in chunks (`engine.head`; LoRA and DoRA), that is 2
  float32 copies of batch x sequence x vocabulary (logits and their gradient) plus 2 float32
  hidden-sized gradient rows per token; otherwise 4 float32 copies (logits, log-softmax, its
  gradient, the loss's gather);
- gradient checkpointing keeps only each trained layer's input and recomputes one layer at a time.

Batch shape: a run's memory peaks at its largest batch, so the estimate is made for the largest
batch the run will really form. Given the training examples' token lengths (`lengths`: known once
the data is encoded with the model's tokenizer), that is `engine.batching.largest_batch`: batch
size rows of the longest example, padded as the trainer pads. Without them it falls back to the
longest possible batch (batch size x max_seq_length) and says so (`FitReport.batch`).

The counts come from reading the forward/backward graph of mlx-lm's Llama-style layers and were
checked against `mx.get_peak_memory()` of real steps on 28 tiny Llama configurations on the CPU
backend (hidden 128-512, 1-4 trained layers, batch 1-4, sequence 32-512, rank 4-64, vocabulary
512-4096, with and without checkpointing): every estimate fell within -6%/+12% of the measured peak;
on a real model, SmolLM2-135M-Instruct computed in float32 on the bank-support sample (largest batch
4 x 128), the estimate (1.10 GB) was 2% above the peak of real training steps of that batch
(`measure_run`: 1.05 GB) and 12% below random-token steps of the same shape that train every
position (`measure_training`: 1.22 GB). The stated error (`ESTIMATE_ERROR`) is +-25%. The estimate
describes the model as it will train: a run checks it with the loaded model's weight sizes and
activation dtype (`memory.describe_loaded`), so a loader that computes in float32 on a CPU is
estimated in float32; `models fit` and the Train page read the folder as stored.
On a Mac the fused attention kernel avoids part of the attention term, so the estimate leans high
there, which is the safe side. Mixture-of-experts models are estimated as if dense.

At extreme LoRA ranks the adapter itself dominates: its float32 parameters, gradients, Adam moments
and update temporaries (4.5 copies), and x @ A of every adapted linear layer (rank values per token,
kept for each trained layer, plus one layer's gradient of it). Against measured steps at ranks
2,048-16,384 (hidden 64-128, with and without checkpointing) the estimate fell within -3%/+27%,
high where the hidden size is smallest.

This module imports nothing heavy: the GUI calls `estimate` on every settings change.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.config import RunConfig
from engine.head import HEAD_MODEL_TYPES
from engine.models.info import ModelInfo, inspect_model

GB = 1024**3

# How far the estimate may be from a measured peak (see the module docstring).
ESTIMATE_ERROR = 0.25

# Verdict thresholds as a share of the memory budget.
FITS_BELOW = 0.80
TIGHT_BELOW = 1.00

# Per-token activation counts, in values of the model's activation dtype (see module docstring).
SAVED_HIDDEN = 6
SAVED_KV = 2
SAVED_MLP = 4
SAVED_ATTENTION = 1
TRANSIENT_HIDDEN = 6
TRANSIENT_MLP = 6
TRANSIENT_ATTENTION = 2
LOGIT_COPIES = 4
# With the chunked output layer: the logits and their gradient. MLX allocates a step's buffers as it
# queues the work, ahead of the computation, so every chunk's are counted (measured on the CPU
# backend); once the memory limit is reached MLX waits and only a chunk's are alive at a time.
FUSED_LOGIT_COPIES = 2
HIDDEN_GRADIENT_COPIES = 2  # the chunked output layer's gradient rows, and their concatenation
LOGIT_BYTES = 4  # float32
ADAM_COPIES = 4  # parameter, gradient, first and second moment
# The adapter's float32 copies: the four above, plus the update's temporaries (about half a copy
# more at the peak: measured at ranks 4,096-16,384, where the adapter is most of the memory).
LORA_COPIES = 4.5
# Per token and adapted linear layer, the LoRA path keeps x @ A (rank values, float32) for the
# backward pass; one layer's gradient for it is alive while that layer is differentiated.
SAVED_LORA = 1
TRANSIENT_LORA = 1
LORA_BYTES = 4  # mlx-lm creates LoRA matrices in float32
CHAT_CONTEXT = 4096
PREFILL_CHUNK = 2048  # mlx-lm's default prefill step


@dataclass
class Suggestion:
    """The cheapest change that makes a run fit, with the estimate after the change."""

    description: str
    changes: dict
    training_peak_bytes: int

    def to_dict(self) -> dict:
        return {**asdict(self), "training_peak_gb": round(self.training_peak_bytes / GB, 2)}


@dataclass
class FitReport:
    """Predicted peak memory of training and chat against the machine's budget. Bytes."""

    model: str
    training_peak_bytes: int
    chat_peak_bytes: int
    budget_bytes: int
    budget_source: str
    verdict: str  # "fits" | "tight" | "will not fit"
    breakdown: dict
    suggestion: Suggestion | None = None
    notes: list[str] = field(default_factory=list)
    # Changes Lathe makes to the run by itself (auto gradient checkpointing); the numbers above
    # already include them.
    automatic: dict = field(default_factory=dict)
    # The batch the estimate is for: rows, width (padded tokens per row), longest_example and
    # from_data (True: the largest batch the run forms from its data; False: the longest possible).
    batch: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.training_peak_bytes / self.budget_bytes if self.budget_bytes else float("inf")

    def summary(self) -> str:
        """One line such as `fits: training needs about 1.1 GB of 16.0 GB (...); largest batch: ...`."""
        return f"{self.verdict}: {self.needs_text()}"

    def needs_text(self) -> str:
        """The summary without the verdict: `training needs about 1.1 GB of 16.0 GB (...); ...`."""
        text = (
            f"training needs about {_size(self.training_peak_bytes)} of "
            f"{self.budget_bytes / GB:.1f} GB ({self.budget_source})"
        )
        return f"{text}; {self.batch_text()}" if self.batch else text

    def batch_text(self) -> str:
        """What batch the estimate is for, e.g. `largest batch: 4 x 128 tokens (from the data...)`."""
        b = self.batch
        if not b:
            return ""
        if b.get("from_data"):
            return (
                f"largest batch: {b['rows']} x {b['width']} tokens (from the data; longest example "
                f"{b['longest_example']} tokens)"
            )
        return (
            f"longest possible batch: {b['rows']} x {b['width']} tokens (batch size x "
            "data.max_seq_length; the data's lengths were not given)"
        )

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "verdict": self.verdict,
            "training_peak_bytes": self.training_peak_bytes,
            "training_peak_gb": round(self.training_peak_bytes / GB, 2),
            "chat_peak_bytes": self.chat_peak_bytes,
            "chat_peak_gb": round(self.chat_peak_bytes / GB, 2),
            "budget_bytes": self.budget_bytes,
            "budget_gb": round(self.budget_bytes / GB, 2),
            "budget_source": self.budget_source,
            "ratio": round(self.ratio, 3),
            "breakdown": self.breakdown,
            "suggestion": self.suggestion.to_dict() if self.suggestion else None,
            "notes": list(self.notes),
            "automatic": dict(self.automatic),
            "batch": dict(self.batch),
            "estimate_error": ESTIMATE_ERROR,
            "summary": self.summary(),
        }


def _size(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= GB / 10 else f"{n / 1024**2:.0f} MB"


# ---------------------------------------------------------------------------------------------
# Machine budget


def memory_budget() -> tuple[int, str]:
    """(bytes, where the number came from): the Metal GPU's recommended working set on macOS,
    physical memory elsewhere."""
    if sys.platform == "darwin":
        try:
            import mlx.core as mx

            info_fn = getattr(mx, "device_info", None) or mx.metal.device_info
            info = info_fn()
            size = int(info.get("max_recommended_working_set_size") or 0)
            if size:
                return size, "GPU recommended working set"
        except Exception:  # noqa: BLE001 - fall back to physical memory below
            pass
    try:
        size = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return int(size), "physical memory"
    except (ValueError, OSError, AttributeError):
        return 8 * GB, "assumed 8 GB (memory size unknown)"


# ---------------------------------------------------------------------------------------------
# The estimate


def _layer_linears(info: ModelInfo) -> dict[str, tuple[int, int]]:
    """(input, output) sizes of the linear layers in one transformer block, by mlx-lm key."""
    d, i = info.hidden_size, info.intermediate_size
    q = info.num_heads * info.head_dim
    kv = info.num_kv_heads * info.head_dim
    return {
        "self_attn.q_proj": (d, q),
        "self_attn.k_proj": (d, kv),
        "self_attn.v_proj": (d, kv),
        "self_attn.o_proj": (q, d),
        "mlp.gate_proj": (d, i),
        "mlp.up_proj": (d, i),
        "mlp.down_proj": (i, d),
    }


def _trained_layers(info: ModelInfo, cfg: RunConfig) -> int:
    n = cfg.lora.num_layers
    return info.num_layers if n < 0 or n > info.num_layers else max(n, 0)


def _adapted(info: ModelInfo, cfg: RunConfig) -> list[tuple[int, int]]:
    """(input, output) sizes of the linear layers an adapter is added to, in one block."""
    keys = cfg.lora.keys
    return [
        v
        for k, v in _layer_linears(info).items()
        if not keys or any(k.endswith(x) or x.endswith(k) for x in keys)
    ]


def lora_parameters(info: ModelInfo, cfg: RunConfig) -> int:
    """Trainable parameters of the adapter (or of the trained layers for full fine-tuning)."""
    layers = _trained_layers(info, cfg)
    linears = _layer_linears(info)
    if cfg.lora.fine_tune_type == "full":
        return layers * (sum(a * b for a, b in linears.values()) + 2 * info.hidden_size)
    chosen = _adapted(info, cfg)
    per_layer = sum(cfg.lora.rank * (a + b) for a, b in chosen)
    if cfg.lora.fine_tune_type == "dora":
        per_layer += sum(b for _, b in chosen)  # the magnitude vector
    return layers * per_layer


def batch_shape(info: ModelInfo, cfg: RunConfig, lengths=None) -> dict:
    """The batch a run's memory peaks at: `FitReport.batch` (see the module docstring)."""
    s = cfg.data.max_seq_length
    if info.context_length:
        s = min(s, info.context_length)
    if lengths is not None and len(lengths):
        from engine.batching import largest_batch

        rows, width, mode = largest_batch(
            lengths,
            cfg.training.batch_size,
            cfg.data.packing,
            info.model_type,
            cfg.data.pack_length,
            cfg.training.pad_multiple,
            s,
        )
        longest = int(max(lengths))
        return {
            "rows": rows,
            "width": width,
            "longest_example": min(longest, s),
            "batching": mode,
            "from_data": True,
        }
    return {"rows": cfg.training.batch_size, "width": s, "from_data": False}


def training_breakdown(info: ModelInfo, cfg: RunConfig, batch: dict | None = None) -> dict:
    """Bytes by component at the training peak (see the module docstring for the counts), for
    `batch` (`batch_shape`; default: the longest possible batch)."""
    a = info.activation_bytes
    batch = batch or batch_shape(info, cfg)
    b, s = int(batch["rows"]), int(batch["width"])
    tokens = b * s
    d, i, v = info.hidden_size, info.intermediate_size, info.vocab_size
    q = info.num_heads * info.head_dim
    kv = info.num_kv_heads * info.head_dim
    heads = info.num_heads
    layers = _trained_layers(info, cfg)

    trainable = lora_parameters(info, cfg)
    if cfg.lora.fine_tune_type == "full":
        # Gradients and Adam moments take the parameters' own dtype; the weights are counted already.
        optimizer = trainable * a * (ADAM_COPIES - 1)
    else:
        optimizer = trainable * LORA_BYTES * LORA_COPIES

    per_layer = (
        tokens
        * a
        * ((SAVED_HIDDEN - 1) * d + q + SAVED_KV * kv + SAVED_MLP * i + SAVED_ATTENTION * heads * s)
    )
    if cfg.training.grad_checkpoint:
        saved = layers * tokens * a * d + (per_layer if layers else 0)
    else:
        saved = layers * per_layer
    transient = (
        tokens * a * (TRANSIENT_HIDDEN * d + TRANSIENT_MLP * i + TRANSIENT_ATTENTION * heads * s)
    )
    if info.model_type in HEAD_MODEL_TYPES and cfg.lora.fine_tune_type != "full":
        # The trainer's chunked output layer (engine.training.loss.fused_head_cross_entropy): logits and
        # their gradient, plus the gradient rows for the hidden states it keeps (float32).
        logits = tokens * LOGIT_BYTES * (v * FUSED_LOGIT_COPIES + d * HIDDEN_GRADIENT_COPIES)
    else:
        logits = tokens * v * LOGIT_BYTES * LOGIT_COPIES
    lora = 0
    if cfg.lora.fine_tune_type != "full":
        # x @ A of every adapted linear: negligible at rank 8, most of the peak at rank 100,000.
        per_layer_lora = tokens * LORA_BYTES * cfg.lora.rank * len(_adapted(info, cfg))
        # With checkpointing the recomputed layer's values and one more layer's are alive
        # (measured at rank 4,096 with 4 checkpointed layers).
        kept = min(2, layers) if cfg.training.grad_checkpoint else layers
        lora = per_layer_lora * (SAVED_LORA * kept + TRANSIENT_LORA) if layers else 0
    return {
        "weights": int(info.weights_bytes),
        "adapter_and_optimizer": int(optimizer),
        "activations": int(saved),
        "backward_transients": int(transient),
        "logits": int(logits),
        "lora_activations": int(lora),
    }


def chat_peak(info: ModelInfo, context: int = CHAT_CONTEXT) -> int:
    """Peak bytes of chatting with `context` tokens: weights, KV cache, one prefill chunk."""
    a = info.activation_bytes
    if info.context_length:
        context = min(context, info.context_length)
    kv_cache = 2 * info.num_layers * info.num_kv_heads * info.head_dim * context * a
    chunk = min(context, PREFILL_CHUNK)
    prefill = (
        chunk
        * a
        * (
            info.vocab_size
            + 4 * info.hidden_size
            + 3 * info.intermediate_size
            + info.num_heads * context
        )
    )
    return int(info.weights_bytes + kv_cache + prefill)


def _verdict(peak: int, budget: int) -> str:
    if peak <= FITS_BELOW * budget:
        return "fits"
    if peak <= TIGHT_BELOW * budget:
        return "tight"
    return "will not fit"


def quantized_weights_bytes(info: ModelInfo, bits: int = 4, group_size: int = 64) -> int:
    """Approximate stored size after mlx-lm quantization: linear and embedding weights at `bits`
    plus a 16-bit scale and bias per group; the rest stays as it is."""
    linears = sum(a * b for a, b in _layer_linears(info).values()) * info.num_layers
    embeds = info.vocab_size * info.hidden_size * (1 if info.tie_word_embeddings else 2)
    quantizable = min(info.parameters, linears + embeds)
    rest = max(info.parameters - quantizable, 0) * info.activation_bytes
    per_weight_bits = bits + 2 * 16 / group_size
    return int(quantizable * per_weight_bits / 8 + rest)


def _with(cfg: RunConfig, **changes) -> RunConfig:
    return copy.deepcopy(cfg).apply(changes)


def _peak(info: ModelInfo, cfg: RunConfig, lengths=None) -> int:
    return sum(training_breakdown(info, cfg, batch_shape(info, cfg, lengths)).values())


def suggest(info: ModelInfo, cfg: RunConfig, budget: int, lengths=None) -> Suggestion | None:
    """The cheapest change (in what it costs the user) that brings training under the "fits" line.

    Tried in order: gradient checkpointing (slower, same result), a smaller batch with gradient
    accumulation (slower, same effective batch), fewer trained layers, shorter sequences (long
    examples get truncated), a 4-bit copy of the model. Single changes first; when none is enough,
    they are combined in that order.
    """
    target = FITS_BELOW * budget

    def steps(cfg: RunConfig, info: ModelInfo):
        t, d = cfg.training, cfg.data
        if not t.grad_checkpoint:
            yield "turn on gradient checkpointing", {"training.grad_checkpoint": True}, info
        batch, accum = t.batch_size, t.grad_accumulation_steps
        while batch > 1:
            batch, accum = max(batch // 2, 1), accum * 2
            yield (
                f"use batch size {batch} with {accum} gradient accumulation steps",
                {"training.batch_size": batch, "training.grad_accumulation_steps": accum},
                info,
            )
        layers = _trained_layers(info, cfg)
        while layers > 1:
            layers = max(layers // 2, 1)
            yield f"train {layers} layers", {"lora.num_layers": layers}, info
        seq = d.max_seq_length
        if lengths is not None and len(lengths):
            seq = min(seq, int(max(lengths)))  # shortening only helps below the longest example
        while seq > 256:
            seq = max(seq // 2, 256)
            yield f"shorten sequences to {seq} tokens", {"data.max_seq_length": seq}, info
        if not info.quantization:
            q_info = copy.deepcopy(info)
            q_info.weights_bytes = quantized_weights_bytes(info)
            q_info.quantization = {"bits": 4, "group_size": 64}
            yield (
                "use a 4-bit copy of the model (models quantize --bits 4)",
                {"model.quantize": 4},
                q_info,
            )

    # Single changes: within each kind, the first (mildest) step that fits.
    for description, changes, step_info in steps(cfg, info):
        trial = _with(cfg, **{k: v for k, v in changes.items() if k != "model.quantize"})
        peak = _peak(step_info, trial, _clipped(lengths, trial))
        if peak <= target:
            return Suggestion(description, changes, peak)

    # Combined: apply each kind in order until it fits.
    combined: dict = {}
    descriptions: list[str] = []
    cur_cfg, cur_info = cfg, info
    for description, changes, step_info in steps(cfg, info):
        if description.startswith(("use batch", "train ", "shorten")):
            # Later steps of the same kind replace earlier ones.
            kind = description.split()[0:2]
            descriptions = [x for x in descriptions if x.split()[0:2] != kind]
        trial = _with(cur_cfg, **{k: v for k, v in changes.items() if k != "model.quantize"})
        cur_cfg, cur_info = trial, step_info
        combined.update(changes)
        descriptions.append(description)
        peak = _peak(cur_info, cur_cfg, _clipped(lengths, cur_cfg))
        if peak <= target:
            return Suggestion("; ".join(descriptions), combined, peak)
    return None


def _clipped(lengths, cfg: RunConfig):
    """Example lengths after truncation to the config's max_seq_length."""
    if lengths is None:
        return None
    return [min(int(n), cfg.data.max_seq_length) for n in lengths]


def estimate(
    model: str | Path | ModelInfo,
    run_config: RunConfig | None = None,
    *,
    budget_bytes: int | None = None,
    chat_context: int = CHAT_CONTEXT,
    lengths=None,
) -> FitReport:
    """Predict peak memory of training `model` with `run_config` and of chatting with it.

    `model` is a model folder or a ModelInfo from `inspect_model`. `budget_bytes` overrides what
    the machine offers (tests, or planning for another Mac). `lengths` are the token lengths of the
    training examples (after encoding): with them the estimate is for the largest batch the run
    will form, without them for the longest possible one. Returns a FitReport with the verdict
    and, when it does not fit comfortably, the cheapest change that makes it fit.
    """
    info = model if isinstance(model, ModelInfo) else inspect_model(model)
    cfg = run_config or RunConfig()
    if budget_bytes is None:
        budget, source = memory_budget()
    else:
        budget, source = int(budget_bytes), "given budget"
    if lengths is not None:
        lengths = _clipped(lengths, cfg)
    batch = batch_shape(info, cfg, lengths)
    breakdown = training_breakdown(info, cfg, batch)
    peak = sum(breakdown.values())
    verdict = _verdict(peak, budget)
    notes = []
    automatic: dict = {}
    t = cfg.training
    if verdict != "fits" and getattr(t, "auto_grad_checkpoint", False) and not t.grad_checkpoint:
        # Checkpointing changes nothing but speed, so a tight run gets it without asking.
        checkpointed = _with(cfg, **{"training.grad_checkpoint": True})
        cp_breakdown = training_breakdown(info, checkpointed, batch)
        cp_peak = sum(cp_breakdown.values())
        if cp_peak < peak:
            notes.append(
                f"Gradient checkpointing is turned on automatically: without it training would "
                f"need about {_size(peak)} ({verdict}), with it about {_size(cp_peak)} "
                f"({_verdict(cp_peak, budget)})."
            )
            automatic = {"training.grad_checkpoint": True}
            cfg, breakdown, peak = checkpointed, cp_breakdown, cp_peak
            verdict = _verdict(peak, budget)
    if (
        not batch["from_data"]
        and info.context_length
        and cfg.data.max_seq_length > info.context_length
    ):
        notes.append(
            f"max_seq_length {cfg.data.max_seq_length} is longer than the model's context "
            f"({info.context_length}); estimated at {info.context_length}."
        )
    if cfg.lora.fine_tune_type == "full" and info.quantization:
        notes.append("Full fine-tuning needs an unquantized model; dequantize it first.")
    return FitReport(
        model=info.path,
        training_peak_bytes=int(peak),
        chat_peak_bytes=chat_peak(info, chat_context),
        budget_bytes=budget,
        budget_source=source,
        verdict=verdict,
        breakdown=breakdown,
        suggestion=None if verdict == "fits" else suggest(info, cfg, budget, lengths),
        notes=notes,
        automatic=automatic,
        batch=batch,
    )
