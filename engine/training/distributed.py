"""Data-parallel training with MLX's own distributed stack (`mlx.launch`, `mx.distributed`).

Lathe does not run its own cluster: `python -m engine train` started by `mlx.launch` (ring backend
over Ethernet or Thunderbolt, MPI where installed) finds its rank here. Every rank takes its rows
of every batch and gradients are summed across ranks (engine.training.loop); only rank 0 writes the run
folder and prints events. `--hosts hosts.yaml` builds the launcher's host file and starts the run
across the listed Macs over ssh.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.config import ConfigError, read_yaml
from engine.errors import LatheError


class DistributedError(LatheError):
    kind = "distributed"


@dataclass
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """True in a process started by `mlx.launch` (or MPI) as one of several ranks."""
    return (
        "MLX_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ or "PMI_RANK" in os.environ
    )


def world() -> World:
    """This process's rank and the number of ranks (1 and 0 when not launched distributed)."""
    if not launched():
        return World()
    import mlx.core as mx

    group = mx.distributed.init()
    return World(group.rank(), group.size())


def peer_hosts() -> list[str]:
    """Host (address) of each rank, from the launcher's host file; empty when unknown."""
    path = os.environ.get("MLX_HOSTFILE")
    try:
        data = json.loads(Path(path).read_text()) if path else []
    except (OSError, ValueError):
        return []
    hosts = []
    for entry in data:
        addr = entry[0] if isinstance(entry, list) and entry else str(entry)
        hosts.append(str(addr).rsplit(":", 1)[0])
    return hosts


def is_peer_lost(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("[ring]" in text or "peer" in text or "mpi" in text)


def describe_lost_peer(rank: int, size: int) -> str:
    """Which machines a rank talks to in the ring, for an error that names them."""
    hosts = peer_hosts()
    neighbours = sorted({(rank - 1) % size, (rank + 1) % size} - {rank})
    names = [f"rank {r}" + (f" on {hosts[r]}" if r < len(hosts) else "") for r in neighbours]
    return " or ".join(names) if names else "another rank"


# ---------------------------------------------------------------------------------------------
# Starting a run across several Macs


@dataclass
class Host:
    ssh: str  # what `ssh` connects to (a hostname, user@host or an ~/.ssh/config alias)
    ips: list[str]  # addresses the ring backend uses between the Macs (e.g. Thunderbolt bridge)


def read_hosts(path: str | Path) -> list[Host]:
    """hosts.yaml: a list of hostnames, or of {ssh: NAME, ips: [ADDR, ...]} entries."""
    path = Path(path)
    try:
        data = read_yaml(path.read_text(encoding="utf-8"), path)
    except FileNotFoundError:
        raise DistributedError(
            f"Host list {path} does not exist.", "Create it with one Mac per line."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DistributedError(f"Host list {path} cannot be read: {exc}.") from None
    except ConfigError as exc:
        raise DistributedError(
            str(exc.args[0]), exc.hint or "Fix the file and try again."
        ) from None
    if isinstance(data, dict):
        data = data.get("hosts")
    if not isinstance(data, list) or not data:
        raise DistributedError(
            f"{path} lists no hosts.",
            "Write a list such as:\n- ssh: mac-studio.local\n  ips: [192.168.1.20]",
        )
    hosts = []
    for i, entry in enumerate(data, 1):
        if isinstance(entry, str):
            hosts.append(Host(entry, []))
        elif isinstance(entry, dict) and isinstance(entry.get("ssh"), str):
            ips = entry.get("ips") or []
            if isinstance(ips, str):
                ips = [ips]
            hosts.append(Host(entry["ssh"], [str(ip) for ip in ips]))
        else:
            raise DistributedError(
                f"{path}, entry {i}: expected a hostname or {{ssh: NAME, ips: [...]}}.",
                "Fix that entry.",
            )
    return hosts


def write_hostfile(hosts: list[Host], path: Path) -> Path:
    """The JSON host file `mlx.launch --hostfile` reads."""
    path.write_text(json.dumps([{"ssh": h.ssh, "ips": h.ips} for h in hosts], indent=2))
    return path


def launch_command(
    hostfile: Path, train_args: list[str], backend: str = "ring", python: str | None = None
) -> list[str]:
    """The `mlx.launch` command that runs `python -m engine train ARGS` on every host."""
    launcher = shutil.which("mlx.launch") or str(Path(sys.executable).with_name("mlx.launch"))
    return [
        launcher,
        "--hostfile",
        str(hostfile),
        "--backend",
        backend,
        "--python",
        python or sys.executable,
        "--cwd",
        os.getcwd(),
        "--",
        "-m",
        "engine",
        "train",
        *train_args,
    ]


def check_hosts(hosts: list[Host], timeout: float = 10.0) -> list[tuple[str, bool, str]]:
    """(host, reachable, detail) for each host: password-less ssh and the same Python path."""
    results = []
    for h in hosts:
        cmd = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={int(timeout)}",
            h.ssh,
            f"test -x {shlex.quote(sys.executable)} && echo ok",
        ]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5)
            ok = out.returncode == 0 and "ok" in out.stdout
            detail = (
                "reachable"
                if ok
                else (out.stderr.strip().splitlines() or ["no Lathe Python at " + sys.executable])[
                    -1
                ]
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, detail = False, str(exc)
        results.append((h.ssh, ok, detail))
    return results


# ---------------------------------------------------------------------------------------------
# A rank that dies leaves the others blocked inside a collective, in C++, where no Python signal
# handler runs. A watchdog thread ends such a run with an error instead of a hang.

_last_beat = [0.0]


def beat() -> None:
    """Mark progress (called after every step and evaluation batch)."""
    _last_beat[0] = time.monotonic()


class Watchdog:
    """Calls `on_hang(seconds)` once when no heartbeat came for `timeout` seconds, or for `after_signal`
    seconds after SIGTERM/SIGINT arrived (mlx.launch terminates the other ranks when one dies).

    The signal is seen through a wakeup fd, written by the C-level handler even while the main
    thread is blocked, so the watchdog reacts although the Python handler cannot run yet.
    """

    def __init__(self, on_hang, timeout: float | None = None, after_signal: float = 5.0):
        self.on_hang = on_hang
        self.timeout = timeout or float(os.environ.get("LATHE_PEER_TIMEOUT", "60"))
        self.after_signal = after_signal
        self.signalled_at: float | None = None
        self._done = threading.Event()

    def start(self) -> Watchdog:
        beat()
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        os.set_blocking(read_fd, False)
        try:
            signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:  # not the main thread (in-process tests); watch heartbeats only
            os.close(write_fd)
            os.close(read_fd)
            read_fd = None
        threading.Thread(
            target=self._watch, args=(read_fd,), name="lathe-watchdog", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _watch(self, read_fd) -> None:
        while not self._done.wait(0.5):
            if read_fd is not None:
                try:
                    if os.read(read_fd, 64) and self.signalled_at is None:
                        self.signalled_at = time.monotonic()
                except BlockingIOError:
                    pass
            now = time.monotonic()
            stalled = now - _last_beat[0]
            hung = stalled > self.timeout
            if self.signalled_at is not None:  # told to stop, and no step finished since
                hung = hung or (
                    now - self.signalled_at > self.after_signal and stalled > self.after_signal
                )
            if hung:
                self._done.set()
                self.on_hang(stalled)
