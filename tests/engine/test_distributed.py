"""Data-parallel training under mlx.launch (ring backend on 127.0.0.1; works on the CPU build)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.training.distributed import Host, describe_lost_peer, read_hosts, write_hostfile
from tests.helpers import variable_chat_data

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = shutil.which("mlx.launch") or str(Path(sys.executable).with_name("mlx.launch"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(LAUNCH).exists(), reason="mlx.launch is not installed"),
]


def _train_args(model: Path, data: Path, iters: int) -> list[str]:
    return [
        "--model",
        str(model),
        "--data",
        str(data),
        "--iters",
        str(iters),
        "--batch-size",
        "4",
        "--steps-per-report",
        "1",
        "--steps-per-eval",
        "5",
        "--save-every",
        "5",
        "--learning-rate",
        "2e-3",
        "--events",
    ]


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _env(home: Path) -> dict:
    """Environment of a launched run: its own workspace (rank 1's scratch is under its tmp/).

    Not its own TMPDIR: MLX's CPU backend builds each fused kernel of a compiled step with the
    system C++ compiler and caches the library under $TMPDIR/mlx/; a fresh TMPDIR made each of the
    three processes here compile ~30 kernels again (a stall of 80-190 s at step 5, the first
    compiled step, on a loaded 2-core machine), where a user's runs share one cache.
    """
    # Two ranks share this machine's cores: one BLAS thread each, or they fight over them.
    env = dict(os.environ, LATHE_HOME=str(home), PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1")
    env.pop("MLX_RANK", None)
    return env


def test_two_ranks_match_one_process_and_write_one_run_folder(tiny_chat_model, tmp_path):
    data = variable_chat_data(tmp_path / "chat.jsonl", n=40)
    args = _train_args(tiny_chat_model, data, iters=10)

    single_home, multi_home = tmp_path / "single", tmp_path / "multi"
    one = subprocess.run(
        [sys.executable, "-m", "engine", "train", *args],
        cwd=ROOT,
        env=_env(single_home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            LAUNCH,
            "--hosts",
            "127.0.0.1",
            "-n",
            "2",
            "--backend",
            "ring",
            "--starting-port",
            "35311",
            "--",
            sys.executable,
            "-m",
            "engine",
            "train",
            *args,
        ],
        cwd=ROOT,
        # With the watchdog's default patience (60 s): no step may look like a lost peer.
        env=_env(multi_home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    single, multi = _events(one.stdout), _events(two.stdout)
    assert multi and multi[-1]["event"] == "finished" and multi[-1]["status"] == "completed", (
        two.stdout[-2000:]
    )
    assert next(e for e in multi if e["event"] == "started")["config"]["ranks"] == 2
    # Only rank 0 prints events: one started and one finished event in all.
    assert [e["event"] for e in multi].count("started") == 1 and [e["event"] for e in multi].count(
        "finished"
    ) == 1
    want = {e["step"]: e["train_loss"] for e in single if e["event"] == "progress"}
    got = {e["step"]: e["train_loss"] for e in multi if e["event"] == "progress"}
    assert got.keys() == want.keys()
    # Equal up to float32 summation order (each rank sums its own rows first): relative 1e-4.
    assert max(abs(got[s] - want[s]) / max(1.0, abs(want[s])) for s in want) < 1e-4, (got, want)
    val_one = [e["val_loss"] for e in single if e["event"] == "eval"]
    val_two = [e["val_loss"] for e in multi if e["event"] == "eval"]
    # Summing two half-batch gradients rounds differently from one full-batch sum; Adam amplifies
    # that a little each step, so later validation losses agree to a few 1e-3, not 1e-4.
    assert abs(val_one[0] - val_two[0]) < 1e-5
    assert max(abs(a - b) for a, b in zip(val_one, val_two)) < 5e-3, (val_one, val_two)
    assert len(list((multi_home / "runs").iterdir())) == 1
    assert (multi_home / "tmp").is_dir()  # where rank 1 kept its scratch folder
    assert not list(
        (multi_home / "tmp").glob("lathe-rank1-*")
    )  # rank 1's scratch folder is removed


def _rank_pids(rank: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"MLX_RANK={rank}".encode() in env and b"engine" in cmd and b"train" in cmd:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(
    not Path("/proc/self/environ").exists(), reason="finds rank processes through /proc"
)
def test_a_killed_rank_ends_the_run_with_a_clear_error(tiny_chat_model, tmp_path):
    data = variable_chat_data(tmp_path / "chat.jsonl", n=40)
    args = _train_args(tiny_chat_model, data, iters=100000)
    launcher = subprocess.Popen(
        [
            LAUNCH,
            "--hosts",
            "127.0.0.1",
            "-n",
            "2",
            "--backend",
            "ring",
            "--starting-port",
            "35411",
            "--",
            sys.executable,
            "-m",
            "engine",
            "train",
            *args,
        ],
        cwd=ROOT,
        env=_env(tmp_path / "home"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        seen = []
        for line in launcher.stdout:
            if line.startswith("{"):
                seen.append(json.loads(line))
                if seen[-1]["event"] == "progress" and seen[-1]["step"] >= 3:
                    break
        victims = _rank_pids(1)
        assert victims, "rank 1 not found"
        killed = time.time()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        rest = [json.loads(line) for line in launcher.stdout if line.startswith("{")]
        launcher.wait(timeout=60)
        elapsed = time.time() - killed
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert elapsed < 30
    error = next(e for e in rest if e["event"] == "error")
    assert error["kind"] == "distributed" and "rank 1 on 127.0.0.1" in error["message"]
    assert rest[-1]["event"] == "finished" and rest[-1]["status"] == "failed"
    run_dir = next((tmp_path / "home" / "runs").iterdir())
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"


def test_hosts_file_becomes_the_launchers_host_file(tmp_path):
    (tmp_path / "hosts.yaml").write_text(
        "- mac-studio.local\n- ssh: me@macbook.local\n  ips: [10.0.0.2]\n"
    )
    hosts = read_hosts(tmp_path / "hosts.yaml")
    assert hosts == [Host("mac-studio.local", []), Host("me@macbook.local", ["10.0.0.2"])]
    out = json.loads(write_hostfile(hosts, tmp_path / "h.json").read_text())
    assert out == [
        {"ssh": "mac-studio.local", "ips": []},
        {"ssh": "me@macbook.local", "ips": ["10.0.0.2"]},
    ]
    (tmp_path / "bad.yaml").write_text("hosts: 3\n")
    with pytest.raises(Exception, match="lists no hosts"):
        read_hosts(tmp_path / "bad.yaml")


def test_lost_peer_message_names_the_neighbouring_hosts(tmp_path, monkeypatch):
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["10.0.0.1:5000"], ["10.0.0.2:5000"], ["10.0.0.3:5000"]]))
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    assert describe_lost_peer(0, 3) == "rank 1 on 10.0.0.2 or rank 2 on 10.0.0.3"


def test_a_run_bundle_trains_unchanged_from_anywhere(stories_path, tmp_path, lathe_home):
    from engine.config import RunConfig
    from engine.export.bundle import hub_repo_of, make_bundle

    data = variable_chat_data(tmp_path / "chat.jsonl", n=20)
    cfg = RunConfig()
    cfg.model.path, cfg.data.path = str(stories_path), str(data)
    cfg.training.iters, cfg.training.batch_size, cfg.training.report_utilisation = 3, 2, False
    (tmp_path / "run.yaml").write_text(cfg.to_yaml())
    bundle = make_bundle(tmp_path / "run.yaml", tmp_path / "elsewhere" / "bundle")
    assert bundle.model == "model" and (bundle.path / "model" / "model.safetensors").exists()
    assert bundle.examples["train"] + bundle.examples["valid"] == 20
    assert (
        hub_repo_of("mlx-community/Qwen2.5-0.5B-Instruct-4bit")
        == "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    )
    assert (
        hub_repo_of("/x/hub/models--mlx-community--Qwen2.5-0.5B/snapshots/abc")
        == "mlx-community/Qwen2.5-0.5B"
    )
    # Run from an unrelated working directory: the bundle's relative paths still resolve.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "train",
            "--config",
            str(bundle.path / "config.yaml"),
            "--events",
        ],
        cwd=tmp_path,
        env=dict(os.environ, LATHE_HOME=str(lathe_home), PYTHONPATH=str(ROOT)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert _events(out.stdout)[-1]["status"] == "completed"
