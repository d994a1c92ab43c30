"""Measure the real peak memory of LoRA training steps (`models fit --measure`).

Runs a few real optimizer steps at the longest sequence with the same pieces Lathe's trainer uses
(mlx-lm's LoRA layers, Lathe's loss with its chunked output layer, `nn.value_and_grad`, Adam) and
reads MLX's peak-memory counter. This loads the model, so it takes as long as loading plus the
steps; the estimate in `fit.py` is the fast path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GB = 1024**3


@dataclass
class Measurement:
    """What one `measure_training` call saw, in bytes."""

    peak_bytes: int
    weights_bytes: int
    steps: int
    batch_size: int
    seq_length: int
    device: str

    def to_dict(self) -> dict:
        return {
            "peak_bytes": self.peak_bytes,
            "peak_gb": round(self.peak_bytes / GB, 3),
            "weights_bytes": self.weights_bytes,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "seq_length": self.seq_length,
            "device": self.device,
        }


def measure_training(
    model_path: str | Path,
    *,
    batch_size: int,
    seq_length: int,
    rank: int = 8,
    num_layers: int = 16,
    fine_tune_type: str = "lora",
    grad_checkpoint: bool = False,
    keys: list[str] | None = None,
    steps: int = 2,
    seed: int = 0,
) -> Measurement:
    """Run `steps` real training steps on random tokens and return the peak memory MLX reports."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    model, config = load_model(Path(model_path), lazy=False)
    n_layers = len(model.layers)
    trained = n_layers if num_layers < 0 else min(num_layers, n_layers)
    model.freeze()
    if fine_tune_type == "full":
        for layer in model.layers[n_layers - trained :]:
            layer.unfreeze()
    else:
        lora_cfg = {"rank": rank, "scale": 20.0, "dropout": 0.0}
        if keys:
            lora_cfg["keys"] = list(keys)
        linear_to_lora_layers(model, trained, lora_cfg, use_dora=fine_tune_type == "dora")
    model.train()
    weights_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    vocab = int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size"))

    from engine import memory
    from engine.trainer import masked_loss, training_head

    mx.random.seed(seed)
    tokens = mx.random.randint(0, vocab, (batch_size, seq_length + 1))
    weights = mx.ones(tokens.shape)
    # The output layer as the trainer runs it (in chunks, gradient on the way forward) where it can.
    # (A trainable layer runs whole: these batches train every position, so none are selected.)
    head = "fused" if training_head(model, tokens[0, :16].tolist()) == "fused" else "full"

    def loss_fn(model, tokens, weights):
        return masked_loss(model, tokens, weights, head=head)[0]

    optimizer = optim.Adam(learning_rate=1e-5)
    value_and_grad = nn.value_and_grad(model, loss_fn)
    mx.eval(model.parameters(), tokens, weights)

    if grad_checkpoint:
        from engine.trainer import checkpoint_layers

        checkpoint_layers(model)  # this model's blocks only, as training does

    def step(tokens, weights):
        loss, grads = value_and_grad(model, tokens, weights)
        optimizer.update(model, grads)
        return loss

    from engine.train import compile_min_tokens

    if tokens.size >= compile_min_tokens():  # as the trainer runs a batch of this size
        state = [model.state, optimizer.state, mx.random.state]
        step = mx.compile(step, inputs=state, outputs=state)
    mx.clear_cache()
    mx.reset_peak_memory()
    for _ in range(steps):
        loss = step(tokens, weights)
        mx.eval(loss, model.parameters(), optimizer.state)
        del loss
        if memory.clear_cache_threshold(
            0
        ):  # as the trainer does (after every step on the CPU backend)
            mx.clear_cache()
    peak = int(mx.get_peak_memory())
    return Measurement(
        peak_bytes=peak,
        weights_bytes=int(weights_bytes),
        steps=steps,
        batch_size=batch_size,
        seq_length=seq_length,
        device=str(mx.default_device()),
    )
