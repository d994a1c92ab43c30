"""Read a model folder without running it: config, safetensors headers, tokenizer, chat template.

Everything here parses JSON and the 8-byte-length-prefixed JSON header of each `.safetensors`
file; nothing imports MLX or executes code from the folder, so the GUI can inspect or validate a
model in milliseconds on a worker thread.
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.errors import ModelError

# Files a tokenizer can come from (any one is enough for transformers' fast or slow tokenizers).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# Pickle-based weight formats: loading them can run arbitrary code, and mlx-lm cannot read them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")

DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "U32": 4,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
}
_TORCH_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass
class ModelInfo:
    """What `inspect_model` learned about a model folder. Sizes in bytes."""

    path: str
    model_type: str
    architecture: str
    parameters: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int | None
    quantization: dict | None  # {"bits": 4, "group_size": 64} or None
    weights_bytes: int
    size_on_disk: int
    activation_bytes: int  # bytes per activation value (2 for float16/bfloat16, 4 for float32)
    chat_template: bool
    tokenizer: bool
    tie_word_embeddings: bool
    notes: list[str] = field(default_factory=list)

    @property
    def quantization_label(self) -> str:
        if not self.quantization:
            return {2: "16-bit", 4: "32-bit"}.get(self.activation_bytes, "unquantized")
        q = self.quantization
        label = f"{q['bits']}-bit (group size {q['group_size']})"
        mixed = q.get("mixed") or {}
        if not mixed:
            return label
        by_bits: dict[str, list[str]] = {}
        for name, m in mixed.items():
            by_bits.setdefault(f"{m['bits']}-bit (group size {m['group_size']})", []).append(name)
        parts = []
        for setting, names in sorted(by_bits.items()):
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            parts.append(f"{setting} for {shown}")
        return f"mixed: {label}, except {'; '.join(parts)}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["quantization_label"] = self.quantization_label
        return out


# ---------------------------------------------------------------------------------------------
# Low-level readers


def read_config(path: Path) -> dict:
    """`config.json` of a model folder, as a dict (ModelError when absent or unreadable)."""
    cfg_path = Path(path) / "config.json"
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{path} has no config.json, so it is not a model folder.",
            "Choose the folder that contains config.json and the .safetensors files.",
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg_path} cannot be read: {exc}.") from None
    if not isinstance(data, dict):
        raise ModelError(f"{cfg_path} is not a JSON object.")
    return data


def safetensors_header(path: Path) -> dict:
    """The JSON header of one .safetensors file: {name: {dtype, shape, data_offsets}}."""
    header, _ = _raw_header(Path(path))
    header.pop("__metadata__", None)
    return header


def check_safetensors(path: Path) -> None:
    """Refuse a `.safetensors` file that is cut short or whose header lies: ModelError naming the
    file. Checks the header (valid JSON, each tensor's dtype, shape and byte range) and that the
    file is exactly as long as the header says; reads no tensor data, so it takes milliseconds."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"{name} cannot be read ({exc.strerror or exc}).") from None
    header, length = _raw_header(path)
    if length > size - 8:
        raise ModelError(
            f"{name} is cut short: its header says more than the file holds.",
            "Copy or download the model again.",
        )
    data_bytes = size - 8 - length
    end = 0
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = meta["dtype"], meta["shape"], meta["data_offsets"]
            ok = (
                all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(start, int)
                and isinstance(stop, int)
                and 0 <= start <= stop
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ModelError(f"{name} has a malformed entry for tensor {key!r} in its header.")
        width = DTYPE_BYTES.get(str(dtype))
        if width is not None and math.prod(shape) * width != stop - start:
            raise ModelError(
                f"{name}: tensor {key!r} is said to be {dtype} {list(shape)} "
                f"({math.prod(shape) * width} bytes) but is given {stop - start} bytes.",
                "The file is damaged; copy or download the model again.",
            )
        end = max(end, stop)
    if end != data_bytes:
        what = "cut short" if end > data_bytes else "longer than its header says"
        raise ModelError(
            f"{name} is {what} ({data_bytes:,} bytes of tensor data, the header says {end:,}).",
            "The file is damaged or incomplete; copy or download the model again.",
        )


def _raw_header(path: Path) -> tuple[dict, int]:
    """The header with `__metadata__`, and its length in bytes as the file states it."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ModelError(f"{path.name} is not a safetensors file (too short).")
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 1024 * 1024:
            raise ModelError(f"{path.name} has an implausible safetensors header.")
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelError(f"{path.name} is not a valid safetensors file.") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path.name} is not a valid safetensors file.")
    return header, length


def check_weights(path: Path) -> None:
    """`check_safetensors` for every weight file of a model folder, and that an index names only
    shards that are there."""
    path = Path(path)
    for f in weight_files(path):
        check_safetensors(f)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelError(f"{index.name} cannot be read.") from None
        missing = sorted(str(s) for s in shards if not (path / str(s)).is_file())
        if missing:
            raise ModelError(
                f"{index.name} names weight files that are missing: {', '.join(missing[:3])}.",
                "Copy the complete model folder.",
            )


def weight_files(path: Path) -> list[Path]:
    """The safetensors weight files a loader would read (mlx-lm reads `model*.safetensors`)."""
    path = Path(path)
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        files = sorted(p for p in path.glob("*.safetensors") if not p.name.startswith("adapter"))
    return files


def folder_size(path: Path) -> int:
    """Bytes on disk of a folder, following the HF cache's symlinks to their blobs once each."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for p in Path(path).rglob("*"):
        try:
            st = p.stat()
        except OSError:
            continue
        if not p.is_file():
            continue
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            total += st.st_size
    return total


def supported_model_type(model_type: str, architectures: list | tuple = ()) -> str | None:
    """The mlx-lm module name for `model_type`, or None when mlx-lm has no such model.

    Looks for the module file first (no import needed); only unknown names pay for importing
    mlx-lm's remapping table.
    """
    if not model_type or not all(c.isalnum() or c == "_" for c in model_type):
        return None
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        return None
    models_dir = Path(next(iter(spec.submodule_search_locations))) / "models"
    if (models_dir / f"{model_type}.py").exists():
        return model_type
    from mlx_lm.utils import MODEL_ARCHITECTURE_REMAPPING, MODEL_REMAPPING

    for arch in architectures or ():
        mapped = MODEL_ARCHITECTURE_REMAPPING.get((model_type, arch))
        if mapped:
            return mapped
    mapped = MODEL_REMAPPING.get(model_type)
    if mapped and (models_dir / f"{mapped}.py").exists():
        return mapped
    return None


# ---------------------------------------------------------------------------------------------
# Validation and inspection


def validate_model_dir(path: str | Path) -> dict:
    """Check that mlx-lm can train the model in `path`; return its config or raise ModelError.

    Reasons for rejection: no config.json, unknown model_type, weights only in pickle formats
    (.bin/.pt), no weights at all, no tokenizer. Nothing from the folder is executed.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelError(f"{path} is not a folder.", "Choose the folder that contains config.json.")
    config = read_config(path)
    model_type = str(config.get("model_type") or "")
    if not model_type:
        raise ModelError(f"{path.name}/config.json has no model_type, so mlx-lm cannot load it.")
    if supported_model_type(model_type, config.get("architectures") or ()) is None:
        raise ModelError(
            f"model_type '{model_type}' is not supported by mlx-lm, so Lathe cannot train it.",
            "Pick a model with a supported architecture (Llama, Qwen, Gemma, Phi, Mistral, ...).",
        )
    if not weight_files(path):
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelError(
                f"{path.name} has only PyTorch pickle weights ({', '.join(sorted(pickles)[:3])}); "
                "Lathe reads only .safetensors because pickle files can run code when loaded.",
                "Download the safetensors version of this model, or convert it with a tool you trust.",
            )
        raise ModelError(f"{path.name} has no .safetensors weights.")
    if not any((path / name).exists() for name in TOKENIZER_FILES) and not list(
        path.glob("*.tiktoken")
    ):
        raise ModelError(
            f"{path.name} has no tokenizer (tokenizer.json or tokenizer.model).",
            "Copy the tokenizer files of the original model into the folder.",
        )
    return config


def _text_config(config: dict) -> dict:
    # Multimodal configs nest the language model's settings; the top level wins where both exist.
    nested = config.get("text_config")
    return {**nested, **config} if isinstance(nested, dict) else config


def has_chat_template(path: Path) -> bool:
    """Whether the tokenizer in `path` carries a chat template (config key or template file)."""
    path = Path(path)
    if any((path / name).exists() for name in CHAT_TEMPLATE_FILES):
        return True
    try:
        tok_cfg = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(tok_cfg.get("chat_template")) if isinstance(tok_cfg, dict) else False


def inspect_model(path: str | Path) -> ModelInfo:
    """Architecture, parameters, layers, sizes, quantization, context and chat template of a model."""
    path = Path(path).expanduser()
    config = validate_model_dir(path)
    tc = _text_config(config)
    headers: dict[str, dict] = {}
    for f in weight_files(path):
        headers.update(safetensors_header(f))

    quant = config.get("quantization") or config.get("quantization_config")
    quantization = None
    if isinstance(quant, dict) and "bits" in quant:
        quantization = {"bits": int(quant["bits"]), "group_size": int(quant.get("group_size", 64))}
        if quant.get("mode") and quant["mode"] != "affine":
            quantization["mode"] = quant["mode"]
        # Per-module settings that differ from the default (mlx-lm writes them under the module's
        # path): a mixed quantization, such as an 8-bit embedding with 4-bit layers.
        mixed = {
            name: {"bits": int(v["bits"]), "group_size": int(v.get("group_size", 64))}
            for name, v in quant.items()
            if isinstance(v, dict)
            and "bits" in v
            and (int(v["bits"]), int(v.get("group_size", 64)))
            != (quantization["bits"], quantization["group_size"])
        }
        if mixed:
            quantization["mixed"] = mixed

    weights_bytes = 0
    parameters = 0
    float_bytes: dict[int, int] = {}
    for name, meta in headers.items():
        numel = math.prod(meta.get("shape") or [1])
        nbytes = numel * DTYPE_BYTES.get(meta.get("dtype", "F32"), 4)
        weights_bytes += nbytes
        if name.endswith((".scales", ".biases")) and name.rsplit(".", 1)[0] + ".weight" in headers:
            continue  # quantization metadata, not parameters
        if meta.get("dtype") in ("U32", "I32") and name.endswith(".weight"):
            base = name[: -len(".weight")]
            scales = headers.get(base + ".scales")
            if scales and quantization:
                shape = meta["shape"]
                parameters += math.prod(shape[:-1]) * shape[-1] * 32 // _bits_for(base, quant)
                continue
        parameters += numel
        if meta.get("dtype") in ("F32", "F16", "BF16"):
            size = DTYPE_BYTES[meta["dtype"]]
            float_bytes[size] = float_bytes.get(size, 0) + numel

    act = _activation_bytes(config, headers, float_bytes)
    hidden = int(tc.get("hidden_size") or tc.get("d_model") or tc.get("n_embd") or 0)
    heads = int(tc.get("num_attention_heads") or tc.get("n_head") or 1)
    kv_heads = int(tc.get("num_key_value_heads") or heads)
    head_dim = int(tc.get("head_dim") or (hidden // heads if heads else 0))
    layers = int(tc.get("num_hidden_layers") or tc.get("n_layer") or tc.get("num_layers") or 0)
    notes = []
    if not layers:
        notes.append("config.json does not say how many layers the model has.")
    context = tc.get("max_position_embeddings") or tc.get("max_seq_len") or tc.get("n_positions")
    archs = config.get("architectures") or [config.get("model_type")]
    return ModelInfo(
        path=str(path),
        model_type=str(config.get("model_type")),
        architecture=str(archs[0]),
        parameters=int(parameters),
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=int(tc.get("intermediate_size") or tc.get("ffn_dim") or 4 * hidden),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=int(tc.get("vocab_size") or 0),
        context_length=int(context) if context else None,
        quantization=quantization,
        weights_bytes=int(weights_bytes),
        size_on_disk=folder_size(path),
        activation_bytes=act,
        chat_template=has_chat_template(path),
        tokenizer=True,
        tie_word_embeddings=bool(tc.get("tie_word_embeddings", False)),
        notes=notes,
    )


def _bits_for(module: str, quant: dict) -> int:
    # mlx-lm writes per-layer overrides into the quantization dict under the module's path.
    override = quant.get(module)
    if isinstance(override, dict) and "bits" in override:
        return int(override["bits"])
    return int(quant.get("bits", 4))


def _activation_bytes(config: dict, headers: dict, float_bytes: dict[int, int]) -> int:
    # Norm weights are kept in the compute dtype even in quantized models, so they say what
    # dtype activations will have; config's torch_dtype is the fallback.
    for name, meta in headers.items():
        if "norm" in name and meta.get("dtype") in ("F32", "F16", "BF16"):
            return DTYPE_BYTES[meta["dtype"]]
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "")
    if dtype in _TORCH_DTYPE_BYTES:
        return _TORCH_DTYPE_BYTES[dtype]
    if float_bytes:
        return max(float_bytes, key=float_bytes.get)
    return 2


def is_model_folder(path: Path) -> bool:
    """A folder with config.json and safetensors weights (what mlx_lm.load reads)."""
    return (path / "config.json").is_file() and any(path.glob("model*.safetensors"))
