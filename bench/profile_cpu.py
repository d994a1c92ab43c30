"""Where a trainer's CPU time goes during its training loop, by kind of work (Linux, `perf`).

    python bench/profile_cpu.py [--shape short] [--trainers lathe,mlx_lm] [--examples 256]

Runs each trainer as bench/train_vs_mlx_lm.py does (same model, data, settings, OpenBLAS), attaches
`perf record` to its process from its first step to its last (`STEP` lines), and sums the samples
by what the code does:

  matmul kernels       OpenBLAS's GEMM inner kernels: the arithmetic the utilisation counts
  matmul packing       OpenBLAS copying operands into its blocked layout and scaling the output
  BLAS threads idle    OpenBLAS's worker thread waiting for work (sched_yield, the scheduler)
  exp (scalar libm)    MLX's CPU exp (softmax, sigmoid, log-sum-exp): one float at a time, each
                       with an out-of-line libm fmaf call
  fused element-wise   kernels MLX compiles for a compiled step (norms, rotary, SiLU, the loss)
  other MLX            MLX's other CPU ops and its scheduler
  Python               the interpreter (graph building, the trainer's loop)
  memory               page faults and malloc/free
  other                the rest (kernel, libc, ...)

Percentages are of all samples on both cores, so "BLAS threads idle" is mostly the second core
spinning while the first does non-matmul work. Needs `perf` (linux-perf) and permission to attach
(root, or kernel.perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GROUPS = (
    "matmul kernels",
    "matmul packing",
    "BLAS threads idle",
    "exp (scalar libm)",
    "fused element-wise",
    "other MLX",
    "Python",
    "memory",
    "other",
)
_IDLE = ("schedule", "sched_yield", "finish_task_switch", "blas_thread_server", "do_syscall_64")
_MEMORY = ("page_fault", "clear_page", "malloc", "free", "handle_mm_fault", "anonymous_page")


def group_of(dso: str, symbol: str) -> str:
    """The kind of work one perf sample (shared object, symbol) belongs to."""
    d, s = dso.lower(), symbol.lower()
    if "blas" in d and "thread_server" not in s:
        return "matmul kernels" if "_kernel_" in s else "matmul packing"
    if any(k in s for k in _IDLE):
        return "BLAS threads idle"
    if "simd::exp" in s or "fmaf" in s:
        return "exp (scalar libm)"
    if d.startswith("lib") and ("_contiguous" in d or "_strided" in d):
        return "fused element-wise"
    if "libmlx" in d:
        return "other MLX"
    if "python" in d:
        return "Python"
    if any(k in s for k in _MEMORY):
        return "memory"
    return "other"


def summarize(report: str) -> dict[str, float]:
    """Percent of samples per group from `perf report --sort dso,symbol --stdio` output."""
    totals: dict[str, float] = defaultdict(float)
    for line in report.splitlines():
        parts = line.split()
        if len(parts) < 3 or not parts[0].endswith("%") or line.lstrip().startswith("#"):
            continue
        try:
            percent = float(parts[0][:-1])
        except ValueError:
            continue
        dso = parts[1]
        symbol = " ".join(parts[3:]) if parts[2].startswith("[") else " ".join(parts[2:])
        totals[group_of(dso, symbol)] += percent
    return {g: round(totals.get(g, 0.0), 1) for g in GROUPS}


def profile(trainer: str, model: str, data: Path, iters: int, max_seq: int, work: Path) -> dict:
    """Run one trainer's bench child, with perf attached from its first to its last step."""
    run_data = work / f"data-{trainer}"
    run_data.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "train.jsonl", run_data / "train.jsonl")
    bench = ROOT / "bench" / "train_vs_mlx_lm.py"
    cmd = [sys.executable, str(bench), "--child", trainer, "--model", model]
    cmd += ["--max-seq-length", str(max_seq), "--data", str(run_data), "--iters", str(iters)]
    cmd += ["--batch-size", "8", "--adapter-out", str(work / f"adapter-{trainer}")]
    env = dict(os.environ, LATHE_HOME=str(work / "home"))
    # The environment the bench gives every trainer: OpenBLAS and glibc's malloc settings.
    from engine.platform import cpu_worker_env

    env.update(cpu_worker_env(env))
    out = work / f"perf-{trainer}.data"
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    perf = None
    steps: list[float] = []
    for line in child.stdout:
        if line.startswith("STEP"):
            _, n, t = line.split()
            steps.append(float(t))
            if perf is None:
                perf = subprocess.Popen(
                    ["perf", "record", "-q", "-F", "999", "-p", str(child.pid), "-o", str(out)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            elif int(n) >= iters:
                perf.send_signal(signal.SIGINT)
    child.wait()
    if perf is not None:
        if perf.poll() is None:
            perf.send_signal(signal.SIGINT)
        perf.wait()
    report = subprocess.run(
        ["perf", "report", "-i", str(out), "--sort", "dso,symbol", "--stdio"],
        capture_output=True,
        text=True,
    ).stdout
    seconds = steps[-1] - steps[0] if len(steps) > 1 else 0.0
    return {"trainer": trainer, "steps": len(steps) - 1, "seconds": round(seconds, 1)} | summarize(
        report
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shape", default="short")
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--trainers", default="lathe,mlx_lm")
    p.add_argument("--model", help="Model folder (default: the bench's tiny model, built here).")
    a = p.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed (Debian: apt-get install linux-perf).")
    from bench.train_vs_mlx_lm import SHAPES, build_model, load_average, make_data

    work = Path(tempfile.mkdtemp(prefix="lathe-cpuprof-"))
    model = a.model or build_model(work, "tiny")
    data = make_data(work / "data", a.examples, shape=a.shape)
    max_seq = SHAPES[a.shape][1]
    print(f"{a.shape}, {a.examples} examples, batch 8; {load_average()} at the start")
    rows = [profile(t, model, data, a.examples // 8, max_seq, work) for t in a.trainers.split(",")]
    print(f"{'':22}" + "".join(f"{r['trainer']:>12}" for r in rows))
    print(f"{'training loop, s':22}" + "".join(f"{r['seconds']:>12}" for r in rows))
    for g in GROUPS:
        print(f"{g:22}" + "".join(f"{r[g]:>11.1f}%" for r in rows))
    print(load_average())


if __name__ == "__main__":
    main()
