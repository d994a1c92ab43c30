"""Issue 17: the first hour with Lathe, in a real, shown, focused window (Xvfb + openbox, xcb).

The journey runs once (tests/e2e/journey.py, about 2 minutes on the loaded 2-core CI machine);
each test below checks one thing it saw. Input is real Qt input on the real window: QTest mouse
clicks and key presses, and the drag-and-drop sequence QDragEnter/QDragMove/QDrop with the sample
folder's file URL sent to the window (Xvfb runs no second application that could start an X drag,
so the drag is synthesised at the Qt event level, not by the X server).

Each docstring says what the code before issue 17 did wrong at that point.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def seen(journey: dict, key: str):
    """What the journey recorded under `key`, or a failure that shows why it never got there."""
    if key not in journey or journey[key] is None:
        errors = "\n\n".join(f"[{k}]\n{v}" for k, v in journey.get("errors", {}).items())
        pytest.fail(
            f"the journey recorded no {key!r} (steps done: {journey.get('steps_done')}).\n"
            f"{errors or journey.get('stderr_tail', '')}"
        )
    return journey[key]


def test_the_journey_ran_in_a_real_window(journey):
    """The checks below are only worth something in a real window: the xcb platform on an X
    server with a window manager that gave the window focus, not offscreen rendering."""
    assert journey["platform"] == "xcb"
    assert journey["window_active"] is True
    assert not journey["errors"], journey["errors"]


def test_first_launch_stays_on_welcome(journey):
    """Item 1: when the window got focus, keyboard focus landed on the sidebar, Qt made its row 0
    current and the window switched to Models 0.3 s after showing Welcome."""
    first = seen(journey, "first_launch")
    assert first["page"] == "welcome" and first["visible"] == ["welcome"], first
    assert first["focus"] != "QListWidget", first


def test_the_demo_button_shows_train_and_only_train(journey):
    """Items 1-2: the demo button was gone (the window had moved to Models); reached through
    Help > Welcome, it showed Train with Models still painted under it."""
    assert "demo_needed_help_welcome" not in journey
    after = seen(journey, "after_demo")
    assert after == {"page": "train", "visible": ["train"]}


def test_the_demo_form_reads_like_a_form(journey):
    """Item 6: the demo's form showed "Epochs 2.0" and Layers "-1"."""
    form = seen(journey, "demo_form")
    # "All" for -1; the demo on a real chat model trains its last layers only (a number).
    assert form["epochs"] == "2" and form["layers"] != "-1", form
    assert form["layers"] == "All" or form["layers"].isdigit(), form


def test_help_welcome_then_go_to_the_app_leaves_one_page(journey):
    """Item 2: after Help > Welcome, "Go to the app" left Models painted under every page for
    the rest of the session ("DataModels", a ghost Download button over Chat)."""
    assert seen(journey, "after_go_to_app") == {"page": "data", "visible": ["data"]}
    for s in seen(journey, "sidebar_pages"):
        assert s["visible"] == [s["asked"]] and s["page"] == s["asked"], s


def test_dropping_the_sample_folder_imports_it_as_a_copy(journey):
    """Item 4: drops were accepted with the proposed action; dragged with Shift held, the
    proposed action is a Move, and a source that honours Move deletes the user's original."""
    drop = seen(journey, "drop")
    assert drop["proposed_action"] == "MoveAction", drop  # the case that matters
    assert drop["enter_accepted"] and drop["drop_accepted"], drop
    assert drop["drop_action"] == "CopyAction", drop
    assert drop["sample_still_there"]
    # 288 training conversations; the import holds 5% of them out as a test split (issue 22).
    assert drop["page"] == "data" and drop["train_examples"] + drop["test_examples"] == 288, drop
    assert drop["use_enabled"], drop


def test_use_for_training_opens_train_with_the_dataset(journey):
    use, drop = seen(journey, "use"), seen(journey, "drop")
    assert use["page"] == "train" and use["visible"] == ["train"]
    assert use["dataset_field"] == drop["dataset_path"]


def test_stop_shows_one_step_in_the_bar_and_the_message(journey):
    """Item 6: the bar showed the last progress report ("step 16 of 40") while the message said
    where the run stopped ("stopped at step 17")."""
    stopped = seen(journey, "stopped")
    assert stopped["state"] == "stopped", stopped
    step = stopped["summary_steps"]
    assert f"at step {step}" in stopped["message"], stopped
    assert stopped["bar"] == f"step {step} of 40" and stopped["bar_value"] == step, stopped


def test_resume_continues_the_curve_and_completes(journey):
    """Item 6: a resumed run's chart kept the old points and drew repeated steps again. Here the
    resume continues from the checkpoint Stop saved, so the curve only goes on; this passed
    before too. A resume that restarts from step 0 is in tests/app/test_train_numbers.py."""
    resumed = seen(journey, "resumed")
    assert resumed["state"] == "completed", resumed
    assert resumed["chart_steps_increase"] and resumed["bar"] == "step 40 of 40", resumed


def _seconds(text: str) -> float:
    parts = text.replace("h", " h").split()
    total, i = 0.0, 0
    while i < len(parts) - 1:
        value, unit = float(parts[i]), parts[i + 1]
        total += value * {"s": 1, "min": 60, "h": 3600}[unit]
        i += 2
    return total


def test_the_runs_row_shows_steps_duration_and_best_val_loss(journey):
    """Item 5: Duration was the last segment's wall time (14 s after 1.5 min of training in the
    issue; here the resumed half alone) shown in whole minutes, Steps came from status.json
    (0/104 for a killed run),
    and Best val loss counted the untrained model's step-0 evaluation. In this journey the loss
    falls, so the step-0 value is not the lowest and that column was right before too; the
    killed-run steps and the step-0 case are in tests/engine/test_run_numbers.py."""
    row, expected = seen(journey, "runs_row"), seen(journey, "expected")
    assert row["Status"].endswith("completed"), row
    assert row["Steps"] == f"{expected['final_step']}/{expected['total_steps']}", (row, expected)
    best = min(v for _, v in expected["evals"])
    assert row["Best val loss"] == f"{best:.4f}", (row, expected)
    # Seen by the window: from each `started` to the end of that worker, summed over both halves.
    want = expected["seconds"]
    got = _seconds(row["Duration"])
    # The window's clock also counts each worker's exit after its last event.
    slack = max(6.0, 0.2 * want)
    assert abs(got - want) <= slack, (row["Duration"], want, journey.get("segments"))


def test_chat_compare_stop_during_regenerate_settles_both_panes(journey):
    """Item 3: Stop during Regenerate left the tuned pane at "waiting for the tuned model's
    reply..." for good, and the next message left the two sides' histories differing."""
    assert seen(journey, "stopped_during") == "base"
    after = seen(journey, "chat_after_stop")
    assert not after["tuned_pane_waiting"] and not after["base_pane_waiting"], after
    assert after["base_roles"] == after["tuned_roles"], after
    nxt = seen(journey, "chat_after_next")
    assert nxt["base_users"] == nxt["tuned_users"] == ["Once upon a time", "The end"], nxt
    assert nxt["base_roles"] == nxt["tuned_roles"], nxt


def test_export_twice_offers_replace(journey):
    """Item 11: no choice of folder, nothing to do with the result, and a second export of the
    same kind failed with "already exists" and no Replace."""
    export = seen(journey, "export")
    assert "no_destination_choice" not in export
    assert export["first"].startswith("Done."), export
    assert "my exports" in export["first_path"] and export["reveal_offered"], export
    assert export["replace_offered"], export
    assert export["after_replace"].startswith("Done."), export
    assert export["status_fits"], export


def test_exactly_one_page_is_visible_throughout(journey):
    """Items 1-2: pages were switched re-entrantly and two stayed visible. Sampled every 10 ms
    and after every page's show or hide event, from the first paint to the end."""
    assert journey["page_samples"] > 1000
    assert journey["page_violations"] == []


def test_the_window_appears_and_the_gui_thread_never_works_long(journey):
    """Launch to first paint, and the longest GUI-thread work between two 5 ms probe ticks.
    The targets (1.5 s, 100 ms) are measured in bench/gui_responsiveness.py --journey; on this
    loaded machine the OS preempts the GUI, so these bounds only catch gross regressions."""
    appeared = journey["first_paint_at"] - journey["spawned_at"]
    assert appeared < 20, appeared
    assert journey["stall"]["max_busy_ms"] < 250, journey["stall"]


def test_the_window_never_loads_the_tokenizer_or_mlx_before_chat(journey):
    """Issue 17 (the GUI thread never stalls): the first loading of native modules holds Python's
    GIL, so it stalls the window when it happens in the window's process. Before, the demo's
    memory estimate loaded mlx_lm and the tokenizer on a thread (its token lengths), the drop's
    import loaded tokenizers, transformers and jinja2 (a 309 ms stall on a quiet machine), and
    listing runs at launch loaded MLX (engine.checkpoint). Now the import, the token view and the
    lengths run in worker processes and listing runs loads no MLX; only Chat, which runs the model
    in the window's process by design, loads them."""
    heavy = seen(journey, "heavy_imports_by_step")
    native = {"tokenizers", "transformers", "jinja2", "mlx", "mlx_lm"}
    for step in ("first_launch", "demo", "drop_sample", "use_for_training", "train_stop_resume"):
        assert step in heavy, heavy
        assert not native & set(heavy[step]), (step, heavy)
