"""A small, independent GGUF reader: header, metadata and tensor table, and raw tensor data.

Used to check a written GGUF file without trusting the code that wrote it, and by `models import`
to read a llama.cpp / Ollama / LM Studio file (format: the GGUF spec in ggml's docs/gguf.md,
versions 2 and 3, little-endian).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

# GGUF metadata value types
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# ggml tensor types: id -> (name, elements per block, bytes per block) (ggml.h, ggml.c type_traits)
GGML_TYPE_INFO = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
GGML_TYPES = {k: v[0] for k, v in GGML_TYPE_INFO.items()}
TYPE_IDS = {v: k for k, v in GGML_TYPES.items()}


@dataclass
class GgufTensor:
    name: str
    shape: tuple[int, ...]  # numpy order (GGUF stores the fastest dimension first; reversed here)
    type: str
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        """Bytes the tensor takes in the file (0 for a type this reader does not know)."""
        info = GGML_TYPE_INFO.get(TYPE_IDS.get(self.type, -1))
        if info is None:
            return 0
        _, block, size = info
        return self.n_elements // block * size


@dataclass
class GgufInfo:
    path: Path
    version: int
    metadata: dict = field(default_factory=dict)
    tensors: list[GgufTensor] = field(default_factory=list)
    data_offset: int = 0

    def tensor(self, name: str) -> GgufTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def read(self, name: str):
        """A tensor's values as a numpy array (F32/F16 only)."""
        import numpy as np

        t = self.tensor(name)
        if t.type not in ("F32", "F16"):
            raise ValueError(f"{name} is {t.type}; only F32/F16 can be read back")
        dtype = np.dtype("float32" if t.type == "F32" else "float16")
        self._check_inside(t)
        data = np.memmap(
            self.path,
            dtype=dtype,
            mode="r",
            offset=self.data_offset + t.offset,
            shape=(t.n_elements,),
        )
        return np.array(data).reshape(t.shape)

    def _check_inside(self, t: GgufTensor) -> None:
        if self.data_offset + t.offset + t.n_bytes > self.path.stat().st_size:
            raise GgufFormatError(f"{self.path.name} ends inside tensor {t.name} (truncated).")

    def check_complete(self) -> None:
        """GgufFormatError unless every tensor is of a known type and lies inside the file."""
        for t in self.tensors:
            if not t.n_bytes:
                raise GgufFormatError(f"Tensor {t.name} has an unknown ggml type ({t.type}).")
            self._check_inside(t)

    def raw(self, name: str):
        """A tensor's bytes, as a read-only numpy uint8 memmap of shape (rows, bytes per row)."""
        import numpy as np

        t = self.tensor(name)
        if not t.n_bytes:
            raise GgufFormatError(
                f"{name} has ggml type {t.type}, which this reader does not know."
            )
        self._check_inside(t)
        rows = t.n_elements // t.shape[-1] if t.shape else 1
        return np.memmap(
            self.path,
            dtype=np.uint8,
            mode="r",
            offset=self.data_offset + t.offset,
            shape=(rows, t.n_bytes // rows),
        )


class GgufFormatError(ValueError):
    pass


def read_gguf(path: str | Path) -> GgufInfo:
    path = Path(path)
    with open(path, "rb") as fh:
        r = _Reader(fh)
        if fh.read(4) != b"GGUF":
            raise GgufFormatError(f"{path} is not a GGUF file (wrong magic).")
        version = r.unpack("<I")
        if version not in (2, 3):
            raise GgufFormatError(f"{path} is GGUF version {version}; this reader knows 2 and 3.")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        info = GgufInfo(path, version)
        for _ in range(n_kv):
            key = r.string()
            info.metadata[key] = r.value(r.unpack("<I"))
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("<I")
            dims = [r.unpack("<Q") for _ in range(n_dims)]
            ggml_type = r.unpack("<I")
            offset = r.unpack("<Q")
            info.tensors.append(
                GgufTensor(
                    name,
                    tuple(reversed(dims)),
                    GGML_TYPES.get(ggml_type, f"type{ggml_type}"),
                    offset,
                )
            )
        alignment = int(info.metadata.get("general.alignment", 32))
        pos = fh.tell()
        info.data_offset = pos + (-pos % alignment)
    return info


class _Reader:
    def __init__(self, fh):
        self.fh = fh

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        data = self.fh.read(size)
        if len(data) != size:
            raise GgufFormatError("The GGUF file ends early (truncated).")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        return self.fh.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALARS:
                fmt = _SCALARS[etype]
                size = struct.calcsize(fmt)
                raw = self.fh.read(size * n)
                return list(struct.unpack(f"<{n}{fmt[1:]}", raw))
            return [self.value(etype) for _ in range(n)]
        raise GgufFormatError(f"Unknown GGUF metadata type {vtype}.")


def is_gguf(path: str | Path) -> bool:
    """Whether `path` is a file that starts with GGUF's magic (Ollama's blobs have no suffix)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False
