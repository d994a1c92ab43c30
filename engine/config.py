"""Run configuration: one dataclass per section, each field with a default and help text.

The help text is also the CLI help and the GUI tooltip. Configs are saved as YAML (nested
sections) and can be read from the flat YAML files that `mlx_lm.lora -c` reads; `to_mlx_lm_dict`
writes one back. Unknown keys are reported, never fatal. Numbers are parsed deliberately, because
PyYAML reads `1e-5` as a string.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import LatheError

SCHEMA_VERSION = 1


class ConfigError(LatheError, ValueError):
    """A config value that cannot be used; the message names the field and what to do."""

    kind = "config"


def _f(default: Any, help: str, **extra: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(
            default_factory=lambda: type(default)(default), metadata={"help": help, **extra}
        )
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class ModelConfig:
    path: str = _f("", "Model to fine-tune: a local folder or a Hugging Face repo id.")
    chat_template: str | None = _f(
        None,
        "Jinja chat template to use instead of the model's own. Base models without a template "
        "get Lathe's default template, and the run records which was used.",
    )


@dataclass
class DataConfig:
    path: str = _f(
        "", "Dataset: a JSONL file, or a folder with train.jsonl, valid.jsonl, test.jsonl."
    )
    mask_prompt: bool = _f(
        True,
        "Train only on the answers (assistant turns / completions), not on the prompts.",
    )
    max_seq_length: int = _f(
        2048, "Longest example in tokens; longer examples are truncated (the report says how many)."
    )
    valid_fraction: float = _f(
        0.1,
        "Share of the training examples held out for validation when the data has no valid split.",
    )
    val_batches: int = _f(
        25, "Validation batches per evaluation, always the same examples; -1 uses the whole set."
    )
    test_batches: int = _f(
        500, "Test batches for the final test evaluation; -1 uses the whole set."
    )
    packing: str = _f(
        "auto",
        "How examples share a step. auto: short examples of similar length share steps up to the "
        "tokens of the largest ordinary batch (budget) when the data is large enough; budget: always "
        "so; pack: several examples per row with attention kept inside each example; off: always "
        "batch_size examples per step.",
        choices=("auto", "budget", "pack", "on", "off"),
    )
    pack_length: int = _f(0, "Tokens per packed row (packing: pack); 0 uses the longest example.")
    allow_template_drops: bool = _f(
        False,
        "Start even when the chat template leaves out the tool calls that are every training "
        "example's answer, so only end-of-turn tokens would train (`train --force`).",
    )
    prompt_feature: str = _f("prompt", "Key of the prompt in prompt/completion data.")
    completion_feature: str = _f("completion", "Key of the completion in prompt/completion data.")
    chat_feature: str = _f("messages", "Key of the message list in chat data.")
    text_feature: str = _f("text", "Key of the text in plain-text data.")
    eval_prompts: str | None = _f(
        None,
        "Held-out prompts with reference answers for `eval` (JSONL: prompt + completion, or messages "
        "ending with the reference answer); empty uses the test split, else the validation split.",
    )
    eval_metrics: list[str] = _f(
        [],
        "Task metrics for this dataset's held-out prompts: exact, contains, regex:PATTERN, json, "
        "schema:FILE.json, length. Empty picks exact, contains and length (and json when the "
        "reference answers are JSON).",
    )


@dataclass
class LoraConfig:
    fine_tune_type: str = _f(
        "lora",
        "lora (small adapter), dora (weight-decomposed adapter) or full (all weights of the "
        "trained layers). A quantized base model makes lora/dora QLoRA.",
        choices=("lora", "dora", "full"),
    )
    num_layers: int = _f(16, "How many of the last transformer layers to train; -1 trains all.")
    rank: int = _f(8, "LoRA rank: adapter size. Higher learns more and uses more memory.")
    scale: float = _f(20.0, "LoRA scale: how strongly the adapter changes the layer's output.")
    dropout: float = _f(0.0, "Dropout on the adapter input during training.")
    keys: list[str] | None = _f(
        None, "Module names to adapt (e.g. self_attn.q_proj); empty adapts every linear layer."
    )


@dataclass
class TrainingConfig:
    iters: int | None = _f(None, "Optimizer steps to train for; when empty, `epochs` decides.")
    epochs: float = _f(2.0, "Passes over the training data (used when `iters` is empty).")
    batch_size: int = _f(4, "Examples per step.")
    learning_rate: float = _f(1e-4, "Peak learning rate.")
    optimizer: str = _f("adam", "Optimizer.", choices=("adam", "adamw", "sgd", "adafactor", "muon"))
    optimizer_config: dict = _f({}, "Extra optimizer arguments, e.g. {weight_decay: 0.01}.")
    lr_schedule: dict | None = _f(
        None,
        "Learning rate schedule as mlx-lm writes it: {name: cosine_decay, arguments: [1e-4, 1000], "
        "warmup: 100}.",
    )
    grad_checkpoint: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    auto_grad_checkpoint: bool = _f(
        True,
        "Turn gradient checkpointing on by itself when the memory estimate says the run would be tight "
        "or would not fit without it (same results, steps about a third slower).",
    )
    grad_accumulation_steps: int = _f(1, "Batches whose gradients are summed per optimizer update.")
    steps_per_report: int = _f(10, "Steps between progress reports.")
    steps_per_eval: int = _f(200, "Steps between validation evaluations.")
    save_every: int = _f(100, "Steps between checkpoints.")
    seed: int = _f(0, "Random seed for data order, the validation subset and dropout.")
    clear_cache_threshold: int = _f(
        0,
        "Free MLX's buffer cache after a step when it holds more than this many bytes (0: Lathe "
        "decides: after every step on a CPU, where that is faster; capped at one step's working set on a GPU).",
    )
    test: bool = _f(False, "Evaluate on the test split after training.")
    resume_adapter_file: str | None = _f(
        None, "Adapter weights (.safetensors) to start from instead of a fresh adapter."
    )
    golden_prompts: list[str] = _f(
        [],
        "A few prompts answered greedily at every checkpoint, so the run keeps a timeline of how its "
        "answers change (shown on the Runs page and in the report).",
    )
    golden_prompts_file: str | None = _f(
        None,
        "A file of golden prompts, one per line (.txt) or one JSON object with a prompt per line (.jsonl).",
    )
    golden_max_tokens: int = _f(64, "Longest golden answer in tokens.")
    general_check: bool | None = _f(
        None,
        "Forgetting check: at the start and at every checkpoint, answer a few general prompts "
        "(facts, instructions, formats) greedily and score them, so the run shows when it starts "
        "to lose what the base model could do. Empty (auto): on when the model ships its own chat "
        "template (an instruction-tuned model, which answers them in a few tokens each), off for "
        "base models, which cannot follow them. It also stops when the base model answers none "
        "right.",
    )
    general_prompts_file: str | None = _f(
        None,
        "General prompts for the forgetting check (JSONL: prompt, reference, metric); empty uses "
        "Lathe's built-in set.",
    )
    general_max_tokens: int = _f(32, "Longest answer to a general prompt in tokens.")
    early_stopping_patience: int = _f(
        0,
        "Stop when the validation loss has not improved for this many evaluations; 0 never stops early.",
    )
    report_utilisation: bool = _f(
        True,
        "At the end, measure how close training ran to this machine's matmul speed (takes ~0.5 s).",
    )
    pad_multiple: int = _f(
        8,
        "Batches are padded to a multiple of this many tokens (fewer distinct shapes to compile).",
    )
    nan_retry: bool = _f(
        False,
        "When the loss becomes NaN or infinite, go back to the last good checkpoint and retry once "
        "at half the learning rate, instead of stopping.",
    )
    ignore_fit_check: bool = _f(
        False,
        "Start even when the memory estimate says the run will not fit (`train --force`). The run "
        "still saves a checkpoint and stops if memory runs short.",
    )


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "lora": LoraConfig,
    "training": TrainingConfig,
}


@dataclass
class RunConfig:
    schema_version: int = SCHEMA_VERSION
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def apply(self, changes: dict) -> RunConfig:
        """Set fields named "section.field" (as fit suggestions and automatic choices name them)."""
        for key, value in changes.items():
            section, name = key.split(".")
            setattr(getattr(self, section), name, value)
        return self

    # -- conversion -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_dict(cls, data: dict, warnings: list[str] | None = None) -> RunConfig:
        """Build a config from a nested Lathe dict or a flat `mlx_lm.lora` dict.

        Unknown keys are appended to `warnings` (when given) instead of failing.
        """
        warnings = warnings if warnings is not None else []
        if not isinstance(data, dict):
            raise ConfigError("The config must be a mapping of keys to values.")
        if _is_flat(data):
            data = _from_mlx_lm(data, warnings)
        cfg = cls()
        for key, value in data.items():
            if key == "schema_version":
                version = _coerce(int, value, "schema_version")
                if version > SCHEMA_VERSION:
                    warnings.append(
                        f"schema_version {version} is newer than this Lathe understands "
                        f"({SCHEMA_VERSION}); unknown keys are ignored."
                    )
                continue
            if key == "name":
                cfg.name = "" if value is None else str(value)
            elif key in SECTIONS:
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise ConfigError(f"'{key}' must be a section of keys, not {value!r}.")
                setattr(cfg, key, _section_from_dict(SECTIONS[key], value, key, warnings))
            else:
                warnings.append(f"Unknown key '{key}' was ignored.")
        return cfg

    @classmethod
    def load(cls, path: str | Path, warnings: list[str] | None = None) -> RunConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ConfigError(f"Config file {path} does not exist.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Config file {path} cannot be read: {exc}.") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError(
                f"{path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}."
            ) from None
        return cls.from_dict(data, warnings)

    def to_mlx_lm_dict(self) -> dict:
        """The same settings as the flat dict `mlx_lm.lora -c` reads."""
        t, d, lo = self.training, self.data, self.lora
        out: dict[str, Any] = {
            "model": self.model.path,
            "train": True,
            "data": d.path,
            "fine_tune_type": lo.fine_tune_type,
            "num_layers": lo.num_layers,
            "lora_parameters": {"rank": lo.rank, "scale": lo.scale, "dropout": lo.dropout},
            "batch_size": t.batch_size,
            "iters": t.iters if t.iters else 1000,
            "val_batches": d.val_batches,
            "learning_rate": t.learning_rate,
            "steps_per_report": t.steps_per_report,
            "steps_per_eval": t.steps_per_eval,
            "save_every": t.save_every,
            "test": t.test,
            "test_batches": d.test_batches,
            "max_seq_length": d.max_seq_length,
            "grad_checkpoint": t.grad_checkpoint,
            "grad_accumulation_steps": t.grad_accumulation_steps,
            "mask_prompt": d.mask_prompt,
            "seed": t.seed,
            "optimizer": t.optimizer,
        }
        if lo.keys:
            out["lora_parameters"]["keys"] = list(lo.keys)
        if t.optimizer_config:
            out["optimizer_config"] = {t.optimizer: dict(t.optimizer_config)}
        if t.lr_schedule:
            out["lr_schedule"] = dict(t.lr_schedule)
        if t.resume_adapter_file:
            out["resume_adapter_file"] = t.resume_adapter_file
        for key in ("prompt_feature", "completion_feature", "chat_feature", "text_feature"):
            if getattr(d, key) != getattr(DataConfig, key, None) and getattr(d, key):
                out[key] = getattr(d, key)
        return out

    def validate(self) -> None:
        """Check values that no type can express; raise ConfigError naming the field."""
        t, d, lo = self.training, self.data, self.lora
        checks = [
            (t.batch_size >= 1, "training.batch_size must be at least 1."),
            (
                t.iters is None or t.iters >= 1,
                "training.iters must be at least 1 (or empty to use epochs).",
            ),
            (t.epochs > 0, "training.epochs must be more than 0."),
            (t.learning_rate > 0, "training.learning_rate must be more than 0, e.g. 1e-4."),
            (
                t.grad_accumulation_steps >= 1,
                "training.grad_accumulation_steps must be at least 1.",
            ),
            (t.steps_per_report >= 1, "training.steps_per_report must be at least 1."),
            (t.steps_per_eval >= 1, "training.steps_per_eval must be at least 1."),
            (t.save_every >= 1, "training.save_every must be at least 1."),
            (t.pad_multiple >= 1, "training.pad_multiple must be at least 1."),
            (
                t.early_stopping_patience >= 0,
                "training.early_stopping_patience must be 0 (off) or more.",
            ),
            (t.golden_max_tokens >= 1, "training.golden_max_tokens must be at least 1."),
            (t.general_max_tokens >= 1, "training.general_max_tokens must be at least 1."),
            (d.max_seq_length >= 2, "data.max_seq_length must be at least 2 tokens."),
            (
                d.packing in ("auto", "budget", "pack", "on", "off"),
                "data.packing must be auto, budget, pack or off.",
            ),
            (d.pack_length >= 0, "data.pack_length must be 0 (automatic) or a number of tokens."),
            (0 <= d.valid_fraction < 1, "data.valid_fraction must be between 0 and 1, e.g. 0.1."),
            (lo.rank >= 1, "lora.rank must be at least 1."),
            (0 <= lo.dropout < 1, "lora.dropout must be between 0 and 1."),
            (
                lo.fine_tune_type in ("lora", "dora", "full"),
                "lora.fine_tune_type must be lora, dora or full.",
            ),
            (
                t.optimizer in ("adam", "adamw", "sgd", "adafactor", "muon"),
                "training.optimizer must be one of adam, adamw, sgd, adafactor, muon.",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if not self.model.path:
            raise ConfigError("No model given: set model.path (or pass --model).")
        if not self.data.path:
            raise ConfigError("No dataset given: set data.path (or pass --data).")


# ---------------------------------------------------------------------------------------------
# Parsing helpers


def field_help(section: str, name: str) -> str:
    """Help text of `section.name`, for CLI help and GUI tooltips."""
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{section}.{name}")


def _section_from_dict(cls: type, data: dict, section: str, warnings: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in known:
            warnings.append(f"Unknown key '{section}.{key}' was ignored.")
            continue
        values[key] = _coerce(hints[key], value, f"{section}.{key}")
    return cls(**values)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (
            isinstance(value, str) and value.strip().lower() in ("", "null", "none")
        ):
            return None
        return _coerce(args[0], value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in (
            "true",
            "yes",
            "on",
            "1",
            "false",
            "no",
            "off",
            "0",
        ):
            return value.strip().lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where} must be true or false, not {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a whole number, not {value!r}.")
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and number.is_integer():
                return int(number)
            if isinstance(number, int):
                return number
        except ValueError:
            pass
        raise ConfigError(f"{where} must be a whole number, not {value!r}.")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, not {value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number such as 1e-4, not {value!r}.") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be text, not {type(value).__name__}.")
        return str(value)
    if origin is list or tp is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list.")
        return [str(v) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of keys to values.")
        return _numbers_in(dict(value))
    return value


def _numbers_in(obj: Any) -> Any:
    """Turn number-like strings (YAML's `1e-5`) inside nested dicts/lists into floats."""
    if isinstance(obj, dict):
        return {k: _numbers_in(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers_in(v) for v in obj]
    if isinstance(obj, str):
        try:
            return float(obj) if any(c in obj.lower() for c in ".e") else int(obj)
        except ValueError:
            return obj
    return obj


# mlx_lm.lora flat key -> (section, field)
_MLX_LM_KEYS: dict[str, tuple[str, str] | None] = {
    "model": ("model", "path"),
    "data": ("data", "path"),
    "fine_tune_type": ("lora", "fine_tune_type"),
    "num_layers": ("lora", "num_layers"),
    "batch_size": ("training", "batch_size"),
    "iters": ("training", "iters"),
    "epochs": ("training", "epochs"),
    "val_batches": ("data", "val_batches"),
    "test_batches": ("data", "test_batches"),
    "learning_rate": ("training", "learning_rate"),
    "steps_per_report": ("training", "steps_per_report"),
    "steps_per_eval": ("training", "steps_per_eval"),
    "save_every": ("training", "save_every"),
    "max_seq_length": ("data", "max_seq_length"),
    "grad_checkpoint": ("training", "grad_checkpoint"),
    "grad_accumulation_steps": ("training", "grad_accumulation_steps"),
    "lr_schedule": ("training", "lr_schedule"),
    "mask_prompt": ("data", "mask_prompt"),
    "seed": ("training", "seed"),
    "optimizer": ("training", "optimizer"),
    "clear_cache_threshold": ("training", "clear_cache_threshold"),
    "test": ("training", "test"),
    "resume_adapter_file": ("training", "resume_adapter_file"),
    "prompt_feature": ("data", "prompt_feature"),
    "completion_feature": ("data", "completion_feature"),
    "chat_feature": ("data", "chat_feature"),
    "text_feature": ("data", "text_feature"),
    "chat_template": ("model", "chat_template"),
    # Keys mlx_lm reads that mean nothing for a Lathe run (the run folder decides the paths).
    "train": None,
    "adapter_path": None,
    "report_to": None,
    "project_name": None,
    "config": None,
}


def _is_flat(data: dict) -> bool:
    if any(isinstance(data.get(k), dict) for k in SECTIONS):
        return False
    return any(k in _MLX_LM_KEYS or k in ("lora_parameters", "optimizer_config") for k in data)


def _from_mlx_lm(flat: dict, warnings: list[str]) -> dict:
    nested: dict[str, Any] = {k: {} for k in SECTIONS}
    for key, value in flat.items():
        if key in ("schema_version", "name"):
            nested[key] = value
        elif key == "lora_parameters":
            if not isinstance(value, dict):
                raise ConfigError("lora_parameters must be a mapping (rank, scale, dropout, keys).")
            for k, v in value.items():
                if k in ("rank", "scale", "dropout", "keys"):
                    nested["lora"][k] = v
                elif k == "alpha":
                    warnings.append(
                        "lora_parameters.alpha is not used by mlx-lm or Lathe; set 'scale' instead."
                    )
                else:
                    warnings.append(f"Unknown key 'lora_parameters.{k}' was ignored.")
        elif key == "optimizer_config":
            if isinstance(value, dict):
                chosen = str(flat.get("optimizer", "adam")).lower()
                nested["training"]["optimizer_config"] = value.get(chosen) or {}
        elif key == "trust_remote_code":
            if value:
                warnings.append(
                    "trust_remote_code is never enabled: Lathe does not run code from model folders."
                )
        elif key == "hf_dataset":
            warnings.append(
                "hf_dataset is not supported: import the dataset as a file or folder instead."
            )
        elif key in _MLX_LM_KEYS:
            target = _MLX_LM_KEYS[key]
            if target is not None:
                nested[target[0]][target[1]] = value
        else:
            warnings.append(f"Unknown key '{key}' was ignored.")
    return nested
