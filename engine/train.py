"""One training run, start to finish: model + LoRA + data + loop, inside a run folder.

Model loading and LoRA layers come from mlx-lm (`mlx_lm.utils.load`,
`mlx_lm.tuner.utils.linear_to_lora_layers`, `build_schedule`); batching, the loss mask, the
fixed validation subset, checkpoints and resume are Lathe's (see trainer.py and batching.py).
"""

from __future__ import annotations

import copy
import errno
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import events, memory
from engine.config import RunConfig
from engine.errors import LatheError, TrainingError
from engine.models.loading import load_model, resolve_model  # noqa: F401 - the run's API
from engine.runs import claim, release, write_status
from engine.workspace import read_json, write_text_atomic


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


def parameter_count(model) -> int:
    """The model's real number of parameters: a quantized weight counts the values it packs (eight
    4-bit values per uint32), and quantization scales and biases are not parameters."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    bits = {
        name: int(m.bits)
        for name, m in model.named_modules()
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
    }
    total = 0
    for key, value in tree_flatten(model.parameters()):
        module, _, leaf = key.rpartition(".")
        if module in bits:
            if leaf in ("scales", "biases"):
                continue
            if leaf == "weight":
                total += value.size * 32 // bits[module]
                continue
        total += value.size
    return int(total)


def is_quantized(model) -> bool:
    import mlx.nn as nn

    return any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())


def apply_method(model, config: RunConfig) -> int:
    """Freeze the base and add trainable LoRA/DoRA layers (or unfreeze for full); returns layers trained."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    lo = config.lora
    n_model = len(model.layers)
    num_layers = n_model if lo.num_layers < 0 or lo.num_layers > n_model else lo.num_layers
    model.freeze()
    if lo.fine_tune_type == "full":
        for layer in model.layers[-num_layers:]:
            layer.unfreeze()
    else:
        params = {"rank": lo.rank, "scale": lo.scale, "dropout": lo.dropout}
        if lo.keys:
            _check_lora_keys(model, lo.keys, num_layers)
            params["keys"] = list(lo.keys)
        linear_to_lora_layers(model, num_layers, params, use_dora=lo.fine_tune_type == "dora")
    return num_layers


def _check_lora_keys(model, keys: list[str], num_layers: int) -> None:
    """Refuse `lora.keys` naming modules the trained layers lack (mlx-lm would adapt nothing)."""
    from engine.config import ConfigError

    def adaptable(module) -> bool:
        return hasattr(module, "to_lora") or "Linear" in type(module).__name__

    in_layers = {
        name
        for layer in model.layers[-num_layers:]
        for name, module in layer.named_modules()
        if name and adaptable(module)
    }
    anywhere = {name for name, module in model.named_modules() if name and adaptable(module)}
    unknown = [k for k in keys if k not in in_layers | anywhere]
    if unknown:
        names = sorted(in_layers)
        raise ConfigError(
            f"lora.keys {', '.join(unknown)} {'matches' if len(unknown) == 1 else 'match'} no layer "
            "of this model, so nothing would be trained.",
            f"Use names such as {', '.join(names[:12])}, or leave lora.keys empty to adapt every "
            "linear layer.",
        )


# Optimizer state saved per checkpoint, in copies of the trained parameters (Adam's two moments;
# SGD's and Muon's momentum; Adafactor's factored moments are far smaller, counted as one).
OPTIMIZER_STATE_COPIES = {"adam": 2, "adamw": 2, "sgd": 1, "muon": 1, "adafactor": 1}


def check_disk_space(
    config: RunConfig, run_dir: Path, adapter_bytes: int, steps: int, done: int, log
) -> None:
    """Refuse a run whose checkpoints would not fit on the disk (with the numbers), before step 1.

    Every checkpoint is kept: adapter + optimizer state, one every `save_every` steps and one at the
    end, plus the run's current adapter. `training.ignore_fit_check` (`--force`) makes it a warning.
    """
    t = config.training
    per_checkpoint = adapter_bytes * (1 + OPTIMIZER_STATE_COPIES.get(t.optimizer, 2))
    saves = steps // t.save_every - done // t.save_every + (1 if steps % t.save_every else 0)
    needed = per_checkpoint * max(saves, 0) + adapter_bytes
    free = shutil.disk_usage(run_dir).free
    if needed <= free:
        return
    message = (
        f"This run would write {saves} checkpoints of {_size(per_checkpoint)} each "
        f"({_size(needed)} with the adapter; one every {t.save_every} steps of {steps}), but the disk "
        f"has {_size(free)} free, so it was not started."
    )
    if t.ignore_fit_check:
        log("warning", message.replace("so it was not started", "and it was started anyway"))
        return
    from engine.errors import DiskFullError

    raise DiskFullError(
        message,
        "Save less often (a larger training.save_every), use a smaller lora.rank, or free disk "
        "space; `train --force` starts it anyway (it stops cleanly when the disk is full).",
    )


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 / 10 else f"{n / 1024**2:.1f} MB"


def build_optimizer(config: RunConfig):
    import mlx.optimizers as optim
    from mlx_lm.tuner.utils import build_schedule

    t = config.training
    lr = build_schedule(t.lr_schedule) if t.lr_schedule else t.learning_rate
    classes = {
        "adam": optim.Adam,
        "adamw": optim.AdamW,
        "sgd": optim.SGD,
        "adafactor": optim.Adafactor,
        "muon": optim.Muon,
    }
    try:
        return classes[t.optimizer](learning_rate=lr, **t.optimizer_config)
    except TypeError as exc:
        raise LatheError(
            f"training.optimizer_config does not fit {t.optimizer}: {exc}.",
            "Remove the keys that optimizer does not take.",
        ) from None


def prepare(config: RunConfig, sink: events.Sink) -> Prepared:
    """Load the model and data and encode every example; reports what it finds as log events.

    The memory check (`memory.preflight`) runs once the examples are encoded and before the
    weights are read: it estimates the largest batch this data forms, for the model as loaded.
    What it decides (gradient checkpointing when memory would be tight) is applied to `config`
    here, which is the run's own copy.
    """
    import mlx.core as mx

    from engine.data import load_splits
    from engine.encode import Encoder

    config.validate()
    log = _logger(sink)
    model_dir = resolve_model(config.model.path)
    model, tokenizer, compute = load_model(str(model_dir), config.lora.fine_tune_type, lazy=True)
    if compute.note:
        log("warning" if compute.action == "none" else "info", compute.note)
    d = config.data
    encoder = Encoder(
        tokenizer,
        chat_template=config.model.chat_template,
        mask_prompt=d.mask_prompt,
        max_seq_length=d.max_seq_length,
        prompt_feature=d.prompt_feature,
        completion_feature=d.completion_feature,
        chat_feature=d.chat_feature,
        text_feature=d.text_feature,
    )
    splits = load_splits(d.path, valid_fraction=d.valid_fraction, seed=config.training.seed)
    for note in splits.notes:
        log("info", note)

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
                f"({d.max_seq_length} tokens) and were truncated.",
            )
        encoded[name] = kept
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


def decide_batching(config: RunConfig, model, train_set: list, log) -> tuple[str, int, int]:
    """(mode, tokens, batches per epoch) for this model and data, logging why (batching.choose_batching)."""
    from engine.batching import choose_batching, pack_rows, plan_epoch_budget

    d, t = config.data, config.training
    lengths = [len(e) for e in train_set]
    model_type = getattr(getattr(model, "args", None), "model_type", None) or getattr(
        model, "model_type", None
    )
    mode, size, why = choose_batching(lengths, t.batch_size, d.packing, model_type, d.pack_length)
    if d.packing in ("pack", "on") and mode != "pack":
        raise TrainingError(why, "Set data.packing to auto or off.")
    log("info", why)
    if mode == "pack":
        batches = math.ceil(len(pack_rows(lengths, size, t.seed, 0)) / t.batch_size)
    elif mode == "budget":
        batches = len(plan_epoch_budget(lengths, size, t.seed, 0, t.pad_multiple))
    else:
        batches = math.ceil(len(lengths) / t.batch_size)
    return mode, size, batches


def loop_args(
    config: RunConfig, steps: int, batching: str, batch_tokens: int, head: str, ranks=None
):
    """The training loop's settings for this run (`engine.trainer.LoopArgs`)."""
    from engine.trainer import LoopArgs

    t, d = config.training, config.data
    return LoopArgs(
        total_steps=steps,
        batch_size=t.batch_size,
        grad_accumulation_steps=t.grad_accumulation_steps,
        steps_per_report=t.steps_per_report,
        steps_per_eval=eval_interval(config, steps),
        save_every=t.save_every,
        seed=t.seed,
        pad_multiple=t.pad_multiple,
        max_seq_length=d.max_seq_length,
        clear_cache_threshold=memory.clear_cache_threshold(t.clear_cache_threshold),
        early_stopping_patience=t.early_stopping_patience,
        batching=batching,
        batch_tokens=batch_tokens,
        world_size=ranks.size if ranks else 1,
        rank=ranks.rank if ranks else 0,
        select_outputs=head != "full",
        fused_head=head == "fused",
        compile_min_tokens=compile_min_tokens(),
    )


EVAL_POINTS = 15  # validation evaluations a run gets when steps_per_eval is left to Lathe


def eval_interval(config: RunConfig, steps: int) -> int:
    """Steps between validation evaluations: the config's, or chosen from the run's length.

    Chosen: about `EVAL_POINTS` evaluations (10 to 20) over `steps`, on checkpoint steps where that
    works out (a divisor or multiple of save_every), so the best checkpoint can be picked by its
    validation loss.
    """
    t = config.training
    if t.steps_per_eval:
        return int(t.steps_per_eval)
    target = max(1.0, steps / EVAL_POINTS)
    save = max(1, int(t.save_every))
    if target >= save:
        candidate = save * max(1, round(target / save))
    else:
        candidate = max(d for d in range(1, save + 1) if save % d == 0 and d <= target)
    if not 10 <= steps / candidate <= 20:
        candidate = max(1, round(target))
    return int(candidate)


def batch_note(
    config: RunConfig, mode: str, size: int, n_train: int, batches: int, steps: int
) -> str:
    """What the batch size means in this run, with its step count (the CLI's summary, the
    `started` event and the Train page show it beside the setting)."""
    t = config.training
    per_step = n_train / max(1, batches)
    if mode == "budget":
        fixed = total_steps(config, n_train, math.ceil(n_train / t.batch_size))
        return (
            f"Batch size {t.batch_size} with budget batching: up to {size} tokens per step, about "
            f"{per_step:.1f} examples per step, so {steps} steps instead of {fixed} (set "
            f"data.packing to off for exactly {t.batch_size} examples per step)."
        )
    if mode == "pack":
        return (
            f"Batch size {t.batch_size} packed rows of {size} tokens: about {per_step:.1f} "
            f"examples per step, {steps} steps."
        )
    return f"Batch size {t.batch_size}: {t.batch_size} examples per step, {steps} steps."


def total_steps(config: RunConfig, n_train: int, batches_per_epoch: int | None = None) -> int:
    """Optimizer steps of the run: `iters`, or `epochs` over the data's batches."""
    t = config.training
    if t.iters:
        return t.iters
    batches_per_epoch = batches_per_epoch or math.ceil(n_train / t.batch_size)
    return max(1, math.ceil(t.epochs * batches_per_epoch / t.grad_accumulation_steps))


def run(
    config: RunConfig,
    run_dir: Path,
    sink: events.Sink,
    should_stop: Callable[[], bool] = lambda: False,
    resume: bool = False,
) -> str:
    """Train in `run_dir` (from its newest checkpoint when `resume`); returns the final status.

    Every outcome ends with a `finished` event and a final status.json; failures also send an
    `error` event with a hint. Nothing raises out of here except KeyboardInterrupt, and RunError
    (before anything is written) when another process is training the same run: the run's lock
    is held for the whole of training.
    """
    run_dir = Path(run_dir)
    claim(run_dir)
    try:
        return _run_locked(config, run_dir, sink, should_stop, resume)
    finally:
        release(run_dir)


def _run_locked(config, run_dir, sink, should_stop, resume) -> str:
    config = copy.deepcopy(
        config
    )  # the run may adjust it (automatic choices); the caller's stays as given
    log = _logger(sink)
    started = time.time()
    watchdog = _start_watchdog(run_dir, sink)
    try:
        return _run_guarded(config, run_dir, sink, should_stop, resume, log, started)
    finally:
        if watchdog is not None:
            watchdog.stop()


def _run_guarded(config, run_dir, sink, should_stop, resume, log, started) -> str:
    """`run` without the watchdog: every failure becomes an error event and a final status."""
    try:
        write_status(
            run_dir,
            "running",
            pid=os.getpid(),
            started=started,
            **({} if resume else {"created": started}),
        )
        plan = memory.machine_plan()
        with memory.limits(plan):
            log(
                "info",
                f"Memory: MLX may use {plan.limit_bytes / memory.GB:.1f} GB ({plan.source}); the run "
                f"saves a checkpoint and stops if it needs more than {plan.stop_bytes / memory.GB:.1f} GB.",
            )
            return _run(config, run_dir, sink, should_stop, resume, log, started, plan)
    except LatheError as exc:
        return _fail(
            run_dir, sink, exc.kind, str(exc.args[0]), exc.hint, **getattr(exc, "details", {})
        )
    except Exception as exc:  # noqa: BLE001 - the run must end with an explanation, not a traceback
        if memory.is_allocation_error(exc):
            return _fail(
                run_dir,
                sink,
                "memory",
                f"The Mac ran out of memory during training ({_first_line(exc)}). "
                f"{_checkpoint_note(run_dir)}",
                memory.MEMORY_HINT,
            )
        from engine.distributed import describe_lost_peer, is_peer_lost, world

        if is_peer_lost(exc):
            w = world()
            return _fail(
                run_dir,
                sink,
                "distributed",
                f"Training stopped: the connection to {describe_lost_peer(w.rank, w.size)} was lost "
                f"({_first_line(exc)}). {_checkpoint_note(run_dir)}",
                "Check that every Mac is awake and connected, then resume the run with the same hosts.",
            )
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            what = Path(exc.filename).name if exc.filename else "the run's files"
            return _fail(
                run_dir,
                sink,
                "disk_full",
                f"The disk is full, so Lathe could not write {what} and stopped the run. "
                f"{_checkpoint_note(run_dir)}",
                "Free some disk space (delete old runs or exports), then resume the run.",
            )
        _emit(sink, events.make("log", level="debug", message=traceback.format_exc()))
        return _fail(
            run_dir,
            sink,
            "internal",
            f"Training failed unexpectedly: {type(exc).__name__}: {exc}",
            "Resume from the last checkpoint; if it happens again, report it with the run's events.jsonl.",
        )


def _start_watchdog(run_dir: Path, sink: events.Sink):
    """With several ranks, end the run with an error (not a hang) when a peer stops answering."""
    from engine.distributed import Watchdog, describe_lost_peer, world

    ranks = world()
    if ranks.size == 1:
        return None

    def on_hang(seconds: float) -> None:
        _fail(
            run_dir,
            sink,
            "distributed",
            f"Training stopped: {describe_lost_peer(ranks.rank, ranks.size)} stopped answering "
            f"({seconds:.0f} s without progress). {_checkpoint_note(run_dir)}",
            "Check that every Mac is awake and connected, then resume the run with the same hosts.",
        )
        os._exit(1)  # the main thread is blocked inside a collective and cannot return

    return Watchdog(on_hang).start()


def _run(config, run_dir, sink, should_stop, resume, log, started, plan=None) -> str:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from engine import checkpoint as ckpt
    from engine.batching import fixed_eval_batches, padding_fraction
    from engine.trainer import evaluate, train, training_head

    t, d = config.training, config.data
    mx.random.seed(t.seed)
    prep = prepare(config, sink)
    model = prep.model
    if plan is not None and prep.fit_peak_bytes:
        memory.fit_cache_to(plan, prep.fit_peak_bytes)
    # Seeded again right before the adapter is drawn, as mlx_lm.lora does: loading the model draws
    # from MLX's random state too (each layer's placeholder init), so without this the LoRA init
    # depended on the model's loading path and differed from mlx-lm's for the same seed.
    mx.random.seed(t.seed)
    num_layers = apply_method(model, config)
    if t.resume_adapter_file and not resume:
        model.load_weights(t.resume_adapter_file, strict=False)
        log("info", f"Started from the adapter weights in {t.resume_adapter_file}.")
    if t.grad_checkpoint:
        from engine.trainer import checkpoint_layers

        checkpoint_layers(model)
    optimizer = build_optimizer(config)
    adapter_cfg = ckpt.adapter_config(config.lora, num_layers)

    template_path = run_dir / "chat_template.jinja"
    write_text_atomic(template_path, prep.encoder.template)

    state = None
    resumed_from = None
    if resume:
        ckpt.clean_partial(run_dir)
        had_any = ckpt.latest_checkpoint(run_dir) is not None
        state, damaged = ckpt.load_newest_readable(run_dir, model, optimizer)
        for note in damaged:
            log("warning", note)
        if state is None and had_any:
            raise TrainingError(
                "No checkpoint of this run can be read back: " + " ".join(damaged),
                "Start a new run with the same settings.",
            )
        if state is None:
            log("warning", "No checkpoint to resume from; starting from step 0.")
        else:
            resumed_from = state.step
            log(
                "info" if not damaged else "warning",
                f"Resumed from the checkpoint at step {state.step}"
                + (", the newest one that reads back whole." if damaged else "."),
            )

    from engine.distributed import world

    ranks = world()
    batching, batch_tokens, batches_per_epoch = decide_batching(config, model, prep.train, log)
    steps = total_steps(config, len(prep.train), batches_per_epoch)
    note = batch_note(config, batching, batch_tokens, len(prep.train), batches_per_epoch, steps)
    if batching == "budget":
        log("info", note)
    # The output layer apart from the model (see engine.trainer.masked_loss): on trained positions
    # only, and in chunks with its gradient computed on the way forward.
    head = training_head(model, prep.train[0].tokens)
    args = loop_args(config, steps, batching, batch_tokens, head, ranks)
    if not t.steps_per_eval:
        log(
            "info",
            f"Validation every {args.steps_per_eval} steps ({steps // args.steps_per_eval} "
            f"evaluations over {steps} steps), chosen from the run's length; set "
            "training.steps_per_eval to choose yourself.",
        )
    val_batches = fixed_eval_batches(
        prep.valid, t.batch_size, d.val_batches, t.seed, t.pad_multiple, d.max_seq_length
    )
    n_trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    n_total = parameter_count(model)
    adapter_bytes = sum(v.nbytes for _, v in tree_flatten(model.trainable_parameters()))
    check_disk_space(config, run_dir, adapter_bytes, steps, state.step if state else 0, log)
    method = config.lora.fine_tune_type
    if prep.quantized and method != "full":
        method = "q" + method
    sink(
        events.make(
            "started",
            run_id=run_dir.name,
            run_dir=str(run_dir),
            total_steps=steps,
            resumed_from=resumed_from,
            config={
                "model": config.model.path,
                "data": config.data.path,
                "method": method,
                "quantized": prep.quantized,
                "chat_template": prep.encoder.template_source,
                "train_examples": len(prep.train),
                "valid_examples": len(prep.valid),
                "valid_eval_examples": sum(len(b.lengths) for b in val_batches),
                "test_examples": len(prep.test),
                "layers_trained": num_layers,
                "trainable_parameters": int(n_trainable),
                "total_parameters": int(n_total),
                "batch_size": t.batch_size,
                "learning_rate": t.learning_rate,
                "max_seq_length": d.max_seq_length,
                "batching": batching,
                "examples_per_step": round(len(prep.train) / max(1, batches_per_epoch), 2),
                "batch_note": note,
                "steps_per_eval": args.steps_per_eval,
                "steps_per_eval_chosen": not t.steps_per_eval,
                "grad_checkpoint": t.grad_checkpoint,
                "packing": batching == "pack",
                "backend": _backend(),
                "ranks": ranks.size,
                # How the frozen base computes here (engine.models.precision): e.g. "float32" for a
                # 4-bit model on a CPU; compute_note says why, for the app and the console.
                "compute_dtype": prep.compute.compute_dtype,
                "stored_dtype": prep.compute.stored,
                "compute_note": prep.compute.note,
            },
        )
    )
    write_status(run_dir, "running", step=state.step if state else 0, total_steps=steps)

    # Golden prompts (training.golden_prompts): greedy answers now and at every checkpoint, as events.
    from engine.evaluate.golden import golden_hook

    golden = golden_hook(
        config,
        model,
        prep.tokenizer,
        prep.encoder.template,
        sink,
        at_start=state is None,
        run_dir=run_dir,
    )

    def save(s):
        path = ckpt.save_checkpoint(run_dir, model, optimizer, s, adapter_cfg)
        _publish_adapters(path, run_dir / "adapters")
        write_status(
            run_dir,
            "running",
            step=s.step,
            total_steps=steps,
            best_val_loss=s.best_val_loss,
            checkpoint=str(path),
        )
        sink(events.make("checkpoint", step=s.step, path=str(path)))
        golden(s.step)

    guard = memory.MemoryGuard(plan or memory.machine_plan())
    nan = _NanWatch(sink)
    status_now = read_json(run_dir / "status.json", {}) or {}
    retried = status_now.get("nan_retry")  # a run retries once in its life, resumes included
    initial = dict(
        tree_flatten(model.trainable_parameters())
    )  # step 0, for a rollback without checkpoint
    while True:
        result = train(
            model,
            optimizer,
            prep.train,
            val_batches,
            args,
            nan,
            save,
            lambda: should_stop() or guard.check(),
            state,
        )
        if nan.error is None or not t.nan_retry or retried:
            break
        # The weights in memory took a non-finite update: go back to the last good checkpoint.
        config = _halve_learning_rate(config)
        t = config.training
        optimizer = build_optimizer(config)
        state, _ = ckpt.load_newest_readable(run_dir, model, optimizer)
        if state is None:
            from mlx.utils import tree_unflatten

            model.update(tree_unflatten(list(initial.items())))
            state = None
        if t.lr_schedule is None:
            optimizer.learning_rate = t.learning_rate  # the checkpoint restored the old rate
        back_to = state.step if state else 0
        retried = {
            "step": nan.error.get("step"),
            "rolled_back_to": back_to,
            "learning_rate": t.learning_rate,
        }
        write_text_atomic(run_dir / "config.yaml", config.to_yaml())
        write_status(run_dir, "running", step=back_to, nan_retry=retried)
        log(
            "warning",
            f"{nan.error['message'].replace(', so training stopped', '')} Lathe went back to "
            f"{'the checkpoint at step ' + str(back_to) if back_to else 'the start'} and retries once "
            f"at half the learning rate ({t.learning_rate:g}).",
        )
        nan.error = None
    if nan.error is not None:
        if retried:
            nan.error["hint"] = (
                "It happened again after one retry at half the learning rate. Lower the learning "
                "rate further or check the data, then start again; the last good checkpoint is kept."
            )
        elif not t.nan_retry:
            nan.error["hint"] += (
                " Or turn on training.nan_retry (retry once at half the learning rate) to let "
                "Lathe do this by itself."
            )
        sink(nan.error)
    if result.status == "stopped" and getattr(should_stop, "reason", ""):
        result.reason = f"Stopped ({should_stop.reason})."
    if guard.message and result.status == "stopped" and not should_stop():
        sink(
            events.make(
                "error",
                kind="memory",
                step=result.state.step,
                message=f"{guard.message} The checkpoint at step {result.state.step} is saved.",
                hint=memory.MEMORY_HINT,
                memory=guard.plan.to_dict(),
            )
        )
        result.status, result.reason = "failed", guard.message

    summary = {
        "steps": result.state.step,
        "total_steps": steps,
        "final_train_loss": result.final_train_loss,
        "final_val_loss": result.final_val_loss,
        "best_val_loss": result.state.best_val_loss,
        "best_val_step": result.state.best_val_step,
        "stopped_early": bool(result.reason.startswith("Stopped early")),
        "trained_tokens": result.state.trained_tokens,
        "train_seconds": round(result.state.elapsed_seconds, 3),
        "wall_seconds": round(time.time() - started, 3),
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
    }
    if t.report_utilisation and result.state.step > 0 and result.state.elapsed_seconds > 0:
        summary.update(_utilisation(model, num_layers, config, result.state, prep.train))
        log(
            "info",
            f"Training ran at {summary['achieved_gflops']:.1f} GFLOP/s, "
            f"{summary['utilisation']:.0%} of this machine's {summary['reference_gflops']:.1f} GFLOP/s "
            "on a plain matrix multiply of the model's shapes.",
        )
    if result.status == "completed" and t.test and prep.test:
        test_batches = fixed_eval_batches(
            prep.test, t.batch_size, d.test_batches, t.seed, t.pad_multiple, d.max_seq_length
        )
        model.eval()
        summary["test_loss"] = evaluate(model, test_batches, select_outputs=args.select_outputs)
        summary["test_perplexity"] = math.exp(min(summary["test_loss"], 50))
        summary["test_padding"] = padding_fraction(test_batches)
        log(
            "info",
            f"Test loss {summary['test_loss']:.4f} (perplexity {summary['test_perplexity']:.2f}).",
        )

    adapters = run_dir / "adapters"
    adapter_path = str(adapters) if (adapters / ckpt.ADAPTER_FILE).exists() else None
    write_status(
        run_dir,
        result.status,
        result.reason,
        step=result.state.step,
        total_steps=steps,
        best_val_loss=result.state.best_val_loss,
        summary=summary,
        finished=time.time(),
    )
    sink(events.make("finished", status=result.status, adapter_path=adapter_path, summary=summary))
    return result.status


def _utilisation(model, num_layers: int, config: RunConfig, state, train_set) -> dict:
    from engine.perf import utilisation

    mean_length = sum(len(e) for e in train_set) / max(1, len(train_set))
    return utilisation(
        model,
        num_layers,
        config.lora.fine_tune_type == "full",
        state.processed_tokens,
        state.elapsed_seconds,
        mean_length,
        state.processed_tokens // max(1, state.step),
    )


def _publish_adapters(checkpoint: Path, adapters: Path) -> None:
    """Copy a checkpoint's adapter files to `adapters/` (the run's current adapter), atomically each."""
    from engine.checkpoint import ADAPTER_CONFIG, ADAPTER_FILE
    from engine.workspace import commit_temp, ensure_dir, temp_path_for

    ensure_dir(adapters)
    for name in (ADAPTER_FILE, ADAPTER_CONFIG):
        tmp = temp_path_for(adapters / name)
        try:
            shutil.copyfile(checkpoint / name, tmp)
            commit_temp(tmp, adapters / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _fail(run_dir: Path, sink: events.Sink, kind: str, message: str, hint: str, **details) -> str:
    """Report a failed run: error event, status.json, finished event, each even if another fails."""
    from engine.checkpoint import ADAPTER_FILE

    _emit(sink, events.make("error", kind=kind, message=message, hint=hint, **details))
    adapters = run_dir / "adapters"
    adapter_path = str(adapters) if (adapters / ADAPTER_FILE).exists() else None
    try:
        write_status(run_dir, "failed", message, error_kind=kind, finished=time.time())
    except OSError as exc:
        # With the disk full even status.json may not fit; the app still gets the events, and the
        # run then reads as interrupted (its worker is gone), which is resumable too.
        _emit(
            sink,
            events.make("log", level="warning", message=f"status.json could not be updated: {exc}"),
        )
    _emit(
        sink,
        events.make(
            "finished", status="failed", adapter_path=adapter_path, summary={"reason": message}
        ),
    )
    return "failed"


def _emit(sink: events.Sink, event: dict) -> None:
    # Fanout delivers to every sink before raising, so a sink that cannot write (a full disk)
    # has already let the others (the app's stdout) see the event.
    try:
        sink(event)
    except Exception:  # noqa: BLE001
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _checkpoint_note(run_dir: Path) -> str:
    from engine.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    if latest is None:
        return "No checkpoint had been saved yet."
    return f"The checkpoint at step {int(latest.name)} is intact; the run can resume from it."


class _NanWatch:
    """Passes events on, but holds back the trainer's non-finite-loss error so the run can retry."""

    def __init__(self, sink: events.Sink):
        self.sink = sink
        self.error: dict | None = None

    def __call__(self, event: dict) -> None:
        if event.get("event") == "error" and event.get("kind") == "nan_loss":
            self.error = dict(event)
            return
        self.sink(event)


def _halve_learning_rate(config: RunConfig) -> RunConfig:
    """A copy of `config` with the learning rate (and a schedule's initial and warm-up rates) halved."""
    config = copy.deepcopy(config)
    t = config.training
    t.learning_rate = t.learning_rate / 2
    if t.lr_schedule:
        schedule = dict(t.lr_schedule)
        arguments = list(schedule.get("arguments") or [])
        if arguments:
            arguments[0] = (
                float(arguments[0]) / 2
            )  # every mlx schedule starts with its initial rate
            schedule["arguments"] = arguments
        if "warmup_init" in schedule:
            schedule["warmup_init"] = float(schedule["warmup_init"]) / 2
        t.lr_schedule = schedule
    return config


def _logger(sink: events.Sink):
    def log(level: str, message: str) -> None:
        sink(events.make("log", level=level, message=message))

    return log


def compile_min_tokens() -> int:
    """Batch size (tokens) from which a training step is compiled the first time its shape appears.

    On a GPU always: compiled steps are much faster there and tracing is cheap next to the launches
    it saves (measured on CUDA; mlx-lm compiles every shape too). On MLX's CPU backend a compiled
    step of a small batch runs no faster than an eager one and tracing costs about a step, while
    from ~1,000 tokens on the compiled step is 15-25% faster (measured with OpenBLAS, 2 cores).
    """
    import mlx.core as mx

    return 0 if mx.default_device().type == mx.DeviceType.gpu else 1024


def _backend() -> str:
    """The MLX backend and device, e.g. "gpu (Metal)", "gpu (CUDA)" or "cpu"."""
    import mlx.core as mx

    device = mx.default_device()
    if device.type == mx.DeviceType.gpu:
        kind = "Metal" if mx.metal.is_available() else "CUDA"
        return f"gpu ({kind})"
    return "cpu"
