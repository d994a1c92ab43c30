"""Issue 16: nothing outside Lathe's own folders is ever touched, and damaged inputs are survived.

Each test names the item of issue 16 it covers and fails on the code as it was before the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.export import ExportError, export_gguf, fuse
from engine.templates import DEFAULT_CHAT_TEMPLATE
from tests.engine.test_export_support import make_run


@pytest.fixture(scope="module")
def stories_run(tmp_path_factory, stories_path):
    return make_run(
        stories_path, tmp_path_factory.mktemp("runs"), "stories", template=DEFAULT_CHAT_TEMPLATE
    )


# --- item 1: exports never delete or replace what Lathe did not write -------------------------


def test_force_never_deletes_a_folder_lathe_did_not_create(stories_run, tmp_path, capsys):
    """issue 16 item 1: `export fuse RUN --out DIR --force` into a folder of the user's (think
    ~/Desktop) is refused with a clear message, and every file in it is left as it was."""
    from engine.cli import main

    desktop = tmp_path / "Desktop"
    (desktop / "photos").mkdir(parents=True)
    (desktop / "notes.txt").write_text("mine")
    (desktop / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    code = main(
        ["export", "fuse", str(stories_run), "--out", str(desktop), "--force", "--no-check"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Lathe did not create it" in err and "not even with --force" in err
    assert (desktop / "notes.txt").read_text() == "mine"
    assert (desktop / "photos" / "cat.jpg").read_bytes() == b"\xff\xd8\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Desktop"]  # no temporary leftovers


def test_force_replaces_only_a_folder_of_lathes_own_files(stories_run, tmp_path):
    """issue 16 item 1: --force replaces an earlier Lathe export, but not once the user has put a
    file of their own into it; an Ollama folder follows the same rule."""
    from engine.export import export_ollama

    out = tmp_path / "fused"
    first = fuse(str(stories_run), out, dequantize=True, check=False)
    assert (out / ".lathe-export.json").is_file()
    again = fuse(str(stories_run), out, dequantize=True, check=False, overwrite=True)
    assert again.path == out and (out / "model.safetensors").is_file()
    assert first.size_bytes == again.size_bytes
    (out / "my-notes.md").write_text("keep me")
    with pytest.raises(ExportError, match="files Lathe did not write \\(my-notes.md\\)"):
        fuse(str(stories_run), out, dequantize=True, check=False, overwrite=True)
    assert (out / "my-notes.md").read_text() == "keep me" and (out / "config.json").is_file()

    mine = tmp_path / "ollama-here"
    mine.mkdir()
    (mine / "model.gguf").write_bytes(b"my own model")
    with pytest.raises(ExportError, match="Lathe did not create it"):
        export_ollama(str(stories_run), mine, overwrite=True)
    assert (mine / "model.gguf").read_bytes() == b"my own model"


def test_force_replaces_only_a_gguf_file_lathe_wrote(stories_run, tmp_path):
    """issue 16 item 1: a GGUF export with --force replaces a GGUF Lathe wrote (it carries Lathe's
    mark), never any other file at that path."""
    theirs = tmp_path / "theirs.gguf"
    theirs.write_bytes(b"GGUF not Lathe's")
    with pytest.raises(ExportError, match="Lathe did not write it"):
        export_gguf(str(stories_run), theirs, overwrite=True)
    assert theirs.read_bytes() == b"GGUF not Lathe's"
    ours = tmp_path / "ours.gguf"
    export_gguf(str(stories_run), ours)
    with pytest.raises(ExportError, match="already exists"):
        export_gguf(str(stories_run), ours)
    assert export_gguf(str(stories_run), ours, overwrite=True).path == ours


# --- item 2: no download writes outside the Hugging Face cache -------------------------------


def test_a_crafted_revision_cannot_write_outside_the_hf_cache(stories_path, tmp_path, monkeypatch):
    """issue 16 item 2: `models download REPO --revision ../../../../x/victim` used to write the
    commit hash over a file outside the cache. Revisions are now checked (branch, tag or commit)
    before anything is fetched or written, and the write itself is checked to stay inside refs/."""
    from engine.cli import main
    from engine.errors import ModelError
    from engine.models import hub
    from engine.workspace import WorkspaceError, within
    from tests.engine.hub_server import HubServer

    cache = tmp_path / "hf-cache"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    with HubServer() as server:
        server.state.add_folder("lathe-test/stories", stories_path)
        server.state.any_revision = True
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(cache))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        storage = hub.repo_storage_folder("lathe-test/stories", cache)
        escape = "../" * (len((storage / "refs").relative_to(tmp_path).parts)) + "victim"
        assert (storage / "refs" / escape).resolve() == victim.resolve()
        code = main(["models", "download", "lathe-test/stories", "--revision", escape])
        assert victim.read_text() == "precious"
        assert code == 1
        for bad in ("/etc/passwd", "main/../../x", ".hidden", "a b", "x.lock", "a//b", ""):
            with pytest.raises(ModelError, match="is not a branch, tag or commit"):
                hub.check_revision(bad)
        for good in ("main", "v1.0", "refs/pr/1", "feature/x-y_z", "a" * 40):
            assert hub.check_revision(good) == good
        # Nothing was fetched for the bad revision; a good one still downloads.
        assert not [e for e in server.state.log if e["method"] == "GET"]
        assert main(["models", "download", "lathe-test/stories", "--revision", "main"]) == 0
    assert victim.read_text() == "precious"
    assert (storage / "refs" / "main").is_file()
    with pytest.raises(WorkspaceError, match="outside"):
        within(storage / "refs", storage / "refs" / escape)


# --- item 3: links in a dropped folder never lead out of it ------------------------------------


def test_links_that_leave_a_dropped_folder_are_skipped_and_reported(tmp_path):
    """issue 16 item 3: `train/passwd.txt -> /etc/passwd` in a dropped folder used to import the
    link's target as training text. Links leading out of the folder (to a file or a folder) are
    skipped and named in the report; a link to a file inside the folder is read as usual."""
    import json
    import os

    from engine.data import import_dataset, inspect_dataset

    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd.txt").write_text("root:x:0:0:SECRET-LINE\n")
    ds = tmp_path / "notes"
    (ds / "train").mkdir(parents=True)
    (ds / "shared").mkdir()
    (ds / "train" / "a.txt").write_text("A story about a cat.\n\nAnd another about a dog.\n")
    (ds / "shared" / "b.txt").write_text("A shared story about the sea.\n")
    os.symlink(secret / "passwd.txt", ds / "train" / "passwd.txt")
    os.symlink(secret, ds / "train" / "more")
    os.symlink(Path("..") / "shared" / "b.txt", ds / "train" / "b.txt")

    report = inspect_dataset(ds)
    skipped = [n for n in report.notes if "outside" in n]
    assert skipped and "train/passwd.txt" in skipped[0] and "train/more" in skipped[0]
    imported = import_dataset(ds)
    text = "".join(p.read_text() for p in Path(imported.dataset_path).glob("*.jsonl"))
    assert "SECRET-LINE" not in text
    assert "shared story about the sea" in text  # the link inside the folder was followed
    meta = json.loads((Path(imported.dataset_path) / "dataset.json").read_text())
    assert any("train/passwd.txt" in n for n in meta["report"]["notes"])
