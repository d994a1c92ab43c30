"""Evaluate: show, in numbers and side by side, what fine-tuning changed.

    results = evaluate_run("RUN[:STEP]", prompts="heldout.jsonl", metrics=["exact", "schema:a.json"])
    best = best_checkpoint("RUN", by="val_loss")        # or by="exact", "regex:...", ...
    path = write_report(run_dir, results)               # one self-contained HTML file
    history = run_history(run_dir)                      # loss curves + golden prompt timeline

Base and tuned share one loaded model (engine.chat's ChatModel with its adapter switched off and
on) and are scored on the same tokens and prompts; answers are greedy. Golden prompts are answered
during training by `golden.golden_hook` (engine/train.py passes it to the run). MLX loads only when a model does.
"""

from engine.evaluate.best import best_by_metric, best_by_val_loss, best_checkpoint
from engine.evaluate.history import RunHistory, run_history
from engine.evaluate.metrics import (
    EvalError,
    Metric,
    Score,
    default_metrics,
    parse_metric,
    parse_metrics,
)
from engine.evaluate.prompts import EvalPrompt, golden_prompts, load_prompt_file
from engine.evaluate.report import diff_html, diff_spans, render_report, write_report
from engine.evaluate.runner import (
    Cancelled,
    evaluate_run,
    latest_results,
    list_results,
    load_results,
)
from engine.evaluate.schema import SchemaError, load_schema, validate

__all__ = [
    "Cancelled",
    "EvalError",
    "EvalPrompt",
    "Metric",
    "RunHistory",
    "SchemaError",
    "Score",
    "best_by_metric",
    "best_by_val_loss",
    "best_checkpoint",
    "default_metrics",
    "diff_html",
    "diff_spans",
    "evaluate_run",
    "golden_prompts",
    "latest_results",
    "list_results",
    "load_prompt_file",
    "load_results",
    "load_schema",
    "parse_metric",
    "parse_metrics",
    "render_report",
    "run_history",
    "validate",
    "write_report",
]
