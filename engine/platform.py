"""Platform facts and tweaks that the engine needs, guarded so every platform runs the same code."""

from __future__ import annotations

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


def should_reexec_with_openblas(environ: dict | None = None) -> Path | None:
    """OpenBLAS to preload for MLX's CPU backend, if this process should restart with it.

    MLX's CPU wheel ships a reference BLAS; with OpenBLAS preloaded its matmuls run ~30x faster with
    the same results. Never on macOS (MLX uses Metal and Accelerate there), never twice, and never
    when the user opted out with LATHE_NO_OPENBLAS=1.
    """
    env = os.environ if environ is None else environ
    if env.get("LATHE_NO_OPENBLAS") or env.get("LATHE_OPENBLAS_TRIED"):
        return None
    if "libblas" in env.get("LD_PRELOAD", "") or "openblas" in env.get("LD_PRELOAD", ""):
        return None
    return openblas_path()


def reexec_with_openblas(argv: list[str]) -> None:
    """Replace this process by itself with OpenBLAS preloaded (same pid), when worthwhile."""
    lib = should_reexec_with_openblas()
    if lib is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = f"{lib} {env['LD_PRELOAD']}".strip() if env.get("LD_PRELOAD") else str(lib)
    env["LATHE_OPENBLAS_TRIED"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "engine", *argv], env)


def total_memory_bytes() -> int:
    """Physical memory of this machine."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
