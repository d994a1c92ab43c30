"""Which models can run their output layer apart from the rest, and in chunks of what size.

Kept free of MLX so that the memory estimate (`engine.models.fit`), which the GUI calls on every
settings change, can use it. The layer itself runs in `engine.training.loss.masked_loss`.
"""

from __future__ import annotations

# Architectures whose `Model.__call__` is exactly "hidden = self.model(inputs, cache); logits =
# lm_head(hidden), or the tied embedding's as_linear": for these the output layer can be applied to
# the trained positions alone and in chunks. A start-of-run check confirms it on each model.
HEAD_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma3_text", "olmo2"}

# The output layer runs on chunks of rows whose logits hold at most this many values (256 MB in
# float32): with a 152k vocabulary, 8 x 1024 tokens would need 5 GB for the logits and as much again
# for their gradient. Nothing logits-sized is kept for the backward pass; how many chunks exist at
# once depends on how far MLX queues work ahead (see engine.training.loss.fused_head_cross_entropy).
HEAD_CHUNK_VALUES = 1 << 26


def head_chunk_rows(vocab_size: int, chunk_values: int | None = None) -> int:
    """Rows per chunk of the output layer: a power of two, at least 64, within HEAD_CHUNK_VALUES."""
    rows = (chunk_values or HEAD_CHUNK_VALUES) // max(1, vocab_size)
    return max(64, 1 << max(0, rows.bit_length() - 1))
