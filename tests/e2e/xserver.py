"""A private X server with a window manager, for tests and benchmarks of the real window.

`Xvfb -displayfd` picks a free display number itself (other test runs may have X servers of
their own), and openbox manages the windows (focus, activation, decorations) as a desktop would.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field


@dataclass
class XServer:
    display: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def env(self, base: dict | None = None) -> dict:
        """An environment for a Qt program that opens its windows on this server (xcb, not the
        offscreen platform the rest of the test suite uses)."""
        env = dict(os.environ if base is None else base)
        env["DISPLAY"] = self.display
        env["QT_QPA_PLATFORM"] = "xcb"
        env.pop("WAYLAND_DISPLAY", None)
        return env

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.processes.clear()


def missing() -> str | None:
    """Why a real-window run cannot happen here (None when it can)."""
    if shutil.which("Xvfb") is None:
        return "Xvfb is not installed (apt-get install xvfb openbox; .ci/run does this)"
    return None


def qt_cannot_start(server: XServer) -> str | None:
    """Why Qt's xcb platform cannot open a window on `server` (a missing X library), or None."""
    import sys

    probe = "from PySide6.QtWidgets import QApplication; QApplication(['probe'])"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=server.env(), capture_output=True, text=True, timeout=60
    )
    if out.returncode == 0:
        return None
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    return "Qt cannot use the X server: " + " ".join(lines[-3:])[:400]


def start(width: int = 1440, height: int = 900, timeout: float = 20.0) -> XServer:
    """Start Xvfb (screen WIDTHxHEIGHTx24) and openbox on it; raises RuntimeError on failure."""
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(write_fd),
            "-screen",
            "0",
            f"{width}x{height}x24",
            "-nolisten",
            "tcp",
        ],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    server = XServer("", [xvfb])
    try:
        number = b""
        deadline = time.monotonic() + timeout
        while not number.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([read_fd], [], [], max(0.0, left))
            if not ready:
                raise RuntimeError("Xvfb did not report a display number in time")
            chunk = os.read(read_fd, 16)
            if not chunk:
                raise RuntimeError(f"Xvfb exited (code {xvfb.poll()}) before it was ready")
            number += chunk
        server.display = f":{int(number.strip())}"
        if shutil.which("openbox"):
            server.processes.append(
                subprocess.Popen(
                    ["openbox", "--sm-disable"],
                    env=server.env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            _wait_for_window_manager(server, deadline)
        return server
    except BaseException:
        server.stop()
        raise
    finally:
        os.close(read_fd)


def _wait_for_window_manager(server: XServer, deadline: float) -> None:
    """openbox announces itself on the root window (_NET_SUPPORTING_WM_CHECK) when it manages."""
    if shutil.which("xprop") is None:
        time.sleep(1.0)
        return
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["xprop", "-root", "_NET_SUPPORTING_WM_CHECK"],
            env=server.env(),
            capture_output=True,
            text=True,
        )
        if "window id" in out.stdout:
            return
        time.sleep(0.1)
    raise RuntimeError("openbox did not start managing windows in time")
