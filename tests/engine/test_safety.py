"""Issue 16: nothing outside Lathe's own folders is ever touched, and damaged inputs are survived.

Each test names the item of issue 16 it covers and fails on the code as it was before the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.export import ExportError, export_gguf, fuse
from engine.templates import DEFAULT_CHAT_TEMPLATE
from tests.helpers import make_export_run


@pytest.fixture(scope="module")
def stories_run(tmp_path_factory, stories_path):
    return make_export_run(
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


# --- item 4: one worker per run, and a run's liveness is its lock ------------------------------


def _worker(args: list[str], home: Path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, LATHE_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "train", *args],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_second_worker_on_the_same_run_is_refused(stories_path, tmp_path, lathe_home):
    """issue 16 item 4: two `train --config RUN/config.yaml --events` on one created run (the app's
    path) used to both train, logging every step twice. The run's OS lock lets only the first
    train; the second exits at once naming the process that trains the run, having written
    nothing. A SIGKILL of the first releases the lock: the run then reads as interrupted."""
    import json
    import signal

    from engine.config import RunConfig
    from engine.runs import create_run, load_run
    from tests.helpers import variable_chat_data

    cfg = RunConfig()
    cfg.model.path = str(stories_path)
    cfg.data.path = str(variable_chat_data(tmp_path / "chat.jsonl", n=40))
    cfg.training.iters = 100_000
    cfg.training.ignore_fit_check = True
    run = create_run(cfg)
    args = ["--config", str(run / "config.yaml"), "--events"]
    first = _worker(args, lathe_home)
    try:
        assert json.loads(first.stdout.readline())["event"] == "log"  # training has begun
        second = _worker(args, lathe_home)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 1, err
        assert f"already training in process {first.pid}" in err and out == ""
        assert load_run(run).state == "running"
        logged = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
        # Each worker that starts training logs MLX's limits once (the first may have gone on to
        # log its memory estimate, also "Memory: ...", by now: count the limits line only).
        assert len([e for e in logged if "Memory: MLX may use" in e.get("message", "")]) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    assert load_run(run).state == "interrupted"


def test_a_stale_pid_never_keeps_a_run_training(lathe_home):
    """issue 16 item 4: after a crash the pid in status.json may belong to an unrelated live
    process (here pid 1 and this test's own process); the run still reads as interrupted (no
    worker holds its lock), is listed so, and can be resumed or deleted."""
    import os

    from engine.config import RunConfig
    from engine.runs import delete_run, list_runs, load_run, write_status

    cfg = RunConfig()
    cfg.model.path = "some/model"
    for pid in (1, os.getpid()):
        run = create_run_named(cfg, f"crashed-{pid}")
        write_status(run, "running", pid=pid)
        assert load_run(run).state == "interrupted"
        assert [r.state for r in list_runs() if r.path == run] == ["interrupted"]
        delete_run(run)
        assert not run.exists()


def create_run_named(cfg, name: str) -> Path:
    from engine.runs import create_run

    cfg.name = name
    return create_run(cfg)


# --- item 5: temporary files live in the workspace and are tidied at the next start -----------


def test_zips_are_unpacked_inside_the_workspace(tmp_path, lathe_home):
    """issue 16 item 5: a zip used to be unpacked into the system temp folder (79 MB left there
    for good by a killed import); it is now unpacked under $LATHE_HOME/tmp and removed after."""
    import zipfile

    from engine.data import import_dataset, sources

    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train.jsonl", '{"text": "one"}\n{"text": "two"}\n{"text": "three"}\n')
    with sources.unpacked(archive) as folder:
        assert folder.parent == lathe_home / "tmp" and (folder / "train.jsonl").is_file()
    assert not folder.exists()
    import_dataset(archive)
    assert [p.name for p in (lathe_home / "tmp").iterdir()] == []


def test_a_killed_imports_leftovers_are_tidied_at_the_next_start(tmp_path, lathe_home):
    """issue 16 item 5: an import SIGKILLed mid-way leaves its temporary folder behind; the next
    start of the engine (any command) or of the app removes it, and old versions' `datasets/.<id>
    .tmp` folders too. A temporary folder a live process holds, and anything not named like
    Lathe's own temporary files, are left alone."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from engine import workspace

    big = tmp_path / "big.jsonl"
    with open(big, "w") as fh:
        for i in range(60_000):
            fh.write(json.dumps({"text": f"Example number {i} about nothing much at all."}) + "\n")
    env = dict(os.environ, LATHE_HOME=str(lathe_home))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "data", "import", str(big)], cwd=root, env=env
    )
    deadline = time.time() + 60
    pools = []
    while not pools and time.time() < deadline and proc.poll() is None:
        pools = list((lathe_home / "tmp").glob("lathe-import-*/*/.pool.jsonl"))
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert pools, "the import finished before it could be killed"
    leftover = pools[0].parent.parent
    assert leftover.is_dir()
    old_style = lathe_home / "datasets" / ".20260101-120000-notes-ab12.tmp"
    old_style.mkdir()
    (old_style / ".pool.jsonl").write_text("{}\n")
    theirs = [lathe_home / "tmp" / "my-file", lathe_home / "datasets" / ".mine.tmp"]
    for p in theirs:
        p.write_text("not Lathe's")
    long_ago = time.time() - 3600
    for p in (leftover, old_style, *theirs):
        os.utime(p, (long_ago, long_ago))
    with workspace.scratch("import") as live:  # a live import in this process: kept
        os.utime(live, (long_ago, long_ago))
        out = subprocess.run(
            [sys.executable, "-m", "engine", "data", "list"], cwd=root, env=env, timeout=60
        )
        assert out.returncode == 0
        assert not leftover.exists() and not old_style.exists()
        assert live.is_dir() and all(p.read_text() == "not Lathe's" for p in theirs)
    assert not any(ds.name.startswith("2") for ds in (lathe_home / "datasets").iterdir())

    # The app tidies at its start too (on a background thread).
    again = lathe_home / "tmp" / "lathe-zip-abc123"
    again.mkdir()
    os.utime(again, (long_ago, long_ago))
    import threading

    from app.__main__ import _tidy_in_background

    _tidy_in_background()
    for t in threading.enumerate():
        if t.name == "lathe-tidy":
            t.join(10)
    assert not again.exists()


# --- item 12: damaged checkpoints, model files and event logs --------------------------------


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(stories_path, tmp_path):
    """issue 16 item 12: a damaged newest checkpoint used to stop resume with a raw safetensors
    error. Resume now passes over it, says so in a warning event, continues from the newest
    checkpoint that reads back whole, and writes the damaged step again."""
    from engine.models.info import check_safetensors
    from tests.helpers import config_for, run_logged

    cfg = config_for(stories_path, tmp_path, iters=4, save_every=2)
    status, run_dir, _ = run_logged(cfg)
    assert status == "completed"
    newest = run_dir / "checkpoints" / "0000004" / "adapters.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) - 100])  # torn by a failing disk, say

    cfg.training.iters = 6
    status, _, rec = run_logged(cfg, run_dir, resume=True)
    assert status == "completed", rec.of("error")
    assert rec.of("started")[0]["resumed_from"] == 2
    warnings = [e["message"] for e in rec.of("log") if e["level"] == "warning"]
    assert any("step 4 is damaged" in w and "adapters.safetensors" in w for w in warnings)
    assert any("Resumed from the checkpoint at step 2" in w for w in warnings)
    check_safetensors(newest)  # written again, whole


def test_model_import_refuses_truncated_or_lying_safetensors(stories_path, tmp_path):
    """issue 16 item 12: `models import` used to accept a truncated safetensors file (or one whose
    header lies about a tensor's size), which then failed mid-training as an internal error. Both
    are refused at import with a message naming the file."""
    import json
    import shutil
    import struct

    from engine.cli import main
    from engine.errors import ModelError
    from engine.models import library

    def copy(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(stories_path, folder)
        return folder

    cut = copy("cut")
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[:-1000])
    with pytest.raises(ModelError, match=r"model\.safetensors is cut short"):
        library.import_model(cut)

    lying = copy("lying")
    (length,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [d * 2 for d in header[name]["shape"]]
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    assert len(raw) == length
    (lying / "model.safetensors").write_bytes(weights[:8] + raw + weights[8 + length :])
    with pytest.raises(ModelError, match=f"tensor '{name}' is said to be"):
        library.import_model(lying)
    assert main(["models", "import", str(lying)]) == 1
    assert library.list_models(include_cache=False) == []
    assert library.import_model(copy("whole")).name == "whole"


def test_a_torn_multibyte_character_in_events_does_not_break_eval(stories_path, tmp_path, capsys):
    """issue 16 item 12: a line of events.jsonl cut in the middle of a multibyte UTF-8 character
    (a crash mid-write) used to make `eval best` and `eval report` fail for good; the line is now
    skipped like any torn line."""
    import json

    from engine.cli import main
    from engine.events import read_log

    run = make_export_run(stories_path, tmp_path / "runs", "torn", checkpoint_steps=(10, 20))
    log = run / "events.jsonl"
    evals = [
        {"event": "eval", "time": 2.5, "step": s, "val_loss": v} for s, v in ((10, 1.4), (20, 1.6))
    ]
    torn = json.dumps({"event": "log", "level": "info", "message": "café"}, ensure_ascii=False)
    torn = torn.encode()
    torn = torn[: torn.index("é".encode()) + 1]
    log.write_bytes(
        log.read_bytes() + "".join(json.dumps(e) + "\n" for e in evals).encode() + torn + b"\n"
    )
    assert [e["event"] for e in read_log(log)][-2:] == ["eval", "eval"]
    assert main(["eval", "best", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 10
    assert main(["eval", "report", str(run), "--out", str(tmp_path / "report.html")]) == 0
    assert (tmp_path / "report.html").stat().st_size > 0
