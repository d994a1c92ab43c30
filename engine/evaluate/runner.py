"""Evaluate a run, base model against tuned model: loss on the same tokens, task metrics, outputs.

One model is loaded once (engine.chat's ChatModel) and its adapter switched off for the base side
and on for the tuned side, so both sides see the same weights, the same template and the same
tokens. Results go to `runs/<id>/eval/<timestamp>/results.json` (per-example outputs included).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine.chat import AdapterInfo, ChatModel, ChatSettings, resolve_adapter
from engine.config import RunConfig
from engine.evaluate.general import (
    GeneralPrompt,
    answer_general,
    check_applies,
    compare,
    keeps_general,
    load_general_prompts,
    warning,
)
from engine.evaluate.metrics import (
    Cancelled,
    EvalError,
    Metric,
    aggregate,
    default_metrics,
    parse_metrics,
)
from engine.evaluate.prompts import EvalPrompt, load_prompt_file, split_prompts
from engine.workspace import ensure_dir, write_json_atomic

RESULTS_VERSION = 1
SIDES = ("base", "tuned")
Progress = Callable[[dict], None]


def run_info(spec: str | Path) -> tuple[AdapterInfo, RunConfig]:
    """The adapter `RUN[:STEP]` names and its run's config; refuses adapters outside a run."""
    info = resolve_adapter(spec)
    if info.run_dir is None or not (info.run_dir / "config.yaml").is_file():
        raise EvalError(
            f"{spec} is an adapter folder outside a Lathe run, so there is no dataset to evaluate on.",
            "Pass a run id or RUN:STEP.",
        )
    return info, RunConfig.load(info.run_dir / "config.yaml")


def choose_prompts(
    config: RunConfig, prompts: str | Path | None, limit: int | None = None
) -> tuple[list[EvalPrompt], str]:
    """Held-out prompts: the file given, else data.eval_prompts, else the test (or valid) split."""
    source = prompts or config.data.eval_prompts
    if source:
        items, where = load_prompt_file(source, config), str(source)
    else:
        items, split = split_prompts(config)
        where = f"{split} split of {config.data.path}"
    if limit:
        items = items[:limit]
    return items, where


def choose_metrics(
    config: RunConfig, metrics: list[str] | None, items: list[EvalPrompt]
) -> list[Metric]:
    specs = list(
        metrics or config.data.eval_metrics or default_metrics([i.reference for i in items])
    )
    parsed = parse_metrics(specs)
    if not any(i.reference is not None for i in items):
        needing = [m.spec for m in parsed if m.needs_reference]
        if needing:
            raise EvalError(
                f"The metrics {', '.join(needing)} need reference answers, and these prompts have none.",
                "Add a 'completion' to each prompt, or use regex:, json, schema: or length.",
            )
    return parsed


@contextlib.contextmanager
def adapter_state(chat_model: ChatModel, on: bool):
    """The loaded adapter switched on or off for direct model calls (loss evaluation).

    ChatModel switches its adapter itself for generation; this reaches its AdapterSwitch under the
    same lock, so a loss pass never races a reply.
    """
    switch = chat_model._adapter  # noqa: SLF001 - ChatModel has no public switch for non-chat use
    with chat_model._lock:  # noqa: SLF001
        if switch is not None:
            switch.set_enabled(on)
        yield chat_model.model


def loss_comparison(
    chat_model: ChatModel,
    info: AdapterInfo,
    config: RunConfig,
    cancel: threading.Event | None = None,
) -> dict | None:
    """Loss and perplexity of base and tuned on the same test tokens (valid when there is no test).

    Encoded exactly as training encoded them: the run's template, prompt masking and length limit.
    """
    from engine.batching import fixed_eval_batches
    from engine.data import load_splits
    from engine.encode import Encoder
    from engine.training.loop import evaluate
    from engine.training.loss import output_head_supported

    d, t = config.data, config.training
    splits = load_splits(d.path, valid_fraction=d.valid_fraction, seed=t.seed)
    name, records = ("test", splits.test) if splits.test else ("valid", splits.valid)
    if not records:
        return None
    encoder = Encoder.for_data(
        chat_model.tokenizer, d, info.chat_template or config.model.chat_template
    )
    encoded = [e for e in (encoder.encode(r) for r in records) if e.trained_tokens > 0]
    if not encoded:
        return None
    batches = fixed_eval_batches(
        encoded, t.batch_size, d.test_batches, t.seed, t.pad_multiple, d.max_seq_length
    )
    out = {
        "split": name,
        "examples": sum(len(b.lengths) for b in batches),
        "tokens": sum(b.trained_tokens for b in batches),
    }
    for side in SIDES:
        if cancel is not None and cancel.is_set():
            raise Cancelled("The evaluation was cancelled.")
        with adapter_state(chat_model, side == "tuned") as model:
            # The output layer in chunks and on trained positions only, as in training, where it can.
            loss = evaluate(
                model, batches, select_outputs=output_head_supported(model, encoded[0].tokens)
            )
        out[side] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    return out


def generate_outputs(
    chat_model: ChatModel,
    items: list[EvalPrompt],
    metrics: list[Metric],
    *,
    max_tokens: int,
    sides=SIDES,
    stop: list[str] | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> list[dict]:
    """Greedy answers of each side to each prompt, with every metric's score per answer.

    `stop`: strings that end an answer (None: the chat template's own turn markers), for models
    that cannot learn to emit EOS but can learn a newline.
    """
    settings = ChatSettings(
        temperature=0.0, max_tokens=max_tokens, stop=list(stop) if stop else None
    )
    examples = []
    total = len(items) * len(sides)
    done = 0
    for index, item in enumerate(items):
        row = item.to_dict() | {"index": index}
        for side in sides:
            if cancel is not None and cancel.is_set():
                raise Cancelled("The evaluation was cancelled.")
            reply = chat_model.reply(item.messages, settings, use_adapter=side == "tuned")
            scores = {m.spec: m.score(reply.text, item.reference) for m in metrics}
            row[side] = {
                "output": reply.text,
                "tokens": reply.stats.tokens,
                "stop_reason": reply.stats.stop_reason,
                "scores": {k: (s.to_dict() if s is not None else None) for k, s in scores.items()},
            }
            done += 1
            if progress:
                progress(
                    {
                        "stage": "generate",
                        "done": done,
                        "total": total,
                        "side": side,
                        "index": index,
                    }
                )
        examples.append(row)
    return examples


def summarize(metrics: list[Metric], examples: list[dict], sides=SIDES) -> list[dict]:
    from engine.evaluate.metrics import Score

    rows = []
    for m in metrics:
        row = m.to_dict()
        for side in sides:
            scores = []
            for ex in examples:
                s = ex.get(side, {}).get("scores", {}).get(m.spec)
                scores.append(None if s is None else Score(s["value"]))
            row[side] = aggregate(m, scores)
            row[f"{side}_judged"] = sum(1 for s in scores if s is not None)
        rows.append(row)
    return rows


def evaluate_run(
    spec: str | Path,
    *,
    prompts: str | Path | None = None,
    metrics: list[str] | None = None,
    max_tokens: int = 128,
    stop: list[str] | None = None,
    limit: int | None = None,
    loss: bool = True,
    save: bool = True,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    chat_model: ChatModel | None = None,
    general: str | Path | bool | None = None,
    general_max_tokens: int | None = None,
) -> dict:
    """Evaluate `RUN[:STEP]` against its base model; returns (and saves) the results dict.

    `progress` receives dicts with a `stage` (load, loss, generate, general, done); `cancel` stops
    between answers. Pass `chat_model` to reuse a model already loaded with this adapter.
    `general`: the forgetting check's prompts (a JSONL file; None or True: the run's
    training.general_prompts_file, else the built-in set; False: no check); results carry a
    `forgetting` object (engine.evaluate.general).
    """
    started = time.time()
    info, config = run_info(spec)
    items, source = choose_prompts(config, prompts, limit)
    chosen = choose_metrics(config, metrics, items)
    general_items, general_source = choose_general(config, info.run_dir, general)
    general_tokens = general_max_tokens or config.training.general_max_tokens
    notes: list[str] = []

    def report(stage: str, **fields) -> None:
        if progress:
            progress({"stage": stage, **fields})

    own = chat_model is None
    report("load", message=f"Loading {config.model.path}")
    if own:
        chat_model = ChatModel.load(config.model.path or None, info)
    try:
        loss_result = None
        if loss:
            report("loss", message="Loss on the held-out split")
            loss_result = loss_comparison(chat_model, info, config, cancel)
            if loss_result is None:
                notes.append(
                    "The dataset has no test or validation examples, so there is no loss comparison."
                )
            elif loss_result["split"] == "valid":
                notes.append(
                    "The dataset has no test split; the loss is measured on the validation split, "
                    "which training watched."
                )
        examples = generate_outputs(
            chat_model,
            items,
            chosen,
            max_tokens=max_tokens,
            stop=stop,
            progress=progress,
            cancel=cancel,
        )
        forgetting = {"checked": False, "note": "Forgetting check switched off."}
        if general_items and general is None:
            on, why = check_applies(config.training.general_check, chat_model.tokenizer)
            if not on:
                general_items = []
                forgetting["note"] = f"Forgetting check {why}."
                notes.append(forgetting["note"])
        if general_items:
            report("general", message="General prompts (forgetting check)")
            sides = {
                side: answer_general(
                    chat_model,
                    general_items,
                    max_tokens=general_tokens,
                    use_adapter=side == "tuned",
                    cancel=cancel,
                )
                for side in SIDES
            }
            forgetting = forgetting_result(
                info, config, general_items, sides["base"], sides["tuned"], general_source
            )
            forgetting["max_tokens"] = general_tokens
            if forgetting.get("warning"):
                notes.append(forgetting["warning"])
            elif forgetting.get("note"):
                notes.append(forgetting["note"])
    finally:
        if own:
            chat_model.close()

    results = {
        "version": RESULTS_VERSION,
        "run_id": info.run_id,
        "run_dir": str(info.run_dir),
        "model": config.model.path,
        "adapter": {"path": str(info.path), "step": info.step, "label": info.label},
        "created": round(started, 3),
        "seconds": round(time.time() - started, 3),
        "settings": {
            "max_tokens": max_tokens,
            "greedy": True,
            "stop": stop or None,
            "prompts": source,
            "limit": limit,
            "metrics": [m.spec for m in chosen],
        },
        "loss": loss_result,
        "metrics": summarize(chosen, examples),
        "forgetting": forgetting,
        "examples": examples,
        "notes": notes,
    }
    if save:
        results["path"] = str(save_results(info.run_dir, results))
    report("done", results=results.get("path"))
    return results


def choose_general(
    config: RunConfig, run_dir: Path | None, general: str | Path | bool | None
) -> tuple[list[GeneralPrompt], str | None]:
    """The forgetting check's prompts and where they came from; ([], None) when it is off."""
    if general is False:
        return [], None
    path = general if isinstance(general, (str, Path)) else config.training.general_prompts_file
    if path and not isinstance(general, (str, Path)) and run_dir is not None:
        p = Path(path).expanduser()
        if not p.is_absolute() and not p.exists():
            path = run_dir / p
    return load_general_prompts(path), str(path) if path else "built-in general prompts"


def forgetting_result(
    info: AdapterInfo,
    config: RunConfig,
    items: list[GeneralPrompt],
    base_rows: list[dict],
    tuned_rows: list[dict],
    source: str | None,
) -> dict:
    """The `forgetting` object of a results dict: scores, lost prompts, the warning and its fixes."""
    from engine.evaluate.history import best_general_checkpoint, run_history

    result = {"checked": True} | compare(base_rows, tuned_rows)
    result["prompts"] = source
    result["examples"] = [
        {
            "prompt": item.prompt,
            "reference": item.reference,
            "metric": item.metric.spec,
            "kind": item.kind,
            "base": {"output": b["answer"], "passed": b["passed"]},
            "tuned": {"output": t["answer"], "passed": t["passed"]},
        }
        for item, b, t in zip(items, base_rows, tuned_rows, strict=True)
    ]
    history = run_history(info.run_dir)
    result["checkpoints"] = {str(k): v for k, v in sorted(history.general.items())}
    best = best_general_checkpoint(info.run_dir, history)
    result["best_checkpoint"] = best
    result["warning"] = None
    result["note"] = None
    if result["forgetting"] is None:
        result["note"] = (
            "The base model answers none of the general prompts right, so forgetting cannot be "
            "measured (a base model without instruction tuning often cannot)."
        )
    elif result["flagged"]:
        earlier = None
        if best and best["step"] != info.step and keeps_general(best.get("forgetting")):
            earlier = best["step"]
        result["warning"] = warning(
            result,
            run_ref=_run_ref(info.run_dir),
            config=config,
            best_step=earlier,
            checkpoints_forget=bool(best) and not keeps_general(best.get("forgetting")),
        )
    return result


def _run_ref(run_dir: Path) -> str:
    from engine.workspace import runs_dir

    return run_dir.name if run_dir.parent.resolve() == runs_dir().resolve() else str(run_dir)


# -- stored results ----------------------------------------------------------------------------


def save_results(run_dir: Path, results: dict) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(results.get("created", time.time())))
    folder = Path(run_dir) / "eval" / stamp
    n = 2
    while folder.exists():
        folder = Path(run_dir) / "eval" / f"{stamp}-{n}"
        n += 1
    ensure_dir(folder)
    path = folder / "results.json"
    write_json_atomic(path, results)
    return path


def list_results(run_dir: Path) -> list[Path]:
    """The results.json files of a run's evaluations, oldest first."""
    folder = Path(run_dir) / "eval"
    if not folder.is_dir():
        return []
    found = [p / "results.json" for p in folder.iterdir() if (p / "results.json").is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.parent.name))


def load_results(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EvalError(f"Evaluation results {path} cannot be read: {exc}.") from None


def latest_results(run_dir: Path) -> dict | None:
    paths = list_results(run_dir)
    if not paths:
        return None
    results = load_results(paths[-1])
    results.setdefault("path", str(paths[-1]))
    return results
