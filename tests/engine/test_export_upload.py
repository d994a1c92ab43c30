"""Model cards from the run folder, and the Hub upload call, against nothing external."""

from __future__ import annotations

import pytest

from engine.export import ExportError, model_card, resolve_adapter, run_facts, upload
from engine.export.card import hub_repo_id
from tests.helpers import make_export_run


@pytest.fixture
def run(stories_path, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "a"}\n{"text": "b"}\n\n{"text": "c"}\n')
    return make_export_run(
        stories_path, tmp_path / "runs", "cardrun", template="{{ x }}", dataset=data
    )


@pytest.fixture
def hub(monkeypatch):
    """Record HfApi calls instead of making them; a token as if `hf auth login` had run."""
    import huggingface_hub

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        from fnmatch import fnmatch
        from pathlib import Path

        ignore = kwargs.get("ignore_patterns") or []  # as upload_folder skips them
        files = sorted(
            p.name
            for p in Path(folder_path).iterdir()
            if not any(fnmatch(p.name, pattern) for pattern in ignore)
        )
        readme = (Path(folder_path) / "README.md").read_text()
        calls.append(
            (
                "upload_folder",
                repo_id,
                {"files": files, "readme": readme, "token": self.token, **kwargs},
            )
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    return calls


def test_run_facts_and_card_come_from_the_run_folder(run):
    facts = run_facts(run)
    assert facts["status"] == "completed"
    assert facts["data"] == {"dataset": "data.jsonl", "train_examples": 3}
    assert facts["settings"]["lora_rank"] == 4 and facts["settings"]["iters"] == 30
    m = facts["metrics"]
    assert m["final_train_loss"] == 1.25 and m["final_val_loss"] == 1.5 and m["test_loss"] == 1.75
    assert m["trained_tokens"] == 12345
    card = model_card(resolve_adapter(str(run)), kind="adapter", repo_id="me/story-lora")
    assert card.startswith("---\n") and "library_name: mlx" in card
    assert "base_model:" not in card  # a local base folder is no Hub id
    for text in (
        "# me/story-lora",
        "| train examples | 3 |",
        "| lora rank | 4 |",
        "| final val loss | 1.5 |",
        "| test loss | 1.75 |",
        "| run status | completed |",
        "--adapter-path me/story-lora",
    ):
        assert text in card


def test_hub_ids_are_recognised():
    assert (
        hub_repo_id("mlx-community/Qwen2.5-0.5B-Instruct-4bit")
        == "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    )
    assert hub_repo_id("/Users/me/models/x") is None and hub_repo_id("plain") is None


def test_upload_adapter_creates_a_private_repo_and_sends_the_card(run, hub):
    seen = []
    result = upload(str(run), "me/story-lora", what="adapter", progress=seen.append)
    assert result.private and result.url == "https://huggingface.co/me/story-lora"
    (create, repo_id, kwargs), (up, up_repo, up_kwargs) = hub
    assert (create, repo_id, kwargs["private"], kwargs["exist_ok"]) == (
        "create_repo",
        "me/story-lora",
        True,
        True,
    )
    assert (up, up_repo) == ("upload_folder", "me/story-lora")
    assert up_kwargs["files"] == [
        "README.md",
        "adapter_config.json",
        "adapters.safetensors",
        "chat_template.jinja",
    ]
    assert (
        "| final train loss | 1.25 |" in up_kwargs["readme"]
        and up_kwargs["token"] == "hf_test_token"
    )
    assert seen[-1].stage == "done"


def test_upload_without_a_token_says_how_to_log_in(run, hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ExportError, match="not logged in") as err:
        upload(str(run), "me/x", what="adapter")
    assert "hf auth login" in err.value.hint and hub == []
    with pytest.raises(ExportError, match="not a Hugging Face repository id"):
        upload(str(run), "no-slash", what="adapter")


def test_hub_failure_is_one_sentence(run, hub, monkeypatch):
    import huggingface_hub

    def refuse(self, **kwargs):
        raise RuntimeError("403 Forbidden: you cannot write here\ndetails...")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refuse)
    with pytest.raises(
        ExportError,
        match=r"upload to me/x failed: 403 Forbidden: you cannot write here\. Check your connection",
    ):
        upload(str(run), "me/x", what="adapter")
