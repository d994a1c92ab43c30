"""Downloads run the real huggingface_hub code against a local Hub on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import huggingface_hub.constants
import pytest

from engine.errors import ModelError
from engine.models import hub, library
from tests.engine.hub_server import HubServer

ROOT = Path(__file__).resolve().parents[2]
REPO = "lathe-test/tiny-chat"


@pytest.fixture
def local_hub(tmp_path, monkeypatch, tiny_chat_model):
    """A local Hub serving the tiny chat model (plus files Lathe must not fetch), and an empty
    Hugging Face cache; HF_ENDPOINT points at the server."""
    with HubServer() as server:
        server.state.add_folder(
            REPO,
            tiny_chat_model,
            extra={
                "pytorch_model.bin": b"\x80pickle" * 10,
                "modeling_evil.py": b"import os\n",
                "onnx/model.onnx": b"x",
            },
        )
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        # Small chunks so progress, drops and cancels happen mid-file on a 0.5 MB model.
        monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 32 * 1024)
        yield server


def test_download_fetches_only_needed_files_into_the_hf_cache(local_hub, tiny_chat_model):
    seen = []
    result = hub.download_model(REPO, progress=seen.append)

    snap = Path(result.path)
    assert snap.parent.parent.name == "models--lathe-test--tiny-chat"
    assert sorted(p.name for p in snap.iterdir()) == sorted(result.files)
    assert "pytorch_model.bin" not in result.files and "modeling_evil.py" not in result.files
    fetched = {e["path"].rsplit("/", 1)[-1] for e in local_hub.state.log if e["method"] == "GET"}
    assert not fetched & {"pytorch_model.bin", "modeling_evil.py", "model.onnx"}
    assert (snap / "model.safetensors").read_bytes() == (
        tiny_chat_model / "model.safetensors"
    ).read_bytes()
    # Progress is in bytes of the whole model and ends complete.
    assert seen[-1].done_bytes == seen[-1].total_bytes == result.total_bytes
    assert seen[-1].files_done == len(result.files)
    assert all(a.done_bytes <= b.done_bytes for a, b in zip(seen, seen[1:], strict=False))
    # Other tools find it through the normal cache layout, offline.
    assert (snap.parent.parent / "refs" / "main").read_text() == result.commit
    from huggingface_hub import snapshot_download

    assert snapshot_download(
        REPO, local_files_only=True, cache_dir=os.environ["HF_HUB_CACHE"]
    ) == str(snap)

    again = hub.download_model(REPO)
    assert again.already_cached and again.downloaded_bytes == 0


def test_dropped_connection_resumes_with_a_range_request(local_hub, tiny_chat_model):
    local_hub.state.drop_once.add((REPO, "model.safetensors"))
    result = hub.download_model(REPO)

    gets = local_hub.state.gets("model.safetensors")
    assert len(gets) == 2 and gets[0]["range"] is None
    assert (
        gets[1]["range"]
        and gets[1]["range"].startswith("bytes=")
        and gets[1]["range"] != "bytes=0-"
    )
    data = (Path(result.path) / "model.safetensors").read_bytes()
    assert data == (tiny_chat_model / "model.safetensors").read_bytes()


def test_cancel_keeps_partial_bytes_and_the_next_download_continues(local_hub, tiny_chat_model):
    local_hub.state.chunk_delay = 0.005
    cancel = threading.Event()

    def progress(p):
        if p.filename == "model.safetensors" and p.done_bytes > 150_000:
            cancel.set()

    with pytest.raises(hub.DownloadCancelled):
        hub.download_model(REPO, progress=progress, cancel=cancel)
    kept = hub.partial_bytes(REPO)
    assert kept > 0
    assert (
        hub.cached_snapshot(REPO) is None
        or not (hub.cached_snapshot(REPO) / "model.safetensors").exists()
    )

    local_hub.state.log.clear()
    local_hub.state.chunk_delay = 0
    result = hub.download_model(REPO)
    assert result.resumed_bytes == kept
    assert local_hub.state.gets("model.safetensors")[0]["range"] == f"bytes={kept}-"
    assert (Path(result.path) / "model.safetensors").read_bytes() == (
        tiny_chat_model / "model.safetensors"
    ).read_bytes()
    assert hub.partial_bytes(REPO) == 0


def test_corrupt_transfer_is_rejected_by_checksum(local_hub):
    repo = local_hub.state.repos[REPO]
    good = repo.files["model.safetensors"]
    # The listing and ETag describe `good`, the bytes served differ: the hash check must notice.
    from tests.engine import hub_server

    real = hub_server.etag_of
    original = dict(repo.files)
    try:
        hub_server.etag_of = lambda name, data: real(
            name, good if name == "model.safetensors" else data
        )
        repo.files["model.safetensors"] = bytes(len(good))
        with pytest.raises(ModelError, match="checksum"):
            hub.download_model(REPO)
    finally:
        hub_server.etag_of = real
        repo.files.update(original)
    assert hub.partial_bytes(REPO) == 0


def test_offline_mode_says_so_without_touching_the_network(local_hub, monkeypatch, tiny_chat_model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="offline"):
        hub.download_model(REPO)
    assert local_hub.state.log == []
    # Everything local keeps working.
    entry = library.import_model(tiny_chat_model)
    assert entry.kind == "imported"


def test_unreachable_hub_is_reported_as_no_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelError, match="cannot be reached"):
        hub.download_model(REPO)


def test_gated_model_asks_for_login_and_works_with_a_token(local_hub, tiny_chat_model, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", "/nonexistent/token")
    local_hub.state.add_folder("lathe-test/gated", tiny_chat_model, gated=True)
    with pytest.raises(ModelError) as err:
        hub.download_model("lathe-test/gated", token=False)
    assert "gated" in str(err.value) and "hf auth login" in str(err.value)
    result = hub.download_model("lathe-test/gated", token="hf_local_test_token")
    assert (Path(result.path) / "model.safetensors").exists()


def test_unknown_and_pickle_only_repos_are_refused(local_hub, tiny_chat_model, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        hub.download_model("lathe-test/missing")
    with pytest.raises(ModelError, match="not a Hugging Face model id"):
        hub.download_model("../etc/passwd")
    pickle_only = tmp_path / "pickle-only"
    pickle_only.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (pickle_only / name).write_bytes((tiny_chat_model / name).read_bytes())
    (pickle_only / "pytorch_model.bin").write_bytes(b"\x80pickle")
    local_hub.state.add_folder("lathe-test/pickle", pickle_only)
    with pytest.raises(ModelError, match="pickle"):
        hub.download_model("lathe-test/pickle")


def test_library_download_is_listed_and_delete_removes_only_what_lathe_fetched(local_hub):
    entry = library.download(REPO)
    assert entry.kind == "downloaded" and entry.deletable and entry.size_bytes > 0
    assert [e.name for e in library.list_models() if e.kind == "downloaded"] == [REPO]
    storage = hub.repo_storage_folder(REPO)
    result = library.delete(REPO)
    assert result["removed_files"] and result["freed_bytes"] > 0
    assert not (storage / "snapshots").exists() or not any((storage / "snapshots").iterdir())
    assert REPO not in [e.name for e in library.list_models()]


def test_model_cached_by_another_tool_is_listed_but_never_deleted(local_hub):
    hub.download_model(REPO)  # as if another tool had fetched it: no library record
    listed = {e.name: e for e in library.list_models()}
    assert listed[REPO].kind == "cached" and not listed[REPO].deletable
    with pytest.raises(ModelError, match="hf cache delete"):
        library.delete(REPO)
    entry = library.download(REPO)  # already complete in the cache: Lathe does not own it
    assert entry.kind == "downloaded" and not entry.deletable
    result = library.delete(REPO)
    assert not result["removed_files"]
    assert (hub.cached_snapshot(REPO) / "model.safetensors").exists()


def test_cli_download_json_in_a_subprocess(local_hub, lathe_home):
    env = dict(os.environ, HF_ENDPOINT=local_hub.url, HF_HUB_CACHE=os.environ["HF_HUB_CACHE"])
    out = subprocess.run(
        [sys.executable, "-m", "engine", "models", "download", REPO, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    entry = json.loads(out.stdout)
    assert entry["kind"] == "downloaded" and Path(entry["path"], "model.safetensors").exists()

    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run(
        [sys.executable, "-m", "engine", "models", "download", "lathe-test/other", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "offline" in out.stderr and "Traceback" not in out.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "engine", "models", "list", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0 and REPO in [e["name"] for e in json.loads(listed.stdout)]
