"""Model cards: what a fused model, adapter or GGUF is, made from what the run folder recorded.

Everything comes from the run folder: `config.yaml` (settings), `events.jsonl` (final losses,
trained tokens, steps), `status.json` (how the run ended) and the dataset files when they are on
this Mac (example counts). Nothing is invented: a fact the run did not record is left out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.export.source import AdapterSource

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_repo_id(base_model: str) -> str | None:
    """`base_model` when it is a Hugging Face repo id (not a local folder), else None."""
    if Path(base_model).expanduser().exists() or not _REPO_ID.match(base_model):
        return None
    return base_model


def read_events(run_dir: Path) -> list[dict]:
    from engine.events import read_log

    try:
        return read_log(Path(run_dir) / "events.jsonl")
    except OSError:
        return []


def dataset_stats(data_path: str) -> dict:
    """Example counts per split for a JSONL file or a folder of train/valid/test.jsonl."""
    path = Path(data_path).expanduser() if data_path else None
    if path is None or not path.exists():
        return {}
    files = (
        {"train": path}
        if path.is_file()
        else {
            split: path / f"{split}.jsonl"
            for split in ("train", "valid", "test")
            if (path / f"{split}.jsonl").is_file()
        }
    )
    stats = {}
    for split, file in files.items():
        try:
            with open(file, "rb") as fh:
                stats[f"{split}_examples"] = sum(1 for line in fh if line.strip())
        except OSError:
            continue
    return stats


def run_facts(run_dir: Path | None) -> dict:
    """Settings, data statistics and final metrics recorded in a run folder."""
    facts: dict = {"settings": {}, "data": {}, "metrics": {}, "status": None, "run_id": None}
    if run_dir is None:
        return facts
    run_dir = Path(run_dir)
    facts["run_id"] = run_dir.name
    cfg = None
    if (run_dir / "config.yaml").is_file():
        from engine.config import RunConfig

        try:
            cfg = RunConfig.load(run_dir / "config.yaml", warnings=[])
        except Exception:  # noqa: BLE001 - a card never fails on a damaged config
            cfg = None
    if cfg is not None:
        lo, t, d = cfg.lora, cfg.training, cfg.data
        facts["settings"] = {
            "fine_tune_type": lo.fine_tune_type,
            "lora_rank": lo.rank,
            "lora_scale": lo.scale,
            "lora_dropout": lo.dropout,
            "num_layers": lo.num_layers,
            "learning_rate": t.learning_rate,
            "batch_size": t.batch_size,
            "iters": t.iters,
            "epochs": t.epochs if not t.iters else None,
            "optimizer": t.optimizer,
            "max_seq_length": d.max_seq_length,
            "mask_prompt": d.mask_prompt,
            "grad_accumulation_steps": t.grad_accumulation_steps,
            "seed": t.seed,
        }
        facts["settings"] = {k: v for k, v in facts["settings"].items() if v is not None}
        facts["data"] = {"dataset": Path(d.path).name if d.path else None, **dataset_stats(d.path)}
    metrics = facts["metrics"]
    for event in read_events(run_dir):
        kind = event.get("event")
        if kind == "started":
            for key, value in event.items():  # data statistics the trainer chose to report
                if key in ("data", "dataset") and isinstance(value, dict):
                    facts["data"].update({k: v for k, v in value.items() if _scalar(v)})
            if event.get("total_steps") is not None:
                metrics["total_steps"] = event["total_steps"]
        elif kind == "progress":
            for key in (
                "step",
                "train_loss",
                "trained_tokens",
                "tokens_per_second",
                "peak_memory_gb",
            ):
                if event.get(key) is not None:
                    metrics["final_" + key if key in ("step", "train_loss") else key] = event[key]
        elif kind == "eval" and event.get("val_loss") is not None:
            metrics["final_val_loss"] = event["val_loss"]
            metrics["val_loss_step"] = event.get("step")
        elif kind == "finished":
            summary = event.get("summary") or {}
            if isinstance(summary, dict):
                metrics.update({k: v for k, v in summary.items() if _scalar(v) and v is not None})
            facts["status"] = event.get("status")
    status = {}
    try:
        status = json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        pass
    if isinstance(status, dict) and status.get("state"):
        facts["status"] = status["state"]
        if status.get("step") is not None:
            metrics.setdefault("final_step", status["step"])
    facts["data"] = {k: v for k, v in facts["data"].items() if v is not None}
    return facts


def model_card(
    source: AdapterSource,
    *,
    kind: str = "mlx",
    repo_id: str | None = None,
    dequantized: bool = False,
    quantization: dict | None = None,
) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) for an export of `source`.

    `kind` is "mlx" (fused MLX folder), "adapter" (LoRA adapter only) or "gguf".
    """
    facts = run_facts(source.run_dir)
    hub_base = hub_repo_id(source.base_model)
    tags = ["lathe", "mlx" if kind != "gguf" else "gguf", "lora", "fine-tuned"]
    front = ["---"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    if kind != "gguf":  # the Hub recognises GGUF files by themselves
        front.append("library_name: mlx")
    front.append("pipeline_tag: text-generation")
    front.append("tags:")
    front.extend(f"- {t}" for t in tags)
    front.append("---")

    title = repo_id or (facts["run_id"] or source.label)
    what = {"mlx": "a fused MLX model", "adapter": "a LoRA adapter (MLX)", "gguf": "a GGUF model"}[
        kind
    ]
    base_link = (
        f"[{hub_base}](https://huggingface.co/{hub_base})" if hub_base else f"`{source.base_model}`"
    )
    lines = [
        f"# {title}",
        "",
        f"This is {what} fine-tuned from {base_link} with Lathe (LoRA on MLX).",
        "",
    ]
    if kind == "mlx":
        if quantization and not dequantized:
            lines.append(
                f"Weights keep the base model's quantization ({quantization.get('bits')}-bit, "
                f"group size {quantization.get('group_size')})."
            )
        else:
            lines.append("Weights are unquantized (the adapter is fused exactly).")
        lines.append("")
    if source.step is not None:
        lines += [f"Exported from the checkpoint at step {source.step}.", ""]

    if facts["data"]:
        lines += ["## Training data", "", "| | |", "|---|---|"]
        lines += [f"| {_label(k)} | {_fmt(v)} |" for k, v in facts["data"].items()]
        lines.append("")
    if facts["settings"]:
        lines += ["## Training settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {_label(k)} | {_fmt(v)} |" for k, v in facts["settings"].items()]
        lines.append("")
    if facts["metrics"] or facts["status"]:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        if facts["status"]:
            lines.append(f"| run status | {facts['status']} |")
        lines += [f"| {_label(k)} | {_fmt(v)} |" for k, v in facts["metrics"].items()]
        lines.append("")
    lines += _usage(kind, repo_id or "PATH")
    return "\n".join(front) + "\n\n" + "\n".join(lines).rstrip() + "\n"


def write_card(folder: Path, source: AdapterSource, **kwargs) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(model_card(source, **kwargs), encoding="utf-8")
    return path


def _usage(kind: str, where: str) -> list[str]:
    if kind == "gguf":
        return [
            "## Use",
            "",
            "```sh",
            "llama-cli -m model.gguf -cnv",
            "ollama create my-model -f Modelfile",
            "```",
        ]
    if kind == "adapter":
        return [
            "## Use",
            "",
            "```sh",
            "pip install mlx-lm",
            f'mlx_lm.generate --model BASE_MODEL --adapter-path {where} --prompt "Hello"',
            "```",
        ]
    return [
        "## Use",
        "",
        "```sh",
        "pip install mlx-lm",
        f'mlx_lm.generate --model {where} --prompt "Hello"',
        "```",
    ]


def _scalar(v) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def _label(key: str) -> str:
    return key.replace("_", " ")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v).replace("|", "\\|")
