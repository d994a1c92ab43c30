"""Private by construction: no network unless asked, no code from model folders, safe YAML, names that
stay inside the workspace, files only the user can read."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import events
from engine.runs import create_run, load_run
from tests.helpers import make_config, variable_chat_data

ROOT = Path(__file__).resolve().parents[2]


class NetworkBlocked:
    """Outbound connections and name lookups raise, and each attempt is recorded."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.attempts: list[tuple] = []
        for owner, name in (
            (socket.socket, "connect"),
            (socket.socket, "connect_ex"),
            (socket.socket, "sendto"),
            (socket, "create_connection"),
            (socket, "getaddrinfo"),
        ):
            mp.setattr(owner, name, self._refuse(name))
        # The net really catches (the test would prove nothing otherwise).
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", 9), timeout=1)
        with socket.socket() as s, pytest.raises(OSError):
            s.connect(("127.0.0.1", 9))
        assert [a[0] for a in self.attempts] == ["create_connection", "connect"]
        self.attempts.clear()

    def _refuse(self, name):
        def blocked(*args, **kwargs):
            self.attempts.append((name, repr(args[-1] if args else kwargs)[:200]))
            raise OSError(errno.ENETUNREACH, f"network blocked by the privacy test ({name})")

        return blocked


@pytest.fixture(scope="module")
def offline_flow(tiny_chat_model, tmp_path_factory):
    """Import a dataset, train, chat with the result and fuse it, with the network blocked throughout."""
    from engine.chat import ChatModel, ChatSession, ChatSettings
    from engine.data import import_dataset
    from engine.export import fuse
    from engine.train import run

    tmp = tmp_path_factory.mktemp("offline")
    old_umask = os.umask(0o022)  # a typical umask: files Lathe writes must still end up private
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATHE_HOME", str(tmp / "home"))
        mp.delenv("HF_HUB_OFFLINE", raising=False)  # the engine itself must not reach out
        net = NetworkBlocked(mp)
        try:
            report = import_dataset(variable_chat_data(tmp / "source" / "support.jsonl", n=24))
            cfg = make_config(tiny_chat_model, Path(report.dataset_path), iters=6, save_every=3)
            cfg.data.max_seq_length = 64
            run_dir = create_run(cfg)
            log = events.EventLog(run_dir / "events.jsonl")
            status = run(cfg, run_dir, log)
            log.close()
            model = ChatModel.load(str(tiny_chat_model), adapter=str(run_dir))
            reply = [
                e
                for e in ChatSession(model).send("Hello", ChatSettings(temperature=0, max_tokens=4))
            ]
            model.close()
            fused = fuse(str(run_dir), tmp / "fused", check=True)
        finally:
            os.umask(old_umask)
        yield {
            "home": tmp / "home",
            "dataset": Path(report.dataset_path),
            "run_dir": run_dir,
            "status": status,
            "reply": reply,
            "fused": fused,
            "attempts": list(net.attempts),
        }


def test_import_train_chat_and_export_make_no_connection(offline_flow):
    assert offline_flow["status"] == "completed"
    assert offline_flow["reply"] and offline_flow["reply"][-1].kind == "done"
    assert offline_flow["fused"].path.is_dir()
    assert offline_flow["attempts"] == []


def test_files_lathe_writes_are_readable_by_the_user_only(offline_flow):
    checked = 0
    for root in (offline_flow["run_dir"], offline_flow["dataset"]):
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o077 == 0, f"{path} is readable by others ({oct(mode)})"
            checked += 1
    assert checked > 10
    home = offline_flow["home"]
    for folder in (home, home / "runs", home / "datasets"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


SITE = r"""
import atexit, json, os, socket
_log = os.environ["LATHE_NET_LOG"]
def _record(what):
    def blocked(*args, **kwargs):
        with open(_log, "a") as fh:
            fh.write(json.dumps({"attempt": what, "target": repr(args[-1] if args else kwargs)[:200]}) + "\n")
        raise OSError(101, "network blocked by the privacy test")
    return blocked
socket.socket.connect = _record("connect")
socket.socket.connect_ex = _record("connect_ex")
socket.create_connection = _record("create_connection")
socket.getaddrinfo = _record("getaddrinfo")
@atexit.register
def _env():
    with open(_log, "a") as fh:
        fh.write(json.dumps({"env": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")}}) + "\n")
"""


@pytest.mark.slow
def test_the_training_worker_stays_offline_with_hub_telemetry_off(
    tiny_chat_model, tmp_path, lathe_home
):
    """The worker process as the app starts it, with a sitecustomize that records any connection."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    netlog = tmp_path / "net.jsonl"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
    }
    env.update(LATHE_HOME=str(lathe_home), LATHE_NET_LOG=str(netlog), PYTHONPATH=str(site))
    data = variable_chat_data(tmp_path / "chat.jsonl", n=20)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "train",
            "--model",
            str(tiny_chat_model),
            "--data",
            str(data),
            "--iters",
            "3",
            "--max-seq-length",
            "48",
            "--events",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["status"] == "completed"
    records = [json.loads(line) for line in netlog.read_text().splitlines()]
    assert [r for r in records if "attempt" in r] == []
    assert records[-1]["env"] == {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_training_never_downloads_a_model_it_does_not_have(tmp_path, monkeypatch):
    from engine.train import run

    net = NetworkBlocked(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = make_config(
        Path("mlx-community") / "not-downloaded-4bit", variable_chat_data(tmp_path / "c.jsonl", n=8)
    )
    cfg.model.path = "mlx-community/not-downloaded-4bit"
    rec = events.Recorder()
    assert run(cfg, create_run(cfg), rec) == "failed"
    error = rec.of("error")[-1]
    assert (
        error["kind"] == "model"
        and "not on this Mac" in error["message"]
        and "Download" in error["hint"]
    )
    assert net.attempts == []


# -- no code from model folders ----------------------------------------------------------------

MARKER_CODE = textwrap.dedent("""
    from pathlib import Path
    Path({marker!r}).write_text("code from the model folder ran")
    class EvilConfig: pass
    class EvilModel: pass
    class EvilTokenizer: pass
""")


def _folder_with_code(src: Path, dst: Path, marker: Path, **config_extra) -> Path:
    shutil.copytree(src, dst)
    for name in ("modeling_evil.py", "configuration_evil.py", "tokenization_evil.py"):
        (dst / name).write_text(MARKER_CODE.format(marker=str(marker)))
    cfg = json.loads((dst / "config.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
    }
    cfg.update(config_extra)
    (dst / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((dst / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (dst / "tokenizer_config.json").write_text(json.dumps(tok))
    return dst


def test_no_code_from_a_model_folder_is_ever_executed(tiny_chat_model, tmp_path):
    from engine.chat import ChatModel
    from engine.models import inspect_model
    from engine.train import run

    # The payload is live: running the folder's code would leave the marker.
    probe = tmp_path / "probe-marker"
    exec(MARKER_CODE.format(marker=str(probe)), {})
    assert probe.exists()

    marker = tmp_path / "marker"
    folder = _folder_with_code(tiny_chat_model, tmp_path / "with-code", marker)
    inspect_model(folder)
    cfg = make_config(folder, variable_chat_data(tmp_path / "c.jsonl", n=12), iters=2)
    cfg.data.max_seq_length = 48
    rec = events.Recorder()
    status = run(cfg, create_run(cfg), rec)
    assert status == "completed", rec.of("error")
    ChatModel.load(str(folder)).close()

    # mlx-lm's own hook for custom architectures (config "model_file") is refused, not run.
    custom = _folder_with_code(
        tiny_chat_model, tmp_path / "custom-arch", marker, model_file="modeling_evil.py"
    )
    rec = events.Recorder()
    assert run(cfg, create_run(cfg), rec) == "completed"  # the first folder still trains
    cfg.model.path = str(custom)
    assert run(cfg, create_run(cfg), rec) == "failed"
    error = rec.of("error")[-1]
    assert error["kind"] == "model" and "custom" in error["message"]
    assert not marker.exists()


class _OpensAFile:
    """Unpickling this creates a file: what a malicious pytorch_model.bin can do, and worse."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_training_refuses_pickle_weights_without_loading_them(tiny_chat_model, tmp_path):
    from engine.train import run

    probe = tmp_path / "probe-marker"
    pickle.loads(pickle.dumps(_OpensAFile(str(probe)))).close()
    assert probe.exists()  # the payload is live

    marker = tmp_path / "marker"
    folder = tmp_path / "pickle-only"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_chat_model / name, folder / name)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_OpensAFile(str(marker))))
    cfg = make_config(folder, variable_chat_data(tmp_path / "c.jsonl", n=8), iters=2)
    rec = events.Recorder()
    run_dir = create_run(cfg)
    assert run(cfg, run_dir, rec) == "failed"
    error = rec.of("error")[-1]
    assert (
        error["kind"] == "model"
        and "pickle" in error["message"]
        and "safetensors" in error["message"]
    )
    assert load_run(run_dir).state == "failed"
    assert not marker.exists()


# -- YAML --------------------------------------------------------------------------------------

EVIL_YAML = "training: !!python/object/apply:os.system ['touch {marker}']\nmodel:\n  path: m\n"


def test_yaml_with_python_tags_is_rejected_cleanly(tmp_path, lathe_home, capsys):
    from engine import cli
    from engine.config import ConfigError, RunConfig
    from engine.workspace import load_settings, settings_path

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.yaml"
    evil.write_text(EVIL_YAML.format(marker=marker))
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.load(evil)
    assert cli.main(["train", "--config", str(evil)]) == 1
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "Traceback" not in err
    settings_path().write_text(EVIL_YAML.format(marker=marker))
    assert load_settings() == {}
    assert not marker.exists()


def test_engine_and_app_load_yaml_safely_and_never_trust_remote_code():
    """A source scan: no yaml.load/unsafe_load/full loaders, no trust_remote_code=True, no pickle."""
    import re

    patterns = {
        "unsafe YAML": re.compile(
            r"yaml\.(load|unsafe_load|full_load|load_all)\(|yaml\.(Unsafe|Full)?Loader\b"
        ),
        "trust_remote_code": re.compile(r"trust_remote_code\"?\s*[:=]\s*True"),
        "pickle": re.compile(
            r"^\s*(import pickle|from pickle|import torch)|torch\.load\(|pickle\.loads?\(", re.M
        ),
    }
    sources = [p for folder in ("engine", "app") for p in (ROOT / folder).rglob("*.py")]
    assert len(sources) > 30
    found = [
        f"{p.relative_to(ROOT)}: {what}"
        for p in sources
        for what, rx in patterns.items()
        if rx.search(p.read_text(encoding="utf-8"))
    ]
    assert found == []


# -- names stay inside the workspace -----------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../x", "..", "/etc/passwd", "a/../../b", "..\\..\\x", "~/x", ""]
)
def test_names_cannot_escape_the_workspace(name, lathe_home, tmp_path):
    from engine.workspace import inside, runs_dir, safe_name

    cleaned = safe_name(name)
    assert cleaned and "/" not in cleaned and "\\" not in cleaned and not cleaned.startswith(".")
    assert inside(lathe_home, name).parent == lathe_home.resolve()

    cfg = make_config(Path("m"), Path("d"))
    cfg.name = name
    for path in (create_run(cfg), create_run(cfg, run_id=name or "x")):
        assert path.resolve().parent == runs_dir().resolve()


def test_a_dataset_name_stays_inside_the_workspace(lathe_home, tmp_path):
    from engine.data import import_dataset
    from engine.workspace import datasets_dir

    report = import_dataset(variable_chat_data(tmp_path / "c.jsonl", n=6), name="../../../outside")
    assert Path(report.dataset_path).resolve().parent == datasets_dir().resolve()
    assert not (tmp_path / "outside").exists() and not any(lathe_home.parent.glob("*outside*"))


def test_delete_run_leaves_folders_outside_the_workspace_alone(lathe_home, tmp_path):
    from engine.runs import RunError, delete_run

    outside = tmp_path / "not-a-lathe-run"
    outside.mkdir()
    (outside / "config.yaml").write_text(make_config(Path("m"), Path("d")).to_yaml())
    with pytest.raises(RunError):
        delete_run(outside)
    assert (outside / "config.yaml").exists()
