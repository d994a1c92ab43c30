"""GGUF tensors to MLX arrays: repack the quantization types MLX shares, dequantize the rest.

GGUF's Q4_0, Q4_1 and Q8_0 blocks hold 32 weights along a row with one float16 scale (and for
Q4_1 one float16 minimum): w = d*q + m. That is exactly MLX's affine quantization with group size
32 (scale = d, bias = m; Q4_0: bias = -8d, Q8_0: bias = -128d), so those tensors stay quantized
and only their bits are rearranged (GGUF stores a block's low nibbles first: weights 0..15 in the
low halves of the 16 bytes, 16..31 in the high halves; MLX packs weight i at bits 4*(i%8) of word
i//8). `mx.load(FILE.gguf)` does the same repacking; the tests check both agree bit for bit.
Every other quantized type (K-quants, Q5_x, IQ-types) is dequantized with llama.cpp's own numpy
reference code (the `gguf` package) and stored as a float matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.export.gguf_reader import GgufInfo, GgufTensor

KEPT_QUANTIZED = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
GROUP_SIZE = 32
FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass
class Converted:
    """One GGUF tensor as numpy arrays: `weight` (packed uint32 when quantized), plus `scales`
    and `biases` (float16) for a kept-quantized tensor. BF16 values travel as uint16 bits."""

    weight: np.ndarray
    scales: np.ndarray | None = None
    biases: np.ndarray | None = None
    bits: int | None = None
    dequantized_from: str | None = None
    bfloat16: bool = False

    def rows_permuted(self, perm) -> Converted:
        """The same tensor with its rows (first axis) reordered by `perm` (a function on arrays).

        Quantization groups run along rows, so packed weights, scales and biases move alike."""
        return Converted(
            perm(self.weight),
            None if self.scales is None else perm(self.scales),
            None if self.biases is None else perm(self.biases),
            self.bits,
            self.dequantized_from,
            self.bfloat16,
        )


def convert_tensor(info: GgufInfo, t: GgufTensor) -> Converted:
    """Read tensor `t` of `info` and return it in MLX's layout (shape in numpy order)."""
    if t.type == "F32":
        return Converted(info.read(t.name))
    if t.type == "F16":
        return Converted(info.read(t.name))
    raw = info.raw(t.name)
    if t.type == "BF16":
        return Converted(np.array(raw).view("<u2").reshape(t.shape), bfloat16=True)
    if t.type in KEPT_QUANTIZED:
        return _repack(raw, t)
    return Converted(_dequantize(raw, t), dequantized_from=t.type)


def _repack(raw: np.ndarray, t: GgufTensor) -> Converted:
    rows = raw.shape[0]
    block_bytes = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[t.type]
    blocks = np.array(raw).reshape(rows, -1, block_bytes)
    d = blocks[:, :, 0:2].copy().view("<f2")[..., 0]
    if t.type == "Q8_0":
        q = (blocks[:, :, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        packed = np.ascontiguousarray(q).reshape(rows, -1).view("<u4")
        bias = (d.astype(np.float32) * -128.0).astype(np.float16)
        return Converted(packed, d, bias, 8)
    if t.type == "Q4_1":
        m = blocks[:, :, 2:4].copy().view("<f2")[..., 0]
        qs = blocks[:, :, 4:]
    else:
        m = (d.astype(np.float32) * -8.0).astype(np.float16)
        qs = blocks[:, :, 2:]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # weights 0..31 of each block
    pairs = nibbles.reshape(rows, -1, 2)
    packed = np.ascontiguousarray(pairs[..., 0] | (pairs[..., 1] << 4)).view("<u4")
    return Converted(packed.reshape(rows, -1), d, m, 4)


def _dequantize(raw: np.ndarray, t: GgufTensor) -> np.ndarray:
    from engine.errors import ModelError

    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize
    except ImportError:  # pragma: no cover - a declared dependency
        raise ModelError(
            f"Tensor {t.name} is {t.type}, which needs the `gguf` package to read.",
            "Install it: pip install gguf",
        ) from None
    try:
        qtype = GGMLQuantizationType[t.type]
        values = dequantize(np.array(raw), qtype)
    except (KeyError, NotImplementedError, ValueError) as exc:
        raise ModelError(
            f"Tensor {t.name} is stored as {t.type}, which Lathe cannot read ({exc}).",
            "Use a Q4_0, Q4_1, Q8_0, K-quant (Q2_K..Q6_K) or F16 version of the model.",
        ) from None
    return values.reshape(t.shape).astype(np.float32)


def unpermute_rotary(n_head: int):
    """The inverse of llama.cpp's `permute` for attention query/key rows (convert_hf_to_gguf.py:
    `w.reshape(n_head, 2, rows // n_head // 2, ...).swapaxes(1, 2)`), as a function on arrays."""

    def perm(w: np.ndarray) -> np.ndarray:
        rows = w.shape[0]
        if rows % (2 * n_head):
            raise ValueError(f"{rows} rows cannot be split into {n_head} rotary heads")
        return (
            w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        )

    return perm
