"""Run configuration: one dataclass per section, each field with a default and help text.

Each field's metadata is the one definition of the setting (issue 19): `help` (the CLI help and
the GUI tooltip), `choices`, the range (`at_least`, `above`, `at_most`, `below`), `example`, the
`cli` flag of `train`, and for the Train page's form `label`, `step` (a float with a step is a
spin box, one without is a text field that takes 1e-4) and `shown_as` (the text the form shows
for the one value at the bottom of the range: -1 as "All", None as "from epochs"). Validation,
the CLI flags and the form's widgets all read it; nothing else types a range, choice list or help.

Configs are saved as YAML (nested sections) and can be read from the flat YAML files that
`mlx_lm.lora -c` reads; `to_mlx_lm_dict` writes one back. Unknown keys are reported, never fatal.
Numbers are parsed deliberately, because PyYAML reads `1e-5` as a string.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import LatheError

SCHEMA_VERSION = 1
MAX_TOKENS = 1 << 20  # the most tokens a sequence, a packed row or a LoRA rank may name
MAX_SEED = 2**32 - 1  # the seeds numpy and MLX accept
# The learning rate schedules of mlx.optimizers that a config can name, with how many
# arguments each takes (mlx-lm's build_schedule passes `arguments` to them as they are).
LR_SCHEDULES = {
    "cosine_decay": (2, 3),
    "exponential_decay": (2, 2),
    "linear_schedule": (3, 3),
    "step_decay": (3, 3),
}


class ConfigError(LatheError, ValueError):
    """A config value that cannot be used; the message names the field and what to do."""

    kind = "config"


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases (`*name`), so a small file cannot expand to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"{self.name} uses a YAML alias (*{event.anchor}) at line "
                f"{event.start_mark.line + 1}; Lathe does not expand aliases.",
                "Write the value out in full instead of referring to an anchor.",
            )
        return super().compose_node(parent, index)


def read_yaml(text: str, where: str | Path = "<text>") -> Any:
    """Parse YAML a user wrote (configs, run config.yaml, presets, hosts, settings) safely.

    The one loader for every YAML Lathe reads: plain data only (no Python tags), no aliases. Raises
    ConfigError naming `where` (and the line) for invalid YAML or an alias.
    """
    loader = None
    try:
        loader = _NoAliasLoader(text)  # checks the characters first
        loader.name = str(where)
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where} is not valid YAML{line}: {problem}.") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a config file.") from None
    finally:
        if loader is not None:
            loader.dispose()


def _f(default: Any, help: str, **extra: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(
            default_factory=lambda: type(default)(default), metadata={"help": help, **extra}
        )
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class ModelConfig:
    path: str = _f(
        "",
        "Model to fine-tune: a local folder or a Hugging Face repo id.",
        cli="--model",
        label="Model",
    )
    chat_template: str | None = _f(
        None,
        "Jinja chat template to use instead of the model's own. Base models without a template "
        "get Lathe's default template, and the run records which was used.",
        cli="--chat-template",
    )


@dataclass
class DataConfig:
    path: str = _f(
        "",
        "Dataset: a JSONL file, or a folder with train.jsonl, valid.jsonl, test.jsonl.",
        cli="--data",
        label="Dataset",
    )
    mask_prompt: bool = _f(
        True,
        "Train only on the answers (assistant turns / completions), not on the prompts.",
        label="Train on answers only",
    )
    max_seq_length: int = _f(
        2048,
        "Longest example in tokens; longer examples are truncated (the report says how many).",
        at_least=2,
        at_most=MAX_TOKENS,
        cli="--max-seq-length",
        label="Max sequence length",
    )
    valid_fraction: float = _f(
        0.1,
        "Share of the training examples held out for validation when the data has no valid split.",
        at_least=0,
        below=1,
        example="0.1",
        cli="--valid-fraction",
        label="Validation share",
    )
    val_batches: int = _f(
        25,
        "Validation batches per evaluation, always the same examples; -1 uses the whole set.",
        at_least=-1,
        cli="--val-batches",
    )
    test_batches: int = _f(
        500, "Test batches for the final test evaluation; -1 uses the whole set.", at_least=-1
    )
    packing: str = _f(
        "off",
        "How examples share a step. off: batch_size examples per step, grouped by length (the "
        "default: the batch size means what it says). budget: short examples of similar length "
        "share steps up to the tokens of the largest ordinary batch, so a step may hold more than "
        "batch_size examples and an epoch has fewer steps (the run says how many). auto: budget "
        "when the data is large and varied enough, else off. pack: several examples per row with "
        "attention kept inside each example.",
        choices=("off", "auto", "budget", "pack", "on"),
    )
    pack_length: int = _f(
        0,
        "Tokens per packed row (packing: pack); 0 uses the longest example.",
        at_least=0,
        at_most=MAX_TOKENS,
    )
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
        cli="--fine-tune-type",
        label="Method",
    )
    num_layers: int = _f(
        16,
        "How many of the last transformer layers to train; -1 trains all.",
        at_least=-1,
        cli="--num-layers",
        label="Layers to train",
        shown_as={-1: "All"},
    )
    rank: int = _f(
        8,
        "LoRA rank: adapter size. Higher learns more and uses more memory.",
        at_least=1,
        at_most=MAX_TOKENS,
        cli="--lora-rank",
        label="LoRA rank",
    )
    scale: float = _f(
        20.0,
        "LoRA scale: how strongly the adapter changes the layer's output.",
        cli="--lora-scale",
        label="LoRA scale",
    )
    dropout: float = _f(
        0.0,
        "Dropout on the adapter input during training.",
        at_least=0,
        below=1,
        cli="--lora-dropout",
        label="LoRA dropout",
    )
    keys: list[str] | None = _f(
        None, "Module names to adapt (e.g. self_attn.q_proj); empty adapts every linear layer."
    )


@dataclass
class TrainingConfig:
    iters: int | None = _f(
        None,
        "Optimizer steps to train for; when empty, `epochs` decides.",
        at_least=1,
        at_most=1_000_000_000,
        cli="--iters",
        label="Steps (0: from epochs)",
        shown_as={None: "from epochs"},
    )
    epochs: float = _f(
        2.0,
        "Passes over the training data (used when `iters` is empty).",
        above=0,
        at_most=100_000,
        cli="--epochs",
        label="Epochs",
        step=0.5,
    )
    batch_size: int = _f(
        4,
        "Examples per step.",
        at_least=1,
        at_most=65_536,
        cli="--batch-size",
        label="Batch size",
    )
    learning_rate: float = _f(
        1e-4,
        "Peak learning rate.",
        above=0,
        example="1e-4",
        cli="--learning-rate",
        label="Learning rate",
    )
    optimizer: str = _f(
        "adam",
        "Optimizer.",
        choices=("adam", "adamw", "sgd", "adafactor", "muon"),
        cli="--optimizer",
        label="Optimizer",
    )
    optimizer_config: dict = _f({}, "Extra optimizer arguments, e.g. {weight_decay: 0.01}.")
    lr_schedule: dict | None = _f(
        None,
        "Learning rate schedule as mlx-lm writes it: {name: cosine_decay, arguments: [1e-4, 1000], "
        "warmup: 100}.",
    )
    grad_checkpoint: bool = _f(
        False,
        "Recompute activations in the backward pass to save memory.",
        label="Gradient checkpointing",
    )
    auto_grad_checkpoint: bool = _f(
        True,
        "Turn gradient checkpointing on by itself when the memory estimate says the run would be tight "
        "or would not fit without it (same results, steps about a third slower).",
        label="Checkpointing when memory is tight",
    )
    grad_accumulation_steps: int = _f(
        1,
        "Batches whose gradients are summed per optimizer update.",
        at_least=1,
        at_most=1024,
        cli="--grad-accumulation-steps",
        label="Gradient accumulation",
    )
    steps_per_report: int = _f(
        10,
        "Steps between progress reports.",
        at_least=1,
        cli="--steps-per-report",
        label="Steps per report",
    )
    steps_per_eval: int | None = _f(
        None,
        "Steps between validation evaluations; empty: chosen from the run's length (about 15 "
        "evaluations, at checkpoint steps where that works out).",
        at_least=1,
        cli="--steps-per-eval",
        label="Steps per evaluation",
        shown_as={None: "from run length"},
    )
    save_every: int = _f(
        100,
        "Steps between checkpoints.",
        at_least=1,
        cli="--save-every",
        label="Checkpoint every",
    )
    seed: int = _f(
        0,
        "Random seed for data order, the validation subset and dropout.",
        at_least=0,
        at_most=MAX_SEED,
        cli="--seed",
        label="Seed",
    )
    clear_cache_threshold: int = _f(
        0,
        "Free MLX's buffer cache after a step when it holds more than this many bytes (0: Lathe "
        "decides: after every step on a CPU, where that is faster; capped at one step's working set on a GPU).",
        at_least=0,
    )
    test: bool = _f(False, "Evaluate on the test split after training.")
    resume_adapter_file: str | None = _f(
        None,
        "Adapter weights (.safetensors) to start from instead of a fresh adapter.",
        cli="--resume-adapter-file",
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
    golden_max_tokens: int = _f(64, "Longest golden answer in tokens.", at_least=1, at_most=65_536)
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
    general_max_tokens: int = _f(
        32, "Longest answer to a general prompt in tokens.", at_least=1, at_most=65_536
    )
    early_stopping_patience: int = _f(
        0,
        "Stop when the validation loss has not improved for this many evaluations; 0 never stops early.",
        at_least=0,
    )
    report_utilisation: bool = _f(
        True,
        "At the end, measure how close training ran to this machine's matmul speed (takes ~0.5 s).",
    )
    pad_multiple: int = _f(
        8,
        "Batches are padded to a multiple of this many tokens (fewer distinct shapes to compile).",
        at_least=1,
        at_most=4096,
    )
    nan_retry: bool = _f(
        False,
        "When the loss becomes NaN or infinite, go back to the last good checkpoint and retry once "
        "at half the learning rate, instead of stopping.",
        label="Retry once after NaN",
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
    name: str = field(
        default="",
        metadata={"help": "A name for the run (used in its folder name).", "label": "Run name"},
    )
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
        return cls.from_dict(read_yaml(text, path) or {}, warnings)

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
            # Without iters the run's length follows from the data (`train --write-mlx-lm-config`
            # computes it); 1000 is mlx_lm.lora's own default.
            "iters": t.iters if t.iters else 1000,
            "val_batches": d.val_batches,
            "learning_rate": t.learning_rate,
            "steps_per_report": t.steps_per_report,
            "steps_per_eval": t.steps_per_eval or 200,
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
        """Check every value against its field's range or choices; raise ConfigError naming the field."""
        for section, cls in SECTIONS.items():
            part = getattr(self, section)
            for f in dataclasses.fields(cls):
                value = getattr(part, f.name)
                if value is not None:
                    check_value(f"{section}.{f.name}", value, **bounds(f.metadata))
        t, lo = self.training, self.lora
        if lo.num_layers == 0:
            raise ConfigError(
                "lora.num_layers must be -1 (every layer) or at least 1, not 0.",
                "Set how many of the last layers to train, e.g. 16.",
            )
        if t.lr_schedule:
            _check_schedule(t.lr_schedule)
        if not self.model.path:
            raise ConfigError("No model given: set model.path (or pass --model).")
        if not self.data.path:
            raise ConfigError("No dataset given: set data.path (or pass --data).")


# ---------------------------------------------------------------------------------------------
# Ranges and choices (from the fields' metadata)

_BOUND_KEYS = ("at_least", "above", "at_most", "below", "choices", "example")


def bounds(metadata: Any) -> dict:
    """The range and choices a field's metadata gives (for `check_value`)."""
    return {k: metadata[k] for k in _BOUND_KEYS if k in metadata}


def field_bounds(section: str, name: str) -> dict:
    """The range and choices of `section.name`, e.g. for a CLI option that sets the same value."""
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == name:
            return bounds(f.metadata)
    raise KeyError(f"{section}.{name}")


def describe_range(
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
) -> str:
    """The allowed range in words: "between 1 and 1024", "at least 0", "more than 0"."""
    low = (
        f"at least {at_least:,}"
        if at_least is not None
        else f"more than {above:,}"
        if above is not None
        else ""
    )
    high = (
        f"at most {at_most:,}"
        if at_most is not None
        else f"less than {below:,}"
        if below is not None
        else ""
    )
    if at_least is not None and at_most is not None:
        return f"between {at_least:,} and {at_most:,}"
    return " and ".join(p for p in (low, high) if p) or "a finite number"


def check_value(where: str, value: Any, **limits: Any) -> None:
    """Raise ConfigError when `value` is outside `limits` (at_least, above, at_most, below, choices)."""
    choices = limits.get("choices")
    if choices is not None:
        if value not in choices:
            raise ConfigError(
                f"{where} must be one of {', '.join(map(str, choices))}, not {value!r}."
            )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    ranges = {k: limits[k] for k in ("at_least", "above", "at_most", "below") if k in limits}
    ok = math.isfinite(value) and (
        ("at_least" not in ranges or value >= ranges["at_least"])
        and ("above" not in ranges or value > ranges["above"])
        and ("at_most" not in ranges or value <= ranges["at_most"])
        and ("below" not in ranges or value < ranges["below"])
    )
    if not ok:
        shown = f"{value:,}" if isinstance(value, int) else repr(value)
        example = f"For example {limits['example']}." if "example" in limits else ""
        raise ConfigError(f"{where} must be {describe_range(**ranges)}, not {shown}.", example)


def _check_schedule(schedule: dict) -> None:
    names = ", ".join(LR_SCHEDULES)
    name = schedule.get("name")
    if name not in LR_SCHEDULES:
        raise ConfigError(
            f"training.lr_schedule.name {name!r} is not a schedule Lathe knows; use one of {names}.",
            "For example {name: cosine_decay, arguments: [1e-4, 1000], warmup: 100}.",
        )
    arguments = schedule.get("arguments")
    low, high = LR_SCHEDULES[name]
    if (
        not isinstance(arguments, list)
        or not low <= len(arguments) <= high
        or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
            for a in arguments
        )
    ):
        count = str(low) if low == high else f"{low} or {high}"
        raise ConfigError(
            f"training.lr_schedule.arguments for {name} must be a list of {count} numbers "
            f"(the initial rate first), not {arguments!r}."
        )
    for key in ("warmup", "warmup_init"):
        value = schedule.get(key, 0)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"training.lr_schedule.{key} must be a number, not {value!r}.")
        check_value(f"training.lr_schedule.{key}", value, at_least=0)


# ---------------------------------------------------------------------------------------------
# Parsing helpers


@dataclass(frozen=True)
class CliOption:
    """A command-line flag that sets one config field; everything but the flag's name comes from
    the field (type, choices, help), so the CLI, validation and the GUI read one definition."""

    flag: str
    section: str
    name: str
    type: type
    choices: tuple | None
    help: str


def cli_options() -> list[CliOption]:
    """The `train` flags: every field whose metadata names a `cli` flag, in definition order."""
    options = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("cli")
            if not flag:
                continue
            tp = hints[f.name]
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            scalar = args[0] if args else tp
            choices = f.metadata.get("choices")
            options.append(
                CliOption(
                    flag,
                    section,
                    f.name,
                    scalar,
                    tuple(choices) if choices else None,
                    f.metadata.get("help", ""),
                )
            )
    return options


def field_help(section: str, name: str) -> str:
    """Help text of `section.name`, for CLI help and GUI tooltips."""
    return field_metadata(f"{section}.{name}").get("help", "")


def field_metadata(key: str) -> typing.Mapping[str, Any]:
    """The metadata of a config field named "section.field" (or "name" for RunConfig's own)."""
    section, _, name = key.rpartition(".")
    if section and section not in SECTIONS:
        raise KeyError(key)
    for f in dataclasses.fields(SECTIONS[section] if section else RunConfig):
        if f.name == name:
            return f.metadata
    raise KeyError(key)


def field_type(key: str) -> Any:
    """The value type of a config field ("section.field"), without None: `int | None` gives int."""
    section, _, name = key.rpartition(".")
    tp = typing.get_type_hints(SECTIONS[section] if section else RunConfig)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args and typing.get_origin(tp) in (typing.Union, types.UnionType) else tp


def field_optional(key: str) -> bool:
    """Whether the field takes None (an `int | None` that the form shows as empty)."""
    section, _, name = key.rpartition(".")
    tp = typing.get_type_hints(SECTIONS[section] if section else RunConfig)[name]
    return type(None) in typing.get_args(tp)


def _section_from_dict(cls: type, data: dict, section: str, warnings: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in fields:
            warnings.append(f"Unknown key '{section}.{key}' was ignored.")
            continue
        choices = fields[key].metadata.get("choices") or ()
        if isinstance(value, bool) and "off" in choices:
            # YAML 1.1 reads an unquoted `off`/`on` (also no/yes) as a boolean.
            value = "on" if value else "off"
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
