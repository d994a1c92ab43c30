"""A run report: one self-contained HTML file (inline CSS and SVG, no scripts, no network).

It holds the run's config, its loss curves, the metrics of base against tuned, the side-by-side
answers with their differences marked, and the golden prompt timeline.
"""

from __future__ import annotations

import difflib
import html
import math
import re
import time
from pathlib import Path

from engine.evaluate.history import RunHistory, run_history
from engine.workspace import read_json, write_text_atomic

CSS = """
body{font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;color:#1d1d1f;
 margin:0;background:#f5f5f7}
main{max-width:1100px;margin:0 auto;padding:28px 32px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 10px}
.sub{color:#6e6e73;margin:0 0 18px}
section{background:#fff;border-radius:10px;padding:16px 20px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 10px;vertical-align:top;
 border-bottom:1px solid #e5e5ea}th{font-weight:600;color:#424245;background:#fafafa}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.better{color:#1a7f37;font-weight:600}.worse{color:#c62828;font-weight:600}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font:12.5px/1.45 ui-monospace,Menlo,monospace}
.out{white-space:pre-wrap;word-break:break-word;font:13px/1.45 ui-monospace,Menlo,monospace}
del{background:#ffd7d5;text-decoration:none;color:#82071e}ins{background:#ccffd8;text-decoration:none;color:#055d20}
.pass{color:#1a7f37}.fail{color:#c62828}.tag{font-size:11px;color:#6e6e73}
.note{color:#6e6e73;font-size:13px;margin:6px 0}
svg text{font:11px -apple-system,Helvetica,Arial,sans-serif;fill:#6e6e73}
"""


def write_report(run_dir: Path, results: dict | None = None, out: Path | None = None) -> Path:
    """Write the report for `run_dir` (with `results` from an evaluation, when given); returns its path."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report.html"
    write_text_atomic(out, render_report(run_dir, results))
    return out


def render_report(run_dir: Path, results: dict | None = None) -> str:
    run_dir = Path(run_dir)
    history = run_history(run_dir)
    status = read_json(run_dir / "status.json", {}) or {}
    config_text = (
        (run_dir / "config.yaml").read_text(encoding="utf-8")
        if (run_dir / "config.yaml").exists()
        else ""
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Lathe report · {_e(run_dir.name)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>Run {_e(run_dir.name)}</h1>",
        f"<p class='sub'>{_e(status.get('state', 'unknown'))} · step {status.get('step', '?')} of "
        f"{status.get('total_steps', '?')} · report written {time.strftime('%Y-%m-%d %H:%M')}</p>",
        "<h2>Loss</h2><section>",
        loss_chart_svg(history),
        _loss_notes(history),
        "</section>",
    ]
    parts += ["<h2>Base versus tuned</h2><section>"]
    if results:
        parts.append(_metrics_table(results))
    else:
        parts.append(
            f"<p class='note'>No evaluation yet: run <code>python -m engine eval run {_e(run_dir.name)}</code>.</p>"
        )
    parts.append("</section>")
    if results and results.get("examples"):
        parts += ["<h2>Answers side by side</h2><section>", _examples_table(results), "</section>"]
    if history.golden:
        parts += [
            "<h2>Golden prompts over training</h2><section>",
            _golden_table(history),
            "</section>",
        ]
    parts += [
        "<h2>Config</h2><section><pre>",
        _e(config_text),
        "</pre></section>",
        "</main></body></html>",
    ]
    return "".join(parts)


# -- pieces ------------------------------------------------------------------------------------


def loss_chart_svg(history: RunHistory, width: int = 1000, height: int = 300) -> str:
    """Training and validation loss against step as an inline SVG (checkpoints as ticks)."""
    series = [("train", "#0a84ff", history.train), ("validation", "#ff9f0a", history.valid)]
    points = [p for _, _, s in series for p in s if math.isfinite(p[1])]
    if not points:
        return "<p class='note'>No losses were recorded.</p>"
    left, right, top, bottom = 56, 16, 14, 34
    x_max = max(max(s for s, _ in points), 1)
    y_lo, y_hi = min(v for _, v in points), max(v for _, v in points)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = (y_hi - y_lo) * 0.06
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def x(step):
        return left + (width - left - right) * step / x_max

    def y(value):
        return top + (height - top - bottom) * (1 - (value - y_lo) / (y_hi - y_lo))

    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' width='100%' "
        f"role='img' aria-label='loss curves'>"
    ]
    for i in range(5):
        value = y_lo + (y_hi - y_lo) * i / 4
        out.append(
            f"<line x1='{left}' x2='{width - right}' y1='{y(value):.1f}' y2='{y(value):.1f}' stroke='#eee'/>"
        )
        out.append(
            f"<text x='{left - 6}' y='{y(value) + 4:.1f}' text-anchor='end'>{value:.3g}</text>"
        )
    for i in range(6):
        step = x_max * i / 5
        out.append(
            f"<text x='{x(step):.1f}' y='{height - 14}' text-anchor='middle'>{step:.0f}</text>"
        )
    out.append(f"<text x='{width - right}' y='{height - 2}' text-anchor='end'>step</text>")
    for step in history.checkpoints:
        out.append(
            f"<line x1='{x(step):.1f}' x2='{x(step):.1f}' y1='{top}' y2='{height - bottom}' "
            f"stroke='#d2d2d7' stroke-dasharray='3 3'/>"
        )
    for name, color, data in series:
        data = [(s, v) for s, v in data if math.isfinite(v)]
        if not data:
            continue
        path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in data)
        out.append(f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{path}'/>")
        if name == "validation":
            out += [
                f"<circle cx='{x(s):.1f}' cy='{y(v):.1f}' r='3' fill='{color}'/>" for s, v in data
            ]
    if history.best_val_step is not None:
        bx, by = x(history.best_val_step), y(history.best_val_loss)
        out.append(
            f"<circle cx='{bx:.1f}' cy='{by:.1f}' r='6' fill='none' stroke='#1a7f37' stroke-width='2'/>"
        )
    lx = width - right - 230
    for i, (name, color, _) in enumerate(series):
        out.append(
            f"<rect x='{lx + i * 110}' y='{top}' width='14' height='3' fill='{color}'/>"
            f"<text x='{lx + i * 110 + 18}' y='{top + 5}'>{name}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def _loss_notes(history: RunHistory) -> str:
    bits = []
    if history.best_val_step is not None:
        bits.append(
            f"Lowest validation loss {history.best_val_loss:.4f} at step {history.best_val_step} (circled)."
        )
    if history.checkpoints:
        bits.append("Checkpoints (dashed): " + ", ".join(str(s) for s in history.checkpoints) + ".")
    if history.test_loss is not None:
        bits.append(f"Test loss after training {history.test_loss:.4f}.")
    return f"<p class='note'>{_e(' '.join(bits))}</p>" if bits else ""


def _fmt(value, rate: bool) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.1f}%" if rate else f"{value:.4g}"


def _change(base, tuned, higher_is_better: bool | None, rate: bool) -> str:
    if base is None or tuned is None:
        return "<td class='num'>–</td>"
    delta = tuned - base
    text = f"{delta * 100:+.1f} pts" if rate else f"{delta:+.4g}"
    cls = ""
    if higher_is_better is not None and abs(delta) > 1e-12:
        cls = "better" if (delta > 0) == higher_is_better else "worse"
    return f"<td class='num {cls}'>{text}</td>"


def _metrics_table(results: dict) -> str:
    adapter = results.get("adapter") or {}
    s = results.get("settings") or {}
    rows = [
        "<table><tr><th>Metric</th><th class='num'>Base</th><th class='num'>Tuned</th>"
        "<th class='num'>Change</th></tr>"
    ]
    loss = results.get("loss")
    if loss:
        for key, label in (("loss", "Loss"), ("perplexity", "Perplexity")):
            b, t = loss["base"][key], loss["tuned"][key]
            rows.append(
                f"<tr><td>{label} <span class='tag'>{_e(loss['split'])} split, {loss['tokens']} tokens"
                f"</span></td><td class='num'>{b:.4f}</td><td class='num'>{t:.4f}</td>"
                f"{_change(b, t, False, False)}</tr>"
            )
    for m in results.get("metrics", []):
        rate = m.get("rate", True)
        rows.append(
            f"<tr><td>{_e(m['label'])} <span class='tag'>{_e(m['spec'])}</span></td>"
            f"<td class='num'>{_fmt(m.get('base'), rate)}</td><td class='num'>{_fmt(m.get('tuned'), rate)}</td>"
            f"{_change(m.get('base'), m.get('tuned'), True if rate else None, rate)}</tr>"
        )
    f = results.get("forgetting") or {}
    if f.get("checked"):
        value = f.get("forgetting")
        cls = "" if value is None else ("worse" if f.get("flagged") else "better")
        rows.append(
            f"<tr><td>General prompts <span class='tag'>forgetting check, {_e(f.get('prompts'))}"
            f"</span></td><td class='num'>{f['base']['passed']}/{f['base']['total']}</td>"
            f"<td class='num'>{f['tuned']['passed']}/{f['tuned']['total']}</td>"
            f"<td class='num {cls}'>{'–' if value is None else f'forgets {value:.0%}'}</td></tr>"
        )
    rows.append("</table>")
    n = len(results.get("examples", []))
    rows.append(
        f"<p class='note'>Tuned: {_e(adapter.get('label', ''))}. {n} prompt(s) from "
        f"{_e(s.get('prompts', ''))}, greedy, at most {s.get('max_tokens')} tokens.</p>"
    )
    rows += [f"<p class='note'>{_e(note)}</p>" for note in results.get("notes", [])]
    return "".join(rows)


def _examples_table(results: dict) -> str:
    specs = [(m["spec"], m.get("rate", True)) for m in results.get("metrics", [])]
    rows = [
        "<table><tr><th style='width:22%'>Prompt</th><th style='width:18%'>Reference</th>"
        "<th style='width:30%'>Base</th><th style='width:30%'>Tuned</th></tr>"
    ]
    for ex in results.get("examples", []):
        base, tuned = ex.get("base", {}), ex.get("tuned", {})
        b_html, t_html = diff_html(base.get("output", ""), tuned.get("output", ""))
        rows.append(
            f"<tr><td><div class='out'>{_e(ex.get('prompt', ''))}</div></td>"
            f"<td><div class='out'>{_e(ex.get('reference') or '–')}</div></td>"
            f"<td><div class='out'>{b_html}</div>{_badges(base, specs)}</td>"
            f"<td><div class='out'>{t_html}</div>{_badges(tuned, specs)}</td></tr>"
        )
    rows.append(
        "</table><p class='note'>Marked: <del>only in base</del> <ins>only in tuned</ins>.</p>"
    )
    return "".join(rows)


def _badges(side: dict, specs) -> str:
    bits = []
    for spec, rate in specs:
        score = (side.get("scores") or {}).get(spec)
        if score is None:
            continue
        if rate:
            ok = score["value"] >= 1
            detail = f" title='{_e(score.get('detail', ''))}'" if score.get("detail") else ""
            bits.append(
                f"<span class='{'pass' if ok else 'fail'}'{detail}>{'✓' if ok else '✗'} {_e(spec)}</span>"
            )
        else:
            bits.append(f"<span class='tag'>{_e(spec)} {score['value']:.0f}</span>")
    return f"<div class='tag'>{' · '.join(bits)}</div>" if bits else ""


def _golden_table(history: RunHistory) -> str:
    prompts = history.golden_prompts
    rows = ["<table><tr><th class='num'>Step</th><th class='num'>Val loss</th>"]
    rows += [f"<th>{_e(p)}</th>" for p in prompts]
    rows.append("</tr>")
    previous: dict[str, str] = {}
    for entry in history.golden:
        answers = {a.get("prompt"): a.get("answer", "") for a in entry["answers"]}
        val = history.val_loss_at(entry["step"])
        mark = " ★" if entry["step"] == history.best_val_step else ""
        rows.append(
            f"<tr><td class='num'>{entry['step']}{mark}</td>"
            f"<td class='num'>{'–' if val is None else f'{val:.4f}'}</td>"
        )
        for p in prompts:
            answer = answers.get(p)
            if answer is None:
                rows.append("<td>–</td>")
                continue
            cell = diff_html(previous[p], answer)[1] if p in previous else _e(answer)
            previous[p] = answer
            rows.append(f"<td><div class='out'>{cell}</div></td>")
        rows.append("</tr>")
    rows.append(
        "</table><p class='note'>Greedy answers at each checkpoint; <ins>marked</ins> text is new since "
        "the step before. ★ lowest validation loss.</p>"
    )
    return "".join(rows)


# Words keep their trailing whitespace, so spaces never match on their own and a changed phrase
# is marked as one piece rather than word by word.
_WORDS = re.compile(r"\s+|\S+\s*")


def diff_spans(a: str, b: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Word-level differences: (a as [(kind, text)], b as [(kind, text)]), kind equal|delete|insert."""
    wa, wb = _WORDS.findall(a or ""), _WORDS.findall(b or "")
    left: list[tuple[str, str]] = []
    right: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, wa, wb, autojunk=False).get_opcodes():
        if op == "equal":
            left.append(("equal", "".join(wa[i1:i2])))
            right.append(("equal", "".join(wb[j1:j2])))
            continue
        if i2 > i1:
            left.append(("delete", "".join(wa[i1:i2])))
        if j2 > j1:
            right.append(("insert", "".join(wb[j1:j2])))
    return left, right


def diff_html(a: str, b: str) -> tuple[str, str]:
    """`a` and `b` as HTML, with what only `a` has in <del> and what only `b` has in <ins>."""
    tags = {"equal": ("", ""), "delete": ("<del>", "</del>"), "insert": ("<ins>", "</ins>")}
    left, right = diff_spans(a, b)
    return (
        "".join(f"{tags[k][0]}{_e(t)}{tags[k][1]}" for k, t in left),
        "".join(f"{tags[k][0]}{_e(t)}{tags[k][1]}" for k, t in right),
    )


def _e(text) -> str:
    return html.escape(str(text), quote=True)
