"""The forgetting check: a few general prompts answered by base and tuned, and what was lost.

Fine-tuning on a narrow dataset can damage what a model could already do (a default run taught
SmolLM2 bank facts and then it named London as the capital of France). Lathe keeps a small set of
general prompts (facts, instructions, formats; `resources/general_prompts.jsonl`), each with a
reference and one metric of engine.evaluate.metrics, and answers them greedily with the base model
and the tuned one. The figure beside the in-domain gain:

    forgetting = lost / base_passed

the share of the general prompts the base model answered right that the tuned model answers wrong
(0 when nothing was lost). A run is flagged when forgetting reaches FORGETTING_WARN (10%: with the
built-in eight prompts, any prompt lost). When the base passes none (a base model such as
stories260K answers with story text), forgetting cannot be measured and the result says so.

The same prompts are answered at every checkpoint during training (engine.evaluate.golden, as part
of the `golden` event), so the timeline shows when a run began to forget and which checkpoint is
the best that still keeps the general score (`best_by_both`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.evaluate.metrics import Cancelled, EvalError, Metric, parse_metric

FORGETTING_WARN = 0.10  # flag a run that loses at least this share of what its base got right
GENERAL_FILE = "general_prompts.jsonl"
DEFAULT_MAX_TOKENS = 32  # the answers are short: one word, a number, a line of JSON, three lines


@dataclass
class GeneralPrompt:
    prompt: str
    reference: str
    metric: Metric
    kind: str = ""

    @property
    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}]

    def passes(self, answer: str) -> bool:
        score = self.metric.score(answer, self.reference)
        return score is not None and score.value >= 1


def check_applies(setting: bool | None, tokenizer) -> tuple[bool, str]:
    """Whether the forgetting check runs, and why: `setting` True/False decides; None (auto) runs
    it for a model with its own chat template, an instruction-tuned model. A base model (Lathe
    lends it its default template) cannot follow the prompts, and would spend every answer's whole
    token budget on story text for nothing."""
    if setting is not None:
        return bool(setting), "on" if setting else "switched off"
    from engine.templates import model_template

    if model_template(tokenizer):
        return True, "on: the model has its own chat template"
    return False, (
        "off: the model has no chat template of its own (a base model, which cannot follow the "
        "general prompts); set training.general_check or pass --general to check anyway"
    )


def builtin_path() -> Path:
    from engine.workspace import resources_dir

    return resources_dir() / GENERAL_FILE


def load_general_prompts(path: str | Path | None = None) -> list[GeneralPrompt]:
    """The general prompts in `path` (JSONL: prompt, reference, metric), else the built-in set.

    `metric` is a metric spec (exact, contains, regex:..., json, schema:...); a rate metric is
    needed, since each answer passes or fails. Errors name the file and the line.
    """
    p = Path(path).expanduser() if path else builtin_path()
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise EvalError(
            f"General prompt file {p} does not exist.", "Check the path given to --general."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"General prompt file {p} cannot be read: {exc}.") from None
    items: list[GeneralPrompt] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"Line {number} of {p.name}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(f"{where} is not valid JSON ({exc.msg}).") from None
        if not isinstance(record, dict) or not str(record.get("prompt") or "").strip():
            raise EvalError(
                f"{where} has no prompt.",
                'Write one object per line: {"prompt": ..., "reference": ..., "metric": "contains"}.',
            )
        spec = str(record.get("metric") or "contains")
        try:
            metric = parse_metric(spec, p.parent)
        except EvalError as exc:
            raise EvalError(f"{where}: {exc.args[0]}", getattr(exc, "hint", "")) from None
        if not metric.rate:
            raise EvalError(
                f"{where}: {spec} is a measure, not a pass or fail.",
                "Use exact, contains, regex:, json or schema:.",
            )
        reference = record.get("reference")
        if metric.needs_reference and reference is None:
            raise EvalError(f"{where}: the metric {spec} needs a 'reference'.")
        items.append(
            GeneralPrompt(
                str(record["prompt"]),
                "" if reference is None else str(reference),
                metric,
                str(record.get("kind") or ""),
            )
        )
    if not items:
        raise EvalError(f"General prompt file {p} has no prompts.")
    return items


def answer_general(
    chat_model,
    items: list[GeneralPrompt],
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    use_adapter: bool = True,
    stop: list[str] | None = None,
    cancel=None,
) -> list[dict]:
    """Greedy answers to the general prompts, each with whether it passes its metric."""
    from engine.chat import ChatSettings

    settings = ChatSettings(
        temperature=0.0, max_tokens=max_tokens, stop=list(stop) if stop else None
    )
    rows = []
    for item in items:
        if cancel is not None and cancel.is_set():
            raise Cancelled("The evaluation was cancelled.")
        reply = chat_model.reply(item.messages, settings, use_adapter=use_adapter)
        rows.append(
            {
                "prompt": item.prompt,
                "answer": reply.text,
                "passed": item.passes(reply.text),
                "metric": item.metric.spec,
            }
        )
    return rows


def general_score(rows: list[dict]) -> dict:
    """{score, passed, total} of one side's answers."""
    passed = sum(1 for r in rows if r.get("passed"))
    return {"score": passed / len(rows) if rows else None, "passed": passed, "total": len(rows)}


def compare(
    base_rows: list[dict], tuned_rows: list[dict], threshold: float = FORGETTING_WARN
) -> dict:
    """The forgetting figure of tuned against base on the same general prompts.

    `forgetting` is lost / (prompts the base passed); None when the base passed none. `flagged`
    when forgetting >= threshold.
    """
    base, tuned = general_score(base_rows), general_score(tuned_rows)
    pairs = list(zip(base_rows, tuned_rows, strict=True))
    lost = [b["prompt"] for b, t in pairs if b.get("passed") and not t.get("passed")]
    gained = [b["prompt"] for b, t in pairs if t.get("passed") and not b.get("passed")]
    value = len(lost) / base["passed"] if base["passed"] else None
    change = (
        (tuned["score"] - base["score"]) * 100
        if base["score"] is not None and tuned["score"] is not None
        else None
    )
    return {
        "base": base,
        "tuned": tuned,
        "change_points": change,
        "lost": lost,
        "gained": gained,
        "forgetting": value,
        "retained": None if value is None else 1 - value,
        "threshold": threshold,
        "flagged": value is not None and value >= threshold,
    }


def checkpoint_scores(history) -> dict[int, dict]:
    """{step: {score, passed, total, lost}} from the general answers of a run's `golden` events.

    `lost` counts the prompts the step-0 answers (the base model) passed and this step fails; it is
    None for a resumed run whose step 0 is unknown.
    """
    entries = [(g["step"], g.get("general")) for g in getattr(history, "golden", [])]
    entries = [(s, g) for s, g in entries if isinstance(g, dict) and g.get("answers")]
    base = dict(entries).get(0)
    base_passed = (
        {a["prompt"] for a in base["answers"] if a.get("passed")} if base is not None else None
    )
    out: dict[int, dict] = {}
    for step, g in entries:
        score = general_score(g["answers"])
        lost = None
        if base_passed is not None:
            lost = sum(
                1 for a in g["answers"] if a["prompt"] in base_passed and not a.get("passed")
            )
        score["lost"] = lost
        score["forgetting"] = lost / len(base_passed) if base_passed and lost is not None else None
        out[step] = score
    return out


def keeps_general(forgetting: float | None, threshold: float = FORGETTING_WARN) -> bool:
    """A checkpoint keeps the general ability when its forgetting is below the threshold (or unknown)."""
    return forgetting is None or forgetting < threshold


def best_by_both(candidates: list[dict], threshold: float = FORGETTING_WARN) -> tuple[dict, str]:
    """The checkpoint to keep when both the in-domain score and the general score count.

    Each candidate: {step, key (higher is better: the in-domain value, or minus the validation
    loss; any comparable value, e.g. a tuple), forgetting (None when unknown)}. The rule: among the checkpoints whose forgetting is
    below the threshold (or unknown), the best in-domain one; when every checkpoint forgets, the
    one that forgets least, ties broken by the in-domain score, then the later step. Returns the
    chosen candidate and a sentence saying why.
    """
    keeping = [c for c in candidates if keeps_general(c.get("forgetting"), threshold)]
    if keeping:
        best = max(keeping, key=lambda c: (c["key"], c["step"]))
        if len(keeping) == len(candidates):
            why = "best in-domain score; no checkpoint forgets general prompts"
        else:
            why = (
                f"best in-domain score among the checkpoints that keep the general prompts "
                f"(forgetting below {threshold:.0%})"
            )
        return best, why
    best = max(candidates, key=lambda c: (-c["forgetting"], c["key"], c["step"]))
    return best, (
        f"every checkpoint forgets at least {threshold:.0%} of the general prompts; this one "
        "forgets least"
    )


def summary_line(f: dict) -> str:
    """One line on a `forgetting` result (engine.evaluate.runner), for summaries."""
    if f.get("forgetting") is None:
        return "forgetting: not measurable (the base model answers no general prompt right)"
    kept = f["base"]["passed"] - len(f["lost"])
    flag = "  WARNING" if f.get("flagged") else ""
    return (
        f"forgetting: {f['forgetting']:.0%} (keeps {kept} of the {f['base']['passed']} general "
        f"prompts its base answered right; warning at {f['threshold']:.0%}){flag}"
    )


def warning(
    result: dict,
    *,
    run_ref: str,
    config=None,
    best_step: int | None = None,
    checkpoints_forget: bool = False,
) -> str:
    """The sentence shown when forgetting crosses the threshold, with the cheapest fixes.

    `best_step`: an earlier checkpoint that keeps the general prompts, named as RUN:STEP;
    `checkpoints_forget`: every saved checkpoint forgets too (the check ran during training)."""
    lost = result["lost"]
    base_passed = result["base"]["passed"]
    shown = "; ".join(f'"{p}"' for p in lost[:3]) + ("; ..." if len(lost) > 3 else "")
    fixes = []
    t = getattr(config, "training", None)
    if t is not None and t.iters:
        fixes.append(f"train fewer steps (--iters {max(1, t.iters // 2)})")
    elif t is not None:
        fixes.append(f"train fewer epochs (--epochs {max(t.epochs / 2, 0.5):g})")
    else:
        fixes.append("train fewer steps or epochs")
    if t is not None:
        fixes.append(f"lower the learning rate (--learning-rate {t.learning_rate / 2:g})")
    else:
        fixes.append("lower the learning rate")
    if best_step is not None:
        fixes.append(f"use an earlier checkpoint ({run_ref}:{best_step} keeps them)")
    elif checkpoints_forget:
        fixes.append(
            "an earlier checkpoint (every saved one forgets too here: save more often, "
            "--save-every, to keep one from before it did)"
        )
    else:
        fixes.append("use an earlier checkpoint (eval best names one)")
    fixes.append("mix general instruction examples into the training data (about 10-20%)")
    return (
        f"Forgetting: of the {base_passed} general prompts its base model answered right, the "
        f"tuned model gets {len(lost)} wrong ({result['forgetting']:.0%}; the warning starts at "
        f"{result['threshold']:.0%}): {shown}. Cheapest fixes: " + "; ".join(fixes) + "."
    )
