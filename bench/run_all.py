"""Lathe against `mlx_lm.lora` and `mlx_lm_lora.train` on four dataset shapes, in one run, as one table.

    python -m bench            (or: python bench/run_all.py)
    python -m bench --scale 0.125 --shapes mixed,qlora      (a quick, small run)
    python -m bench --size 0.5b --scale 4      (a Qwen2.5-0.5B-shaped model, for a GPU)
    python -m bench --quick      (every shape and trainer, 1/8 of the examples, the qlora row on
                                  the float32 base only: ~15 minutes on a quiet 2-core CPU)

Shapes: short chat turns, long documents near the context limit, a realistic mixed length spread
(all on a random-weight model built here, see --size), and qlora: the real
SmolLM2-135M-Instruct 4-bit model on the bundled bank-support sample. Same model, data and settings
for every trainer; see bench/train_vs_mlx_lm.py for the method. The qlora shape runs once per
--qlora-base: "as-is" (each trainer on the 4-bit model as stored; on a CPU MLX's 4-bit matmuls
with float16 scales take minutes per step, so each trainer is stopped after --timeout seconds and
reported with the steps it finished) and "float32" (every trainer's base dequantized to float32
after loading, which is what Lathe does by itself on a CPU).
Targets (issue 21), each a ratio within this run: wall time at most 0.5x mlx_lm.lora's on short
and mixed data, 0.75x on long documents, 0.8x on qlora, with validation loss no worse than the
peer's; never slower than mlx_lm_lora; peak memory no higher than either peer; utilisation at
least 45% on the float rows. The second peer needs `pip install 'mlx-lm-lora==5.10.2'` (extra
`bench`); without it its rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_vs_mlx_lm import (  # noqa: E402
    REAL_MODEL,
    SHAPES,
    SIZES,
    TRAINERS,
    available_trainers,
    build_model,
    compare,
    describe_size,
    load_average,
    print_table,
)

TARGETS = {"short": 0.5, "mixed": 0.5, "long": 0.75, "qlora": 0.8}


def verdict(r: dict) -> str:
    """One line: the row's ratios against the issue's targets (or why they cannot be judged)."""
    lt, m, p = r.get("lathe"), r.get("mlx_lm"), r.get("mlx_lm_lora")
    label = f"{r['shape']:6}" + (f" ({r['base']} base)" if r["shape"] == "qlora" else "")
    if lt is None or lt.get("stopped"):
        return f"{label}: Lathe did not finish; no ratio"
    parts, ok = [], True
    for name, peer, target in (("mlx_lm", m, TARGETS[r["shape"]]), ("mlx_lm_lora", p, 1.0)):
        if peer is None:
            continue
        if peer.get("stopped"):
            parts.append(
                f"{name} stopped with {peer['steps_finished']} of {lt['steps']} step(s) after "
                f"{peer['training_s']:.0f} s of training (Lathe: all in {lt['seconds']:.0f} s)"
            )
            continue
        wall = lt["seconds"] / peer["seconds"]
        peak = lt["peak_gb"] / peer["peak_gb"]
        loss = lt.get("val_loss", 0) - peer.get("val_loss", 0)
        good = wall <= target and peak <= 1.0 and loss <= 0.01
        ok &= good
        parts.append(
            f"vs {name} wall {wall:.2f}x (target <= {target}x), peak {peak:.2f}x, "
            f"val loss {loss:+.3f}"
        )
    if r["shape"] != "qlora" or r["base"] == "float32":
        u = lt["utilisation"]
        ok &= u >= 0.45 or r["shape"] == "qlora"
        parts.append(f"utilisation {u:.0%}" + ("" if r["shape"] == "qlora" else " (target >= 45%)"))
    return (
        f"{label}: " + "; ".join(parts) + f"; batching {lt['packing']}: {'met' if ok else 'MISSED'}"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="tiny",
        help="Shape of the model built for the synthetic shapes.",
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="Multiply every shape's number of examples."
    )
    p.add_argument(
        "--shapes", default="short,mixed,long,qlora", help="Comma-separated dataset shapes to run."
    )
    p.add_argument(
        "--packing",
        default="off",
        help="Lathe's data.packing (off, auto, budget, pack). Default off, Lathe's own default: "
        "batch_size examples per step, so every trainer takes the same steps and the validation "
        "losses compare at the same step; auto/budget put more short examples into fewer steps.",
    )
    p.add_argument(
        "--trainers", default=",".join(TRAINERS), help="Comma-separated: mlx_lm,mlx_lm_lora,lathe"
    )
    p.add_argument(
        "--qlora-base",
        default="float32,as-is",
        help="Comma-separated bases for the qlora shape: as-is, float32 (see above).",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="Seconds after which a trainer on the qlora shape with the base as-is is stopped.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="--scale 0.125 --qlora-base float32 (unless given), at least 24 long documents "
        "(3 steps): every shape and trainer in about 15 minutes on a 2-core CPU. The as-stored 4-bit row is left out: on MLX's CPU "
        "backend no trainer finishes a step of it within minutes (see the README).",
    )
    p.add_argument(
        "--fixed-order",
        action="store_true",
        help="Run the trainers in the same order on every shape (default: the order rotates "
        "from shape to shape, so no trainer always runs first or last while the load changes).",
    )
    a = p.parse_args()
    if a.quick:
        given = " ".join(sys.argv[1:])
        a.scale = a.scale if "--scale" in given else 0.125
        a.qlora_base = a.qlora_base if "--qlora-base" in given else "float32"
    work = Path(tempfile.mkdtemp(prefix="lathe-bench-"))
    shapes = a.shapes.split(",")
    model = build_model(work, a.size) if set(shapes) - {"qlora"} else ""
    trainers, notes = available_trainers(a.trainers.split(","))
    load_before = load_average()
    import time

    started = time.perf_counter()
    rows = []
    for shape in shapes:
        bases = a.qlora_base.split(",") if shape == "qlora" else ["as-is"]
        for base in bases:
            turn = len(rows) % max(1, len(trainers)) if not a.fixed_order else 0
            order = trainers[turn:] + trainers[:turn]
            print(f"running {shape} ({base}): {SHAPES[shape][2]} ...", file=sys.stderr, flush=True)
            n = max(8, int(SHAPES[shape][0] * a.scale))
            if a.quick and shape == "long":
                n = max(n, 24)  # 3 steps: one step would be mostly the first step's tracing
            rows.append(
                compare(
                    str(REAL_MODEL) if shape == "qlora" else model,
                    shape,
                    n,
                    work=work,
                    packing=a.packing,
                    trainers=order,
                    base=base,
                    timeout=a.timeout if (shape == "qlora" and base == "as-is") else None,
                )
            )
            print_table(rows[-1:], with_examples=True, file=sys.stderr)
    import mlx.core as mx

    device = mx.device_info().get("device_name", "") if hasattr(mx, "device_info") else ""
    print(
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        f"{', ' + device if device else ''}, MLX {mx.__version__} ({mx.default_device()}); "
        f"{load_before} at the start, {load_average()} at the end; the whole run took "
        f"{(time.perf_counter() - started) / 60:.1f} min"
    )
    if model:
        print(f"Model: {describe_size(a.size)}, LoRA rank 8 on all layers, batch 8, one epoch.")
    if "qlora" in shapes:
        print(f"qlora: {REAL_MODEL.name} (4-bit, float16 scales), bank-support sample, batch 8.")
    print(
        "Trainers run one after another per shape, in the order listed (rotated from shape to "
        "shape); 'load' is the 1-minute load average before-after each trainer's process."
    )
    print()
    print_table(rows, with_examples=True)
    for note in notes:
        print(note)
    print()
    for r in rows:
        print(verdict(r))


if __name__ == "__main__":
    main()
