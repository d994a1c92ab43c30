"""Lathe against `mlx_lm.lora` on three dataset shapes, in one run, as one table.

    python -m bench            (or: python bench/run_all.py)

Shapes: short chat turns, long documents near the context limit, a realistic mixed length spread.
Same model, data and settings for both trainers; see bench/train_vs_mlx_lm.py for the method.
Targets: wall time at most 0.6x mlx_lm's on mixed and short data and no worse on long documents,
peak memory no higher, utilisation reported.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_vs_mlx_lm import SHAPES, build_model, compare, print_table  # noqa: E402


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="lathe-bench-"))
    model = build_model(work)
    rows = []
    for shape in ("short", "mixed", "long"):
        print(f"running {shape}: {SHAPES[shape][2]} ...", file=sys.stderr, flush=True)
        rows.append(compare(model, shape, work=work))
    print(f"Machine: {platform.platform()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print("Model: 6-layer, 384-wide Llama (random weights), LoRA rank 8 on all layers, batch 8, one epoch.\n")
    print_table(rows)
    print()
    for r in rows:
        m, lt = r["mlx_lm"], r["lathe"]
        target = 1.0 if r["shape"] == "long" else 0.6
        ok = lt["seconds"] / m["seconds"] <= target and lt["peak_gb"] <= m["peak_gb"] * 1.0
        print(f"{r['shape']:6} wall {lt['seconds'] / m['seconds']:.2f}x (target <= {target}x), "
              f"peak {lt['peak_gb'] / m['peak_gb']:.2f}x, batching {lt['packing']}: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
