"""EvalResultsWidget with a real stories260K run: evaluate off the GUI thread, show, pick a checkpoint."""

from __future__ import annotations

import json
import os

import pytest

from engine import events

FACTS = [
    ("What color is the sky?", "The sky is blue."),
    ("What do cats say?", "Cats say meow."),
    ("Where do fish live?", "Fish live in water."),
    ("What is the fee?", "The fee is five euros."),
]


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def small_run(stories_path, tmp_path_factory):
    """A short stories260K run with golden prompts and checkpoints at 100 and 200."""
    from engine.config import RunConfig
    from engine.runs import create_run
    from engine.train import run

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: monkeypatch is per test
        mp.setenv("LATHE_HOME", str(home))
        data = tmp_path_factory.mktemp("data")
        rows = [{"prompt": q, "completion": a + "\n"} for q, a in FACTS]
        _write(data / "train.jsonl", rows * 6)
        _write(data / "valid.jsonl", rows)
        heldout = _write(
            tmp_path_factory.mktemp("heldout") / "heldout.jsonl",
            [{"prompt": q, "completion": a} for q, a in FACTS],
        )
        cfg = RunConfig()
        cfg.model.path = str(stories_path)
        cfg.data.path = str(data)
        cfg.data.max_seq_length = 128
        cfg.lora.num_layers, cfg.lora.rank = -1, 16
        t = cfg.training
        t.iters, t.batch_size, t.learning_rate = 200, 4, 2e-4  # higher rates make the run chaotic
        t.steps_per_report, t.steps_per_eval, t.save_every = 20, 100, 100
        t.golden_prompts, t.golden_max_tokens = [FACTS[1][0], FACTS[3][0]], 12
        run_dir = create_run(cfg)
        log = events.EventLog(run_dir / "events.jsonl")
        try:
            status = run(cfg, run_dir, log)
        finally:
            log.close()
    assert status == "completed"
    return run_dir, heldout


@pytest.mark.slow
def test_evaluate_runs_off_the_gui_thread_and_shows_both_sides(qtbot, small_run, tmp_path):
    """Issue 19: evaluation runs in a worker process (it ran MLX on a thread of the window's)."""
    from app.eval_widget import HTML_ROLE, EvalResultsWidget

    run_dir, heldout = small_run
    w = EvalResultsWidget()
    qtbot.addWidget(w)
    w.resize(1280, 760)
    w.show()
    w.set_run(run_dir)
    assert w._metrics_table.rowCount() == 0  # no evaluation yet
    w.set_evaluation_options(
        prompts=str(heldout), metrics=["exact", "contains"], max_tokens=16, stop=["\n"]
    )
    stages = []
    w.job.sig_progress.connect(lambda p: stages.append(p["stage"]))
    with qtbot.waitSignal(w.sig_evaluation_finished, timeout=120_000) as done:
        w.evaluate()
        assert w.busy and not w._evaluate_button.isEnabled()
    results = done.args[0]
    assert w.job.pid and w.job.pid != os.getpid()
    assert {"load", "generate"} <= set(stages)  # the worker's progress lines reached the widget
    assert not w.busy and w._evaluate_button.isEnabled()

    metrics = w._metrics_table
    labels = [metrics.item(r, 0).text() for r in range(metrics.rowCount())]
    assert labels[0].startswith("Loss") and any("Exact match" in x for x in labels)
    exact = next(m for m in results["metrics"] if m["spec"] == "exact")
    row = next(r for r, x in enumerate(labels) if "Exact match" in x)
    assert metrics.item(row, 2).text() == f"{exact['tuned'] * 100:.1f}%"
    answers = w._answers_table
    assert answers.rowCount() == len(FACTS)
    for r, ex in enumerate(results["examples"]):
        assert answers.item(r, 0).text() == ex["prompt"]
        assert answers.item(r, 2).text() == ex["base"]["output"]
        assert answers.item(r, 3).text() == ex["tuned"]["output"]
    # Differences are highlighted: the tuned answer's new words carry the insert style.
    assert "#ccffd8" in answers.item(0, 3).data(HTML_ROLE)

    # A fresh widget on the same run shows the saved evaluation at once.
    again = EvalResultsWidget()
    qtbot.addWidget(again)
    again.set_run(run_dir)
    assert again._answers_table.rowCount() == len(FACTS)

    w._tabs.setCurrentIndex(1)
    path = tmp_path / "eval_widget.png"
    assert w.grab().save(str(path)) and path.stat().st_size > 10_000


def test_golden_timeline_and_use_this_checkpoint(qtbot, small_run, tmp_path):
    from PySide6.QtCore import Qt

    from app.eval_widget import EvalResultsWidget

    run_dir, _ = small_run
    w = EvalResultsWidget()
    qtbot.addWidget(w)
    w.resize(1100, 600)
    w.set_run(run_dir)
    golden = w._golden_table
    steps = [golden.item(r, 0).data(Qt.UserRole) for r in range(golden.rowCount())]
    assert steps == [0, 100, 200]
    headers = [golden.horizontalHeaderItem(c).text() for c in range(golden.columnCount())]
    assert headers[2:] == [FACTS[1][0], FACTS[3][0]]
    assert golden.item(2, 2).text().startswith(FACTS[1][1])
    assert not golden.item(0, 2).text().startswith(FACTS[1][1])

    # Pick the step-100 row in the timeline and use it.
    w._tabs.setCurrentWidget(golden)
    golden.selectRow(1)
    assert w.selected_step() == 100
    with qtbot.waitSignal(w.sig_use_checkpoint) as used:
        w._use_button.click()
    assert used.args == [run_dir.name, 100]

    # Step 0 has no checkpoint: "use" falls back to the adapter chosen in the picker.
    golden.selectRow(0)
    w._checkpoint_combo.setCurrentIndex(w._checkpoint_combo.findData(200))
    assert w.selected_step() == 200
    path = tmp_path / "golden.png"
    w._tabs.setCurrentWidget(golden)
    assert w.grab().save(str(path))


def test_a_failed_evaluation_shows_one_sentence(qtbot, small_run):
    from app.eval_widget import EvalResultsWidget

    run_dir, _ = small_run
    w = EvalResultsWidget()
    qtbot.addWidget(w)
    w.set_run(run_dir)
    with qtbot.waitSignal(w.sig_evaluation_failed, timeout=30_000) as failed:
        w.evaluate(metrics=["bogus"])
    assert failed.args[0] == "Unknown metric 'bogus'."
    assert "exact, contains" in failed.args[1]
    assert "Unknown metric" in w._status.text() and not w.busy


def test_the_evaluate_tab_shows_the_forgetting_check(qtbot, tmp_path):
    """issue 22 item 2: the Runs page's Evaluate tab shows the general prompts base against tuned,
    the forgetting figure, the warning with its fixes (red when flagged), and the check over
    training in the golden timeline."""
    from PySide6.QtCore import Qt

    from app.eval_widget import EvalResultsWidget
    from engine.evaluate import run_history
    from engine.evaluate.general import compare, warning

    prompts = ["What is the capital of France?", "What is 2 + 2? Reply with the number only."]

    def rows(passed):
        return [
            {"prompt": p, "answer": "x", "passed": ok, "metric": "contains"}
            for p, ok in zip(prompts, passed, strict=True)
        ]

    run_dir = tmp_path / "run-1"
    run_dir.mkdir()
    log = events.EventLog(run_dir / "events.jsonl")
    for step, passed in ((0, (True, True)), (100, (True, True)), (200, (False, True))):
        answers = rows(passed)
        general = {"score": sum(passed) / 2, "passed": sum(passed), "total": 2, "answers": answers}
        log(events.make("golden", step=step, answers=[], general=general))
    log.close()

    flagged = {"checked": True} | compare(rows((True, True)), rows((False, True)))
    flagged["warning"] = warning(flagged, run_ref="run-1", best_step=100)
    results = {"adapter": {"label": "run run-1 · final adapter"}, "metrics": [], "examples": []}
    w = EvalResultsWidget()
    qtbot.addWidget(w)
    w.resize(1100, 600)
    w.show_run(run_dir, run_history(run_dir), results | {"forgetting": flagged})

    table = w._metrics_table
    row = [table.item(r, c).text() for r in range(table.rowCount()) for c in range(4)]
    assert row == ["General prompts (forgetting check)", "2/2", "1/2", "forgets 50%"]
    assert table.item(0, 3).foreground().color().name() == "#c62828"
    label = w._forgetting
    assert label.isVisibleTo(w) and "c62828" in label.styleSheet()
    assert "Cheapest fixes" in label.text() and "run-1:100" in label.text()

    golden = w._golden_table
    headers = [golden.horizontalHeaderItem(c).text() for c in range(golden.columnCount())]
    assert headers == ["Step", "Val loss", "General"]
    steps = [golden.item(r, 0).data(Qt.UserRole) for r in range(golden.rowCount())]
    assert steps == [0, 100, 200]
    assert [golden.item(r, 2).text() for r in range(3)] == ["2/2", "2/2", "1/2"]
    assert golden.item(2, 2).foreground().color().name() == "#c62828"

    # Nothing lost: the line says so, not in red.
    kept = {"checked": True} | compare(rows((True, False)), rows((True, True)))
    w.set_results(results | {"forgetting": kept})
    assert "forgetting: 0%" in label.text() and "c62828" not in label.styleSheet()
    assert table.item(0, 3).text() == "forgets 0%"
