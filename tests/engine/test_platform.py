"""A Linux engine worker's environment for MLX's CPU backend: OpenBLAS and glibc's malloc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import platform

# Resident memory after an MLX array of 400 MB was made and freed, in MB.
_KEPT = """
import mlx.core as mx
x = mx.ones((100_000_000,))
mx.eval(x)
del x
for line in open("/proc/self/status"):
    if line.startswith("VmRSS"):
        print(int(line.split()[1]) // 1024)
"""


def test_worker_env_on_linux_preloads_openblas_and_sets_malloc_once(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    blas = tmp_path / "libblas.so.3"
    monkeypatch.setattr(platform, "openblas_path", lambda: blas)
    env = {"LD_PRELOAD": "/other.so", "MALLOC_ARENA_MAX": "4"}
    changes = platform.cpu_worker_env(env)
    assert changes["LD_PRELOAD"] == f"{blas} /other.so"
    assert changes["MALLOC_MMAP_MAX_"] == "0" and "MALLOC_TRIM_THRESHOLD_" in changes
    assert "MALLOC_ARENA_MAX" not in changes  # the user's own setting stays
    assert platform.cpu_worker_env({**env, **changes}) == {}  # a re-exec does not repeat it
    assert "LD_PRELOAD" not in platform.cpu_worker_env({"LATHE_NO_OPENBLAS": "1"})
    only_blas = platform.cpu_worker_env({"LATHE_NO_MALLOC_SETTINGS": "1"})
    assert not any(k.startswith("MALLOC") for k in only_blas) and "LD_PRELOAD" in only_blas


def test_worker_env_changes_nothing_on_macos(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert platform.cpu_worker_env({}) == {}


def test_app_workers_get_the_settings(monkeypatch):
    from app.controller import worker_env

    monkeypatch.setattr(sys, "platform", "linux")
    env = worker_env({"PATH": os.environ.get("PATH", "")})
    assert env["MALLOC_MMAP_MAX_"] == "0" and env["LATHE_CPU_ENV_APPLIED"] == "1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_glibc_keeps_freed_arrays_in_the_process_with_the_settings():
    """The settings take effect: a freed 400 MB MLX array stays in the process (its pages are
    reused by the next arrays without page faults) instead of going back to the OS."""

    def resident_after_free(extra: dict) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run(
            [sys.executable, "-c", _KEPT],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        return int(out.stdout.strip())

    plain = resident_after_free({})
    kept = resident_after_free(platform.MALLOC_SETTINGS)
    assert kept > plain + 300, (plain, kept)
