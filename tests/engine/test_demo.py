"""Which model the demo trains, and with what (issue 18, item 4): a real chat model when there is one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine import demo
from engine.config import RunConfig


@pytest.fixture
def no_shared(monkeypatch, tmp_path):
    """No shared models folder and no stories260K: the machine of a user without a dev checkout."""
    monkeypatch.setattr(demo, "shared_models_dir", lambda: tmp_path / "no-shared")
    monkeypatch.setattr("engine.workspace.shared_stories_model", lambda: None)
    return tmp_path / "no-shared"


def test_the_demo_prefers_smollm2_from_the_shared_folder_and_says_so(no_shared, monkeypatch):
    folder = no_shared / demo.SHARED_CHAT_MODEL
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    choice = demo.choose_demo_model()
    assert (choice.kind, choice.path, choice.name) == ("chat", folder, "SmolLM2-135M-Instruct")
    assert "SmolLM2-135M-Instruct" in choice.note and "fees" in choice.note

    cfg, notes = RunConfig(), []
    demo.demo_defaults(cfg, notes)
    assert cfg.model.path == str(folder) and notes == [choice.note]
    assert cfg.data.path.endswith("bank-support")
    assert (cfg.lora.num_layers, cfg.lora.rank, cfg.training.learning_rate) == (8, 16, 2e-4)
    assert cfg.training.golden_prompts == demo.GOLDEN_PROMPTS


def test_the_demo_finds_smollm2_in_the_library_before_the_shared_folder(
    no_shared, tiny_chat_model, tmp_path
):
    from engine.models import import_model

    mine = tmp_path / "models" / "SmolLM2-135M-Instruct-8bit"
    shutil.copytree(tiny_chat_model, mine)
    import_model(str(mine))
    shared = no_shared / demo.SHARED_CHAT_MODEL
    shared.mkdir(parents=True)
    (shared / "config.json").write_text("{}")
    assert demo.choose_demo_model().path == mine


def test_without_a_chat_model_the_demo_falls_back_to_stories260k_then_a_tiny_model(
    no_shared, monkeypatch, tmp_path
):
    stories = tmp_path / "stories260K"
    monkeypatch.setattr("engine.workspace.shared_stories_model", lambda: stories)
    choice = demo.choose_demo_model()
    assert (choice.kind, choice.path) == ("stories", stories)
    assert "stories260K" in choice.note

    monkeypatch.setattr("engine.workspace.shared_stories_model", lambda: None)
    choice = demo.choose_demo_model()
    assert (choice.kind, choice.path) == ("tiny", None)  # built only when the demo starts
    assert "tiny random-weight model" in choice.note
    cfg = RunConfig()
    demo.demo_defaults(cfg, [])
    assert (Path(cfg.model.path) / "model.safetensors").exists()
    assert demo.choose_demo_model().path == Path(cfg.model.path)
    assert cfg.training.iters == 300 and cfg.lora.num_layers == -1


def test_the_demos_golden_prompts_are_not_questions_of_the_sample():
    """They show the model answering new questions, not reciting its training data."""
    from engine.workspace import resources_dir

    asked = set()
    for split in ("train", "valid"):
        path = resources_dir() / "samples" / "bank-support" / f"{split}.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines():
            asked |= {
                m["content"].lower() for m in json.loads(line)["messages"] if m["role"] == "user"
            }
    assert demo.GOLDEN_PROMPTS and not asked & {p.lower() for p in demo.GOLDEN_PROMPTS}


def test_train_demo_prints_the_chosen_model_and_the_app_says_the_same(no_shared, capsys):
    from app.services import demo_model_note
    from engine.cli import main

    folder = no_shared / demo.SHARED_CHAT_MODEL
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert main(["train", "--demo", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert str(folder) in out and "golden_prompts" in out
    assert demo_model_note() == demo.choose_demo_model().note
