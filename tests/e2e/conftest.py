"""The real window: Xvfb + openbox, and one run of the journey driver (tests/e2e/journey.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e import xserver

ROOT = Path(__file__).resolve().parents[2]
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
JOURNEY_TIMEOUT_S = 420  # the driver gives up at 300 s by itself; this is the last resort


@pytest.fixture(scope="session")
def x_display():
    """A private X server with a window manager; skips (saying why) where Xvfb is absent."""
    why = xserver.missing()
    if why:
        pytest.skip(why)
    server = xserver.start(1440, 900)
    why = xserver.qt_cannot_start(server)
    if why:
        server.stop()
        pytest.skip(why)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def journey(x_display, tmp_path_factory) -> dict:
    """What the journey driver saw, run once in its own process on the X server (QT_QPA_PLATFORM
    =xcb there, whatever the rest of the suite uses)."""
    if not (STORIES / "model.safetensors").exists():
        pytest.skip(f"{STORIES} is absent (it ships beside the repo on dev machines and CI)")
    work = tmp_path_factory.mktemp("journey")
    out = work / "journey.json"
    spawned = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e.journey", str(out), str(work / "w")],
        cwd=ROOT,
        env=x_display.env(),
        capture_output=True,
        text=True,
        timeout=JOURNEY_TIMEOUT_S,
    )
    if not out.exists():
        pytest.fail(f"the journey wrote nothing (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    obs = json.loads(out.read_text())
    obs["spawned_at"] = spawned
    obs["returncode"] = proc.returncode
    obs["stderr_tail"] = proc.stderr[-4000:]
    return obs
