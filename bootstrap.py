#!/usr/bin/env python3
"""Set up Lathe in a local virtual environment, then launch it or run its tests.

    python3 bootstrap.py launch      # create .venv if needed, install, open the app
    python3 bootstrap.py test        # create .venv if needed, install with dev tools, lint + tests

Only the Python standard library is used here, so this works on a fresh machine with Python 3.11+.
The environment is reinstalled only when pyproject.toml changes (a stamp file records its hash).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".bootstrap-stamp"
# Debian/Ubuntu's OpenBLAS: MLX's CPU backend runs its matmuls ~30x faster with it preloaded.
OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3")


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_env(extras: str) -> Path:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs under any python3
        sys.exit(f"Lathe needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    py = venv_python()
    if not py.exists():
        print(f"Creating a virtual environment in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    if not STAMP.exists() or STAMP.read_text().strip() != digest:
        print("Installing Lathe and its dependencies (first run takes a minute) ...", flush=True)
        quiet = ["-q"] if os.environ.get("CI") else []
        subprocess.check_call([str(py), "-m", "pip", "install", *quiet, "--upgrade", "pip"])
        target = f".[{extras}]" if extras else "."
        subprocess.check_call([str(py), "-m", "pip", "install", *quiet, "-e", target], cwd=ROOT)
        STAMP.write_text(digest)
    return py


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    if sys.platform.startswith("linux") and OPENBLAS.exists() and "LD_PRELOAD" not in env:
        env["LD_PRELOAD"] = str(OPENBLAS)
    return env


def test_workers(rest: list[str]) -> list[str]:
    """Two pytest-xdist workers for a whole run (suite or tier): the 2-core CI machine runs the
    full suite in about 7.5 minutes instead of 10.5, since most tests spend much of their time in
    one thread (process starts, Python, the window). Not when the run names test files (the edit
    loop: workers would only add their start-up), nor when `-n`/`-p no:xdist` is given;
    LATHE_TEST_WORKERS sets the number (0: one process)."""
    if any(a == "-n" or a.startswith(("-n", "--numprocesses")) or a == "no:xdist" for a in rest):
        return []
    if any((ROOT / a.split("::")[0]).exists() for a in rest if not a.startswith("-")):
        return []
    n = os.environ.get("LATHE_TEST_WORKERS", "2")
    return [] if n in ("0", "1") else ["-n", n]


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "launch"
    rest = argv[1:]
    if command == "launch":
        py = ensure_env("")
        return subprocess.call([str(py), "-m", "app", *rest], cwd=ROOT, env=child_env())
    if command == "test":
        py = ensure_env("dev")
        env = child_env()
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
        lint = subprocess.call([str(py), "-m", "ruff", "check", "."], cwd=ROOT, env=env)
        if lint != 0:
            print("ruff check failed; fix the lint errors above.", file=sys.stderr)
            return lint
        fmt = subprocess.call([str(py), "-m", "ruff", "format", "--check", "."], cwd=ROOT, env=env)
        if fmt != 0:
            print("ruff format --check failed; run `.venv/bin/ruff format .`.", file=sys.stderr)
            return fmt
        return subprocess.call(
            [str(py), "-m", "pytest", *test_workers(rest), *rest], cwd=ROOT, env=env
        )
    if command == "setup":
        ensure_env("dev")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
