"""GGUF tensors to MLX arrays: repack the quantization types MLX shares, dequantize the rest.

GGUF's Q4_0, Q4_1 and Q8_0 blocks hold 32 weights along a row with one float16 scale (and for
Q4_1 one float16 minimum): w = d*q + m. That is exactly MLX's affine quantization with group size
32 (scale = d, bias = m; Q4_0: bias = -8d, Q8_0: bias = -128d), so those tensors stay quantized
and only their bits are rearranged (GGUF stores a block's low nibbles first: weights 0..15 in the
low halves of the 16 bytes, 16..31 in the high halves; MLX packs weight i at bits 4*(i%8) of word
i//8). `mx.load(FILE.gguf)` does the same repacking; the tests check both agree bit for bit.

Q4_K (most of an Ollama "Q4_K_M" file) is 4-bit affine with groups of 32 too, but each group's
scale and minimum are 6-bit integers times a float16 per 256 weights: w = d*sc*q - dmin*m. It stays
4-bit with scale d*sc and bias -dmin*m rounded to float16 (at most 2^-11 relative to each, well
under a thousandth of one quantization step). Every other type (Q6_K's groups of 16, Q5_x, Q2_K,
Q3_K, Q5_K, IQ-types) is dequantized with llama.cpp's own numpy reference code (the `gguf`
package) and stored as a float matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.models.gguf_reader import GgufInfo, GgufTensor

KEPT_QUANTIZED = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8, "Q4_K": 4}
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


def _pack_nibbles(nibbles: np.ndarray) -> np.ndarray:
    """(rows, n) values 0..15 in weight order -> (rows, n/8) uint32, weight i at bits 4*(i%8)."""
    pairs = nibbles.reshape(nibbles.shape[0], -1, 2)
    return np.ascontiguousarray(pairs[..., 0] | (pairs[..., 1] << 4)).view("<u4")


def _repack_q4_k(raw: np.ndarray) -> Converted:
    # block_q4_K (ggml-common.h): f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of
    # nibbles; 64 weights per 32 bytes (low nibbles first), decoded as dequantize_row_q4_K does.
    rows = raw.shape[0]
    blocks = np.array(raw).reshape(rows, -1, 144)
    d = blocks[..., 0:2].copy().view("<f2")[..., 0].astype(np.float32)
    dmin = blocks[..., 2:4].copy().view("<f2")[..., 0].astype(np.float32)
    s = blocks[..., 4:16]
    sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)], -1)
    mn = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], -1)
    scales = (d[..., None] * sc.astype(np.float32)).astype(np.float16).reshape(rows, -1)
    biases = (-dmin[..., None] * mn.astype(np.float32)).astype(np.float16).reshape(rows, -1)
    qs = blocks[..., 16:].reshape(rows, -1, 4, 32)
    nibbles = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(rows, -1)
    return Converted(_pack_nibbles(nibbles), scales, biases, 4)


def _repack(raw: np.ndarray, t: GgufTensor) -> Converted:
    if t.type == "Q4_K":
        return _repack_q4_k(raw)
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
    return Converted(_pack_nibbles(nibbles.reshape(rows, -1)), d, m, 4)


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
