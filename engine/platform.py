"""Platform facts and tweaks that the engine needs, guarded so every platform runs the same code."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

OPENBLAS_CANDIDATES = (
    Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"),
    Path("/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3"),
)


def openblas_path() -> Path | None:
    """Debian/Ubuntu's OpenBLAS, when installed (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    return next((p for p in OPENBLAS_CANDIDATES if p.exists()), None)


def openblas_to_preload(env: dict) -> Path | None:
    """OpenBLAS for a process of MLX's CPU backend to preload, if it does not have it yet.

    MLX's CPU wheel ships a reference BLAS; with OpenBLAS preloaded its matmuls run ~30x faster with
    the same results. Never on macOS (MLX uses Metal and Accelerate there), and never when the user
    opted out with LATHE_NO_OPENBLAS=1.
    """
    if env.get("LATHE_NO_OPENBLAS"):
        return None
    if "libblas" in env.get("LD_PRELOAD", "") or "openblas" in env.get("LD_PRELOAD", ""):
        return None
    return openblas_path()


# glibc's malloc settings for a process that runs MLX's CPU backend. MLX allocates every array
# with malloc and frees it when done (it keeps no buffer cache on the CPU), and glibc serves blocks
# of more than 32 MB with a fresh mmap and gives them back on free: each such array then costs a
# page fault per 4 KB page on first touch (3 us each on the development VM: a 67 MB
# multiplication took 55 ms instead of 9). With mmap off, one arena and no trimming, freed memory
# stays in the process for the next step's arrays of the same sizes, as MLX's Metal and CUDA
# allocators keep theirs. Measured on the bench's long documents (8 x 1,024 tokens, 2 cores):
# 57 s instead of 68 s for 3 steps, resident peak 3.68 GB instead of 3.55 GB
# (bench/PERF_NOTES.md). Only the process's own memory stays: the OS gets it back when it exits.
MALLOC_SETTINGS = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_ARENA_MAX": "1",
}


def cpu_worker_env(environ: dict | None = None) -> dict[str, str]:
    """The environment changes that make a Linux engine worker faster on MLX's CPU backend:
    OpenBLAS preloaded (`openblas_to_preload`) and glibc's malloc kept from returning
    large arrays to the OS (MALLOC_SETTINGS). Empty elsewhere, when already applied, and with
    LATHE_NO_OPENBLAS=1 / LATHE_NO_MALLOC_SETTINGS=1 for each part. Settings the user made win."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or env.get("LATHE_CPU_ENV_APPLIED"):
        return {}
    changes: dict[str, str] = {}
    lib = openblas_to_preload(env)
    if lib is not None:
        preload = env.get("LD_PRELOAD", "")
        changes["LD_PRELOAD"] = f"{lib} {preload}".strip()
    if not env.get("LATHE_NO_MALLOC_SETTINGS"):
        changes.update({k: v for k, v in MALLOC_SETTINGS.items() if k not in env})
    if changes:
        changes["LATHE_CPU_ENV_APPLIED"] = "1"  # applied once: a re-exec does not repeat itself
    return changes


def reexec_with_cpu_env(argv: list[str]) -> None:
    """Replace this process by itself with `cpu_worker_env` applied (same pid), when worthwhile:
    both take effect only when a process starts."""
    changes = cpu_worker_env()
    if not changes:
        return
    env = dict(os.environ, **changes)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "engine", *argv], env)


def total_memory_bytes() -> int:
    """Physical memory of this machine."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


@functools.cache
def _openblas():
    """This process's OpenBLAS (its C functions), when it has one loaded, else None."""
    import ctypes

    try:
        lib = ctypes.CDLL(None)
        lib.openblas_get_num_threads.restype = ctypes.c_int
        lib.openblas_set_num_threads.argtypes = [ctypes.c_int]
        return lib
    except (AttributeError, OSError):
        return None


def blas_threads() -> int | None:
    """How many threads this process's OpenBLAS uses for a call; None without OpenBLAS."""
    lib = _openblas()
    return None if lib is None else int(lib.openblas_get_num_threads())


def set_blas_threads(n: int) -> bool:
    """Make this process's OpenBLAS use `n` threads per call; False without OpenBLAS."""
    lib = _openblas()
    if lib is None:
        return False
    lib.openblas_set_num_threads(int(n))
    return True
