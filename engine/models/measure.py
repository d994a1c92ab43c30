"""Measure the real peak memory of LoRA training steps (`models fit --measure`).

`measure_run` measures what a run will really do: it loads the model and encodes the data as
training does (`engine.training.prepare`, memory decision included), forms the run's largest batch
from the real examples (`engine.batching.largest_batch`: the batch-size longest examples, padded as
the trainer pads) and runs a few real steps of Lathe's training loop on it, then reads MLX's
peak-memory counter. Its time and memory are those of loading plus a few steps of one batch.

`measure_training` runs steps on random tokens of a given shape with the same pieces (mlx-lm's
LoRA layers, Lathe's loss with its chunked output layer, `nn.value_and_grad`, Adam): the
estimate's tests use it on many shapes, and `models fit --measure` without data.
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
    source: str = "random tokens"  # or "the data's largest batch"
    seconds: float = 0.0
    grad_checkpoint: bool = False
    # The run's own estimate for the model as it computes here (e.g. a 4-bit base in float32 on
    # MLX's CPU backend), and that dtype; 0 / "" where the measurement ran without a run.
    estimate_bytes: int = 0
    compute_dtype: str = ""

    def describe(self) -> str:
        """What was measured, e.g. `2 training steps of the data's largest batch (4 x 128 tokens)`."""
        return (
            f"{self.steps} training steps of {self.source} ({self.batch_size} x {self.seq_length} "
            f"tokens{', gradient checkpointing' if self.grad_checkpoint else ''}) on {self.device}"
        )

    def to_dict(self) -> dict:
        return {
            "peak_bytes": self.peak_bytes,
            "peak_gb": round(self.peak_bytes / GB, 3),
            "weights_bytes": self.weights_bytes,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "seq_length": self.seq_length,
            "device": self.device,
            "source": self.source,
            "seconds": round(self.seconds, 2),
            "grad_checkpoint": self.grad_checkpoint,
            "estimate_bytes": self.estimate_bytes,
            "compute_dtype": self.compute_dtype,
            "described": self.describe(),
        }


def measure_run(config, steps: int = 2, sink=None) -> Measurement:
    """Peak memory of `steps` real training steps of the run's largest batch (module docstring).

    `config` is the run's config (model and data set); it is not changed. The memory check does
    not refuse here (measuring is how to find out), but its decision (gradient checkpointing)
    is applied as the run would apply it.
    """
    import copy
    import time

    import mlx.core as mx
    from mlx.utils import tree_flatten

    from engine.batching import collate, largest_batch
    from engine.training import loop, method, plans, prepare, schedule
    from engine.training.loss import training_head

    started = time.perf_counter()
    cfg = copy.deepcopy(config)
    cfg.training.ignore_fit_check = True
    quiet = sink or (lambda event: None)
    prep = prepare.prepare(cfg, quiet)
    model = prep.model
    method.apply_method(model, cfg)
    if cfg.training.grad_checkpoint:
        method.checkpoint_layers(model)
    optimizer = method.build_optimizer(cfg)
    t, d = cfg.training, cfg.data
    lengths = [len(e) for e in prep.train]
    model_type = getattr(getattr(model, "args", None), "model_type", None)
    rows, _, _ = largest_batch(
        lengths,
        t.batch_size,
        d.packing,
        model_type,
        d.pack_length,
        t.pad_multiple,
        d.max_seq_length,
    )
    # The batch-size longest examples: the shape of the run's largest batch (fixed batches hold
    # the longest example with batch-size rows; budget batches are never larger).
    longest = sorted(prep.train, key=len, reverse=True)[:rows]
    width = collate(longest, t.pad_multiple, d.max_seq_length, rows).tokens.shape[1]
    head = training_head(model, prep.train[0].tokens)
    cfg.training.grad_accumulation_steps = 1
    cfg.training.steps_per_eval = cfg.training.save_every = 1 << 30
    args = schedule.loop_args(cfg, steps, head)
    batches = plans.FixedBatches(longest, rows, t.seed, t.pad_multiple, d.max_seq_length)
    weights_bytes = sum(int(v.nbytes) for _, v in tree_flatten(model.parameters()))
    mx.clear_cache()
    mx.reset_peak_memory()
    result = loop.train(model, optimizer, batches, [], args)
    peak = int(mx.get_peak_memory())
    return Measurement(
        peak_bytes=peak,
        weights_bytes=weights_bytes,
        steps=result.state.step,
        batch_size=rows,
        seq_length=int(width),
        device=str(mx.default_device()),
        source="the data's largest batch",
        seconds=time.perf_counter() - started,
        grad_checkpoint=cfg.training.grad_checkpoint,
        estimate_bytes=int(prep.fit_peak_bytes or 0),
        compute_dtype=str(getattr(prep.compute, "compute_dtype", "") or ""),
    )


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
    from mlx_lm.utils import load_model

    from engine.models.precision import prepare_for_backend
    from engine.training.method import add_adapters

    model, config = load_model(Path(model_path), lazy=False)
    # As a run computes on this backend (e.g. a 4-bit base in float32 on MLX's CPU backend).
    model, _ = prepare_for_backend(model, fine_tune_type)
    lora_cfg = {"rank": rank, "scale": 20.0, "dropout": 0.0}
    if keys:
        lora_cfg["keys"] = list(keys)
    add_adapters(model, fine_tune_type, num_layers, lora_cfg)  # as training sets a model up
    model.train()
    weights_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    vocab = int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size"))

    from engine.training import memory
    from engine.training.loss import masked_loss, training_head

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
        from engine.training.method import checkpoint_layers

        checkpoint_layers(model)  # this model's blocks only, as training does

    def step(tokens, weights):
        loss, grads = value_and_grad(model, tokens, weights)
        optimizer.update(model, grads)
        return loss

    from engine.training.schedule import compile_min_tokens

    if tokens.size >= compile_min_tokens():  # as the trainer runs a batch of this size
        state = [model.state, optimizer.state, mx.random.state]
        step = mx.compile(step, inputs=state, outputs=state)
    from engine.training.attention import blocked

    mx.clear_cache()
    mx.reset_peak_memory()
    with blocked(model):  # attention as the trainer computes it
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
        grad_checkpoint=grad_checkpoint,
    )
