"""The curated list of models recommended for MacBooks (resources/models.yaml).

Each entry carries the model's published architecture numbers; the download size and training
memory in the YAML are derived from them (parameters x ~4.5 bits for 4-bit weights with their
per-group scales, and `fit.estimate` for the reference run below), and a test keeps them in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig, read_yaml
from engine.models.info import ModelInfo
from engine.workspace import resources_dir

RESOURCE = resources_dir() / "models.yaml"
GB = 1024**3


@dataclass
class Recommended:
    repo_id: str
    name: str
    params_b: float
    download_gb: float
    train_gb: float
    notes: str
    info: ModelInfo

    def to_dict(self) -> dict:
        return {
            k: getattr(self, k)
            for k in ("repo_id", "name", "params_b", "download_gb", "train_gb", "notes")
        }


def reference_run() -> RunConfig:
    """The run the YAML's train_gb refers to: batch 2, 512 tokens, rank 8, 16 layers."""
    cfg = RunConfig()
    cfg.training.batch_size = 2
    cfg.data.max_seq_length = 512
    cfg.lora.rank = 8
    cfg.lora.num_layers = 16
    return cfg


def info_from_arch(repo_id: str, arch: dict, bits: int = 4, group_size: int = 64) -> ModelInfo:
    """A ModelInfo for a model not on disk, from its architecture numbers."""
    d, layers, inter = arch["hidden_size"], arch["num_layers"], arch["intermediate_size"]
    heads, kv = arch["num_heads"], arch["num_kv_heads"]
    hd = arch.get("head_dim") or d // heads
    vocab = arch["vocab_size"]
    tied = bool(arch.get("tie_word_embeddings", False))
    per_layer = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * inter
    embeds = vocab * d * (1 if tied else 2)
    params = layers * per_layer + embeds
    weights = int(params * (bits + 2 * 16 / group_size) / 8)
    return ModelInfo(
        path=repo_id,
        model_type=arch.get("model_type", ""),
        architecture=arch.get("model_type", ""),
        parameters=params,
        num_layers=layers,
        hidden_size=d,
        intermediate_size=inter,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=hd,
        vocab_size=vocab,
        context_length=arch.get("context_length"),
        quantization={"bits": bits, "group_size": group_size},
        weights_bytes=weights,
        size_on_disk=weights,
        activation_bytes=2,
        chat_template=True,
        tokenizer=True,
        tie_word_embeddings=tied,
    )


def recommended_models(path: Path = RESOURCE) -> list[Recommended]:
    """The curated models, smallest first."""
    data = read_yaml(Path(path).read_text(encoding="utf-8"), path) or {}
    out = []
    for item in data.get("models", []):
        out.append(
            Recommended(
                repo_id=item["repo_id"],
                name=item.get("name", item["repo_id"]),
                params_b=float(item["params_b"]),
                download_gb=float(item["download_gb"]),
                train_gb=float(item["train_gb"]),
                notes=item.get("notes", ""),
                info=info_from_arch(item["repo_id"], item["arch"]),
            )
        )
    return sorted(out, key=lambda r: r.params_b)
