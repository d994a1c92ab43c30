"""A run's model and data, ready to train: the model loaded as it computes here, every example
encoded with the run's chat template, the memory check made on the encoded lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine import events
from engine.config import RunConfig
from engine.data import load_splits
from engine.encode import Encoder
from engine.errors import TrainingError
from engine.models.loading import load_model, resolve_model
from engine.training import memory
from engine.training.reporting import logger


@dataclass
class Prepared:
    model: object
    tokenizer: object
    encoder: object
    train: list
    valid: list
    test: list
    notes: list[str]
    quantized: bool
    num_layers: int
    fit_peak_bytes: int = 0  # the memory estimate's training peak (0: no estimate)
    compute: object = None  # engine.models.precision.ComputePlan: how the base computes here


def prepare(config: RunConfig, sink: events.Sink) -> Prepared:
    """Load the model and data and encode every example; reports what it finds as log events.

    The memory check (`memory.preflight`) runs once the examples are encoded and before the
    weights are read: it estimates the largest batch this data forms, for the model as loaded.
    What it decides (gradient checkpointing when memory would be tight) is applied to `config`
    here, which is the run's own copy.
    """
    import mlx.core as mx

    config.validate()
    log = logger(sink)
    model_dir = resolve_model(config.model.path)
    model, tokenizer, compute = load_model(str(model_dir), config.lora.fine_tune_type, lazy=True)
    if compute.note:
        log("warning" if compute.action == "none" else "info", compute.note)
    d = config.data
    encoder = Encoder.for_data(tokenizer, d, config.model.chat_template)
    splits = load_splits(d.path, valid_fraction=d.valid_fraction, seed=config.training.seed)
    for note in splits.notes:
        log("info", note)

    encoded = _encode_splits(encoder, splits, d.max_seq_length, log)
    if not encoded["train"]:
        raise TrainingError(
            "The dataset has no trainable training examples.",
            "Check that examples have answers (assistant turns or completions).",
        )
    check_template_drops(encoder, splits.train, config.data.allow_template_drops, log)
    fit = memory.preflight(
        config, model_dir, log, lengths=[len(e) for e in encoded["train"]], model=model
    )
    if fit is not None and fit.automatic:
        config.apply(fit.automatic)
    mx.eval(model.parameters())
    if encoder.template_source == "default" and any(
        encoder.kind(r) != "text" for r in splits.train[:50]
    ):
        log(
            "info",
            "This model has no chat template, so Lathe's default template is used; "
            "chat and export use the same template.",
        )
    return Prepared(
        model,
        tokenizer,
        encoder,
        encoded["train"],
        encoded["valid"],
        encoded["test"],
        splits.notes,
        compute.quantized,
        0,
        int(getattr(fit, "training_peak_bytes", 0) or 0),
        compute,
    )


def _encode_splits(encoder, splits, max_seq_length: int, log) -> dict[str, list]:
    """Every example of train, valid and test, encoded; those that train no token are left out,
    and how many were left out or truncated is logged."""
    encoded = {}
    for name, records in (("train", splits.train), ("valid", splits.valid), ("test", splits.test)):
        kept, empty, truncated = [], 0, 0
        for record in records:
            try:
                enc = encoder.encode(record)
            except (ValueError, TypeError, KeyError) as exc:
                raise TrainingError(
                    f"A {name} example cannot be encoded: {exc}.",
                    "Inspect the dataset with `python -m engine data inspect`.",
                ) from None
            if enc.trained_tokens == 0:
                empty += 1
                continue
            truncated += enc.truncated
            kept.append(enc)
        if empty:
            log(
                "warning",
                f"{empty} {name} example(s) train no tokens after masking and were skipped.",
            )
        if truncated:
            log(
                "warning",
                f"{truncated} {name} example(s) are longer than max_seq_length "
                f"({max_seq_length} tokens) and were truncated.",
            )
        encoded[name] = kept
    return encoded


def check_template_drops(encoder, records: list[dict], allowed: bool, log) -> None:
    """Warn, with counts and an example, when the chat template leaves out tool definitions, tool
    calls, tool results or turns of the training examples; refuse (unless `allowed`) when that
    leaves every training example with nothing to learn but end-of-turn tokens."""
    from collections import Counter

    parts: Counter = Counter()
    hollow = 0
    first = None
    for n, record in enumerate(records, 1):
        drops = encoder.template_drops(record)
        if drops:
            parts.update(drops.parts)
            hollow += drops.hollow
            first = first or (n, drops)
    if not parts:
        return
    whose = {"model": "The model's chat template", "default": "Lathe's default template"}.get(
        encoder.template_source, "The run's chat template"
    )
    counts = ", ".join(f"{p} ({k} of {len(records)} examples)" for p, k in parts.most_common())
    example = f"training example {first[0]} loses its {', '.join(first[1].parts)}"
    hint = (
        "Set model.chat_template to lathe (Lathe's template renders tools), use a model whose "
        "template supports tools, or start anyway with train --force."
    )
    if hollow == len(records) and not allowed:
        raise TrainingError(
            f"{whose} does not render {counts}: all {hollow} training examples would train "
            f"nothing but the end-of-turn token (e.g. {example}).",
            hint,
        )
    log(
        "warning",
        f"{whose} does not render {counts}"
        + (f"; {hollow} examples train nothing but the end-of-turn token" if hollow else "")
        + f" (e.g. {example}). {hint}",
    )
