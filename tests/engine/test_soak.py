"""Soak: 2,000 steps of a tiny model, reporting every step, without memory creeping up."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest

from engine import events
from engine.runs import create_run, load_run
from tests.helpers import make_config, variable_chat_data

pytestmark = pytest.mark.slow  # minutes of real training on the 2-core machine

STEPS = 2000
WARMUP = 200  # compilation of the few batch shapes, allocator and cache settling


def resident_bytes() -> int:
    """Resident memory of this process (VmRSS where /proc exists, else the peak from getrusage)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # pragma: no cover - macOS: bytes


@pytest.fixture(scope="module")
def smallest_model(tmp_path_factory) -> Path:
    """As small and fast as a real model gets: hidden 32, one layer, 2 heads."""
    from engine.tinymodel import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("soak") / "tiny-32x1",
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=64,
        vocab_size=300,
    )


def test_2000_steps_keep_memory_flat_and_log_every_step(smallest_model, tmp_path):
    import mlx.core as mx

    from engine.train import run

    data = variable_chat_data(tmp_path / "chat.jsonl", n=40)
    cfg = make_config(
        smallest_model,
        data,
        iters=STEPS,
        batch_size=2,
        steps_per_report=1,
        steps_per_eval=500,
        save_every=500,
    )
    cfg.data.max_seq_length = 32
    run_dir = create_run(cfg)
    samples: dict[int, tuple[int, int]] = {}
    log = events.EventLog(run_dir / "events.jsonl")

    def sink(event: dict) -> None:
        log(event)
        if event["event"] == "progress":
            samples[event["step"]] = (resident_bytes(), mx.get_active_memory())

    tic = time.perf_counter()
    try:
        status = run(cfg, run_dir, sink)
    finally:
        log.close()
    elapsed = time.perf_counter() - tic
    assert status == "completed"

    # Every step's progress event is in events.jsonl, in order.
    logged = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if e["event"] == "progress"] == list(range(1, STEPS + 1))
    assert load_run(run_dir).checkpoints == [500, 1000, 1500, 2000]

    # Flat after warm-up: the late window's peak is within 5% of the early window's. Active memory
    # at a step depends on that batch's width, so windows (which see every width) are compared.
    def peak(index: int, lo: int, hi: int) -> int:
        return max(samples[s][index] for s in range(lo, hi))

    rss_early, rss_late = peak(0, WARMUP, WARMUP + 200), peak(0, STEPS - 200, STEPS + 1)
    act_early, act_late = peak(1, WARMUP, WARMUP + 200), peak(1, STEPS - 200, STEPS + 1)
    print(
        f"{STEPS} steps in {elapsed:.1f}s; resident {rss_early / 1e6:.1f} -> {rss_late / 1e6:.1f} MB, "
        f"MLX active {act_early / 1e3:.0f} -> {act_late / 1e3:.0f} KB"
    )
    assert rss_late <= rss_early * 1.05, (rss_early, rss_late)
    assert act_late <= act_early * 1.05, (act_early, act_late)
