"""Lathe against `mlx_lm.lora` on three dataset shapes, in one run, as one table.

    python -m bench            (or: python bench/run_all.py)
    python -m bench --size 0.5b --scale 4      (a Qwen2.5-0.5B-shaped model, for a GPU)

Shapes: short chat turns, long documents near the context limit, a realistic mixed length spread.
Same model, data and settings for both trainers; see bench/train_vs_mlx_lm.py for the method.
Targets: wall time at most 0.6x mlx_lm's on mixed and short data and no worse on long documents,
peak memory no higher, utilisation reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_vs_mlx_lm import SHAPES, SIZES, build_model, compare, describe_size, print_table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="tiny",
        help="Shape of the model built for the run.",
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="Multiply every shape's number of examples."
    )
    p.add_argument(
        "--shapes", default="short,mixed,long", help="Comma-separated dataset shapes to run."
    )
    p.add_argument(
        "--packing", default="auto", help="Lathe's data.packing (auto, budget, pack, off)."
    )
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lathe-bench-"))
    model = build_model(work, a.size)
    rows = []
    for shape in a.shapes.split(","):
        print(f"running {shape}: {SHAPES[shape][2]} ...", file=sys.stderr, flush=True)
        n = max(8, int(SHAPES[shape][0] * a.scale))
        rows.append(compare(model, shape, n, work=work, packing=a.packing))
        print_table(rows[-1:], with_examples=True, file=sys.stderr)
    import mlx.core as mx

    device = mx.device_info().get("device_name", "") if hasattr(mx, "device_info") else ""
    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        f"{', ' + device if device else ''}, MLX {mx.__version__} ({mx.default_device()})"
    )
    print(f"Model: {describe_size(a.size)}, LoRA rank 8 on all layers, batch 8, one epoch.\n")
    print_table(rows, with_examples=True)
    print()
    for r in rows:
        m, lt = r["mlx_lm"], r["lathe"]
        target = 1.0 if r["shape"] == "long" else 0.6
        ok = lt["seconds"] / m["seconds"] <= target and lt["peak_gb"] <= m["peak_gb"] * 1.0
        print(
            f"{r['shape']:6} wall {lt['seconds'] / m['seconds']:.2f}x (target <= {target}x), "
            f"peak {lt['peak_gb'] / m['peak_gb']:.2f}x, batching {lt['packing']}: {'met' if ok else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
