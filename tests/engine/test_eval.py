"""Evaluate: base against tuned on a real model (stories260K), golden prompts, best checkpoint, report, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import events
from engine.runs import create_run
from tests.helpers import FACTS, completion_data, make_config, train_run, write_jsonl

GOLDEN = [FACTS[0][0], "Once upon a time"]


@pytest.fixture(scope="module")
def tuned_run(stories_path, tmp_path_factory):
    """stories260K taught four facts, with golden prompts, checkpoints at 100 and 200 (both evaluated).

    The held-out prompt file is separate from the training file (same facts, so the tuned model
    can know them and the base model cannot). stories260K never learned to emit EOS (its
    pretraining had none), so the answers are taught to end with a newline, and evaluation stops
    there (`stop=["\\n"]`), as a user of such a model would do.
    """
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: monkeypatch is per test
        mp.setenv("LATHE_HOME", str(home))
        data = tmp_path_factory.mktemp("data")
        rows = [{"prompt": q, "completion": a + "\n"} for q, a in FACTS]
        write_jsonl(data / "train.jsonl", rows * 6)
        write_jsonl(data / "valid.jsonl", rows)
        write_jsonl(data / "test.jsonl", rows)
        heldout = write_jsonl(
            tmp_path_factory.mktemp("heldout") / "heldout.jsonl",
            [{"prompt": q, "completion": a} for q, a in FACTS],
        )
        # 2e-4: at higher rates this run is chaotic (two BLAS libraries end in different places).
        cfg = make_config(
            stories_path, data, iters=200, learning_rate=2e-4, steps_per_eval=100, save_every=100
        )
        cfg.lora.rank = 16
        cfg.training.golden_prompts = list(GOLDEN)
        cfg.training.golden_max_tokens = 16
        # The forgetting check with prompts the base model passes: its own first words as references.
        cfg.training.general_check = True
        cfg.training.general_max_tokens = 12
        cfg.training.general_prompts_file = str(
            _base_passes_file(stories_path, tmp_path_factory.mktemp("general") / "general.jsonl")
        )
        status, run_dir, rec = _train_with_event_log(cfg)
    assert status == "completed", rec.of("error")
    return run_dir, rec, heldout


TAUGHT = [FACTS[0][0], FACTS[1][0]]  # trained on, so their answers change


def _base_passes_file(model_path, path):
    """A general prompt file the base model passes: for two prompts the run is then taught to
    answer differently, the reference is the first words of the base model's own greedy answer
    (metric `contains`). A tuned model that answers like its base keeps them; this run cannot."""
    from engine.chat import ChatModel
    from engine.evaluate.golden import answer_prompts

    chat_model = ChatModel.load(str(model_path))
    try:
        answers = answer_prompts(chat_model, TAUGHT, max_tokens=8, use_adapter=False)
    finally:
        chat_model.close()
    rows = []
    for a in answers:
        words = " ".join(a["answer"].split()[:4])
        assert words and not words.startswith(("The sky", "Cats say"))
        rows.append({"prompt": a["prompt"], "reference": words, "metric": "contains"})
    return write_jsonl(path, rows)


def _train_with_event_log(cfg):
    """Train in-process, with events to a recorder and to the run's events.jsonl (as the worker does)."""
    from engine.train import run

    run_dir = create_run(cfg)
    recorder = events.Recorder()
    log = events.EventLog(run_dir / "events.jsonl")
    try:
        status = run(cfg, run_dir, events.Fanout([recorder, log]))
    finally:
        log.close()
    return status, run_dir, recorder


@pytest.fixture(scope="module")
def evaluated(tuned_run):
    from engine.evaluate import evaluate_run

    run_dir, _, heldout = tuned_run
    seen = []
    results = evaluate_run(
        str(run_dir),
        prompts=heldout,
        metrics=["exact", "contains", "length"],
        max_tokens=24,
        stop=["\n"],
        progress=seen.append,
    )
    return results, seen


@pytest.mark.slow
def test_tuned_model_beats_the_base_model_on_exact_match(evaluated):
    results, seen = evaluated
    by = {m["spec"]: m for m in results["metrics"]}
    assert by["exact"]["tuned"] > by["exact"]["base"]
    assert by["exact"]["tuned"] >= 0.75, [e["tuned"]["output"] for e in results["examples"]]
    assert by["exact"]["base"] == 0.0
    assert by["contains"]["tuned"] >= by["exact"]["tuned"]
    # Same tokens for both: the tuned model's test loss is far lower.
    loss = results["loss"]
    assert loss["split"] == "test" and loss["tokens"] > 0
    assert loss["tuned"]["loss"] < loss["base"]["loss"] * 0.7
    assert loss["base"]["perplexity"] > loss["tuned"]["perplexity"]
    # Progress reached the caller for every answer, then done.
    assert [p["done"] for p in seen if p["stage"] == "generate"] == list(range(1, 9))
    assert seen[-1]["stage"] == "done"


def test_results_keep_every_answer_in_the_run_folder(evaluated, tuned_run):
    results, _ = evaluated
    run_dir, _, _ = tuned_run
    path = Path(results["path"])
    assert path.parent.parent == run_dir / "eval" and path.name == "results.json"
    saved = json.loads(path.read_text())
    assert len(saved["examples"]) == len(FACTS)
    first = saved["examples"][0]
    assert first["prompt"] == FACTS[0][0] and first["reference"] == FACTS[0][1]
    assert first["tuned"]["output"] == FACTS[0][1]
    assert not first["base"]["output"].startswith(FACTS[0][1])
    assert first["tuned"]["scores"]["exact"]["value"] == 1.0
    assert saved["adapter"]["step"] is None and saved["settings"]["greedy"] is True

    from engine.evaluate import latest_results

    assert latest_results(run_dir)["created"] == saved["created"]


def test_golden_prompts_are_answered_at_the_start_and_every_checkpoint(tuned_run):
    run_dir, rec, _ = tuned_run
    golden = rec.of("golden")
    checkpoints = [e["step"] for e in rec.of("checkpoint")]
    assert checkpoints == [100, 200]
    assert [e["step"] for e in golden] == [0, 100, 200]
    for e in golden:
        assert events.check(e) == []
        assert [a["prompt"] for a in e["answers"]] == GOLDEN
    first, last = golden[0]["answers"][0]["answer"], golden[-1]["answers"][0]["answer"]
    assert not first.startswith(FACTS[0][1]) and last.startswith(FACTS[0][1])
    # The events also reach events.jsonl, and the timeline reads them back.
    from engine.evaluate import run_history

    history = run_history(run_dir)
    assert [g["step"] for g in history.golden] == [0, 100, 200]
    assert history.golden_prompts == GOLDEN


@pytest.mark.slow
def test_golden_prompts_do_not_change_training(stories_path, tmp_path):
    """The answers are generated between steps: the losses match a run without golden prompts."""
    data = completion_data(tmp_path / "d", copies=2)
    losses = []
    for golden in ([], ["What do cats say?"]):
        cfg = make_config(stories_path, data, iters=20, steps_per_report=5, save_every=10)
        cfg.training.golden_prompts = golden
        cfg.training.golden_max_tokens = 8
        status, _, rec = train_run(cfg)
        assert status == "completed"
        assert len(rec.of("golden")) == (3 if golden else 0)
        losses.append([e["train_loss"] for e in rec.of("progress")])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_best_checkpoint_by_validation_loss_and_by_a_metric(tuned_run):
    from engine.evaluate import best_checkpoint, run_history

    run_dir, _, heldout = tuned_run
    history = run_history(run_dir)
    best = best_checkpoint(str(run_dir), "val_loss")
    vals = {s: history.val_loss_at(s) for s in (100, 200)}
    assert best["step"] == min(vals, key=vals.get)
    from engine.chat import resolve_adapter

    named = resolve_adapter(best["spec"])  # "use this checkpoint": RUN:STEP names it everywhere
    assert named.step == best["step"] and named.run_dir == run_dir

    by_metric = best_checkpoint(str(run_dir), "exact", prompts=heldout, max_tokens=24, stop=["\n"])
    assert {c["step"] for c in by_metric["candidates"]} == {100, 200}
    top = max(c["value"] for c in by_metric["candidates"])
    assert by_metric["value"] == top > by_metric["base"]


def test_report_is_one_self_contained_file_with_both_sides(evaluated, tuned_run, tmp_path):
    from engine.evaluate import write_report

    results, _ = evaluated
    run_dir, _, _ = tuned_run
    path = write_report(run_dir, results, tmp_path / "report.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<svg" in text and "<polyline" in text  # loss curves drawn inline
    assert "Exact match" in text and "Base" in text and "Tuned" in text
    first = results["examples"][0]
    import html

    assert html.escape(first["prompt"]) in text
    assert "<ins>" in text or "<del>" in text  # differences marked
    base_words = first["base"]["output"].split()[:3]
    assert all(html.escape(w) in text for w in base_words)
    assert "Golden prompts over training" in text and "fine_tune_type" in text  # timeline, config
    assert "General prompts" in text and "forgets " in text  # the forgetting check's row
    assert (
        "<script" not in text
        and "src=" not in text
        and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    )


def test_cli_run_best_and_report(tuned_run, capsys, monkeypatch):
    from engine.cli import main

    run_dir, _, heldout = tuned_run
    monkeypatch.setenv("LATHE_HOME", str(run_dir.parent.parent))
    assert (
        main(
            [
                "eval",
                "run",
                f"{run_dir.name}:200",
                "--prompts",
                str(heldout),
                "--metric",
                "exact",
                "--metric",
                "regex:^The ",
                "--max-tokens",
                "24",
                "--stop",
                "\\n",
                "--no-loss",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["adapter"]["step"] == 200 and out["loss"] is None
    assert [m["spec"] for m in out["metrics"]] == ["exact", "regex:^The "]
    assert (
        out["settings"]["stop"] == ["\n"] and out["metrics"][0]["tuned"] > out["metrics"][0]["base"]
    )
    assert main(["eval", "best", run_dir.name, "--by", "val_loss"]) == 0
    assert "Use it as" in capsys.readouterr().out
    assert main(["eval", "report", run_dir.name, "--json"]) == 0
    assert Path(json.loads(capsys.readouterr().out)["path"]) == run_dir / "report.html"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["eval", "run", "RUNID:99", "--metric", "exact"], "checkpoint at step 99"),
        (["eval", "run", "RUNID", "--metric", "bogus"], "Unknown metric"),
        (["eval", "run", "RUNID", "--metric", "regex:("], "not a valid regular expression"),
        (["eval", "run", "RUNID", "--metric", "schema:/nope/s.json"], "does not exist"),
        (["eval", "best", "RUNID", "--by", "length"], "no better direction"),
        (["eval", "run", "no-such-run"], "'no-such-run' is neither a run nor an adapter folder"),
    ],
)
def test_cli_errors_are_one_sentence(tuned_run, capsys, monkeypatch, argv, words):
    from engine.cli import main

    run_dir, _, _ = tuned_run
    monkeypatch.setenv("LATHE_HOME", str(run_dir.parent.parent))
    argv = [a.replace("RUNID", run_dir.name) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# -- the forgetting check (issue 22 item 2) ---------------------------------------------------


def test_forgetting_check_answers_general_prompts_at_every_checkpoint(tuned_run):
    """issue 22 item 2: the general prompts are answered and scored at the start and at each
    checkpoint (in the `golden` event); the base passes them, the taught checkpoints lose them."""
    from engine.evaluate import run_history

    run_dir, rec, _ = tuned_run
    golden = rec.of("golden")
    assert [e["step"] for e in golden] == [0, 100, 200]
    for e in golden:
        assert events.check(e) == []
        assert [a["prompt"] for a in e["general"]["answers"]] == TAUGHT
    assert golden[0]["general"]["passed"] == 2 and golden[0]["general"]["score"] == 1.0
    assert golden[-1]["general"]["passed"] < 2
    scores = run_history(run_dir).general
    assert sorted(scores) == [0, 100, 200]
    assert scores[0]["forgetting"] == 0.0 and scores[200]["forgetting"] >= 0.5
    # The run warned once, at the first checkpoint that crossed the threshold.
    first = next(s for s in (100, 200) if scores[s]["forgetting"] >= 0.1)
    warned = [e["message"] for e in rec.of("log") if "Forgetting at step" in e["message"]]
    assert len(warned) == 1 and warned[0].startswith(f"Forgetting at step {first}:")
    assert "Cheapest fixes" in warned[0]


def test_eval_run_json_has_a_forgetting_figure_that_flags_the_run(tuned_run, capsys, monkeypatch):
    """issue 22 item 2: `eval run --json` carries a `forgetting` object beside the gain; a run that
    answers a general prompt worse than its base is flagged, with the cheapest fixes named."""
    from engine.cli import main

    run_dir, _, heldout = tuned_run
    monkeypatch.setenv("LATHE_HOME", str(run_dir.parent.parent))
    argv = ["eval", "run", run_dir.name, "--prompts", str(heldout), "--metric", "exact"]
    argv += ["--max-tokens", "24", "--stop", "\\n", "--no-loss"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    f = out["forgetting"]
    assert f["checked"] and f["flagged"] and f["threshold"] == 0.1
    assert f["base"]["passed"] == 2 and f["tuned"]["passed"] < 2
    assert set(f["lost"]) <= set(TAUGHT) and f["lost"]
    assert f["forgetting"] == len(f["lost"]) / 2 and f["change_points"] < 0
    assert [e["prompt"] for e in f["examples"]] == TAUGHT
    assert all(e["base"]["passed"] for e in f["examples"])
    assert out["metrics"][0]["tuned"] > out["metrics"][0]["base"]  # the gain beside the loss
    assert f["checkpoints"]["0"]["score"] == 1.0 and "200" in f["checkpoints"]
    warning = f["warning"]
    assert warning in out["notes"]
    for words in (
        "fewer steps (--iters 100)",
        "learning rate",
        "earlier checkpoint (every saved one forgets too",
        "mix general",
    ):
        assert words in warning, warning
    # The human summary says it too.
    from engine.commands.eval import format_summary

    text = format_summary(out)
    assert "general prompts" in text and "WARNING" in text and "Cheapest fixes" in text

    # The check is not a constant: scored against its own answers, the run forgets nothing.
    same = run_dir.parent / "same.jsonl"
    same.write_text(
        "".join(
            json.dumps(
                {"prompt": e["prompt"], "reference": e["tuned"]["output"], "metric": "exact"}
            )
            + "\n"
            for e in f["examples"]
        )
    )
    assert main([*argv, "--general", str(same), "--limit", "1", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["forgetting"]
    assert again["tuned"]["passed"] == 2 and not again["flagged"] and again["warning"] is None


def test_best_checkpoint_weighs_the_general_prompts(tuned_run):
    """issue 22 item 2: `eval best` reports each checkpoint's forgetting and the rule it chose by."""
    from engine.evaluate import best_checkpoint

    run_dir, _, _ = tuned_run
    best = best_checkpoint(str(run_dir), "val_loss")
    assert {c["step"] for c in best["candidates"]} == {100, 200}
    assert all(c["forgetting"] is not None for c in best["candidates"])
    assert best["rule"] and best["by_in_domain_only"] in (100, 200)


def test_best_by_both_prefers_a_checkpoint_that_keeps_the_general_prompts():
    """issue 22 item 2: the documented rule, on crafted candidates."""
    from engine.evaluate.general import best_by_both

    c = [
        {"step": 100, "key": -1.20, "forgetting": 0.0},
        {"step": 200, "key": -1.00, "forgetting": 0.05},
        {"step": 300, "key": -0.80, "forgetting": 0.5},  # best in-domain, but forgets
    ]
    assert best_by_both(c)[0]["step"] == 200
    assert best_by_both(c[:1] + [c[2]])[0]["step"] == 100
    all_forget = [dict(x, forgetting=f) for x, f in zip(c, (0.5, 0.25, 0.25), strict=True)]
    best, why = best_by_both(all_forget)
    assert best["step"] == 300 and "forgets least" in why
    unknown = [dict(x, forgetting=None) for x in c]
    assert best_by_both(unknown)[0]["step"] == 300


def test_a_base_model_without_a_chat_template_skips_the_check_by_default(
    stories_path, tiny_chat_model
):
    """issue 22 item 2: auto mode: stories260K has no chat template of its own (a base model, which
    cannot follow the general prompts), so they are not spent on it; a chat model is checked."""
    from engine.data import load_tokenizer
    from engine.evaluate.general import check_applies

    on, why = check_applies(None, load_tokenizer(str(stories_path)))
    assert not on and "no chat template" in why
    assert check_applies(None, load_tokenizer(str(tiny_chat_model)))[0]
    assert check_applies(True, load_tokenizer(str(stories_path)))[0]
    assert not check_applies(False, load_tokenizer(str(tiny_chat_model)))[0]


def test_general_prompt_files_are_checked_line_by_line(tmp_path):
    """issue 22 item 2: the built-in set passes its own references; a bad file names its line."""
    from engine.evaluate import EvalError
    from engine.evaluate.general import load_general_prompts

    builtin = load_general_prompts()
    assert len(builtin) >= 8 and all(g.passes(g.reference) for g in builtin)
    assert {g.kind for g in builtin} >= {"fact", "instruction", "format"}
    assert not builtin[0].passes("The capital of France is London.")
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "c", "metric": "length"}\n')
    with pytest.raises(EvalError, match="Line 2 of g.jsonl"):
        load_general_prompts(bad)


def test_the_check_runs_by_default_for_a_chat_model_and_stops_when_its_base_passes_nothing(
    tiny_chat_model, tmp_path
):
    """issue 22 item 2: auto mode checks a model with its own chat template at the start; a base
    model that passes no general prompt (random weights here) has nothing to lose, so the
    checkpoints skip the check (it costs nothing more) and the log says why."""
    data = completion_data(tmp_path / "d", copies=2)
    cfg = make_config(tiny_chat_model, data, iters=10, save_every=5, general_check=None)
    cfg.training.general_max_tokens = 8
    status, _, rec = train_run(cfg)
    assert status == "completed"
    golden = rec.of("golden")
    assert [e["step"] for e in golden] == [0]
    assert golden[0]["general"]["total"] >= 8 and golden[0]["general"]["passed"] == 0
    assert any("Forgetting check off" in e["message"] for e in rec.of("log"))
