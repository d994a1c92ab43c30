"""Faults injected into a training run in this process: a full disk, NaN losses, memory running short.

Each test breaks one thing on purpose (a write that fails with ENOSPC, a learning rate that turns
NaN, active memory that climbs to the limit, an allocation that fails) and checks what a user would
see afterwards: a clear error, a status that says what happened, the last good checkpoint intact,
nothing half-written, and a run that can be resumed.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from engine import events
from engine.runs import create_run, load_run
from engine.training.checkpoint import is_temp_name
from tests.helpers import config_for, run_logged


def assert_nothing_half_written(run_dir: Path) -> None:
    """Every file under its final name is whole: JSON parses, safetensors load, events are lines."""
    import mlx.core as mx

    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        assert not any(part.startswith((".tmp-", ".old-")) for part in rel.parts), (
            f"left behind: {rel}"
        )
        if not path.is_file():
            continue
        assert not is_temp_name(path.name), f"temporary file left behind: {rel}"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            mx.load(str(path))
    text = (run_dir / "events.jsonl").read_text()
    assert text.endswith("\n")
    for line in text.splitlines():
        json.loads(line)


def finite_adapter(folder: Path) -> dict:
    from safetensors.numpy import load_file

    weights = load_file(str(folder / "adapters.safetensors"))
    assert weights and all(np.isfinite(w).all() for w in weights.values())
    return weights


# -- a full disk -------------------------------------------------------------------------------


def test_disk_full_while_writing_a_checkpoint_stops_cleanly(tiny_chat_model, tmp_path, monkeypatch):
    """The third checkpoint's optimizer file fails the way MLX fails on a full disk (a short file and a
    RuntimeError): the run stops with a disk-full error, the checkpoint before it is untouched."""
    import shutil

    import mlx.core as mx

    real_save = mx.save_safetensors
    calls = {"optimizer": 0}

    def full_disk_save(path, arrays, *args, **kwargs):
        if Path(path).name == "optimizer.safetensors":
            calls["optimizer"] += 1
            if calls["optimizer"] == 3:
                real_save(path, arrays, *args, **kwargs)
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
                raise RuntimeError(
                    f"[write] Unable to write {os.path.getsize(path)} bytes to file."
                )
        return real_save(path, arrays, *args, **kwargs)

    real_usage = shutil.disk_usage
    monkeypatch.setattr(mx, "save_safetensors", full_disk_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=4096))
    cfg = config_for(tiny_chat_model, tmp_path)
    # Started anyway (`--force`): the disk-space check before step 1 would refuse this run, and
    # this test is about a disk that fills while the run is going.
    cfg.training.ignore_fit_check = True
    status, run_dir, rec = run_logged(cfg)

    assert status == "failed"
    error = rec.of("error")[-1]
    assert error["kind"] == "disk_full"
    assert "disk is full" in error["message"] and "optimizer.safetensors" in error["message"]
    assert "step 10 is intact" in error["message"] and "free" in error["hint"].lower()
    assert rec.events[-1]["event"] == "finished" and rec.events[-1]["status"] == "failed"
    info = load_run(run_dir)
    assert info.state == "failed" and info.status["reason"].startswith("The disk is full")
    assert info.checkpoints == [5, 10]
    assert_nothing_half_written(run_dir)
    # The run's adapter is still the one of the last good checkpoint.
    assert (run_dir / "adapters" / "adapters.safetensors").read_bytes() == (
        run_dir / "checkpoints" / "0000010" / "adapters.safetensors"
    ).read_bytes()

    # With space again, the run resumes from step 10 and finishes.
    monkeypatch.setattr(mx, "save_safetensors", real_save)
    status, _, rec2 = run_logged(cfg, run_dir, resume=True)
    assert status == "completed" and rec2.of("started")[0]["resumed_from"] == 10
    assert_nothing_half_written(run_dir)


def test_disk_full_while_writing_events_ends_the_run_with_a_final_status(
    tiny_chat_model, tmp_path, monkeypatch
):
    """events.jsonl hits ENOSPC halfway through a line: the torn part is cut off, the app still gets
    the error and the finished event, status.json says failed, the last checkpoint is intact."""
    cfg = config_for(tiny_chat_model, tmp_path)
    run_dir = create_run(cfg)
    events_path = run_dir / "events.jsonl"
    real_write = os.write
    state = {"after_checkpoint": None, "full": False, "lines": 0}

    def is_events_fd(fd):
        try:
            return os.path.samestat(os.fstat(fd), os.stat(events_path))
        except OSError:
            return False

    def write(fd, data):
        if not is_events_fd(fd):
            return real_write(fd, data)
        if state["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if state["after_checkpoint"] is not None:
            state["after_checkpoint"] += 1
        elif b'"event":"checkpoint"' in bytes(data):
            state["after_checkpoint"] = 0
        if state["after_checkpoint"] == 3:  # a few events after the first checkpoint:
            state["full"] = True  # half the line gets out, then the disk is full
            return real_write(fd, bytes(data)[: len(data) // 2])
        state["lines"] += 1
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    status, _, rec = run_logged(cfg, run_dir)
    monkeypatch.setattr(os, "write", real_write)

    assert status == "failed" and state["full"]
    error = rec.of("error")[-1]
    assert error["kind"] == "disk_full" and "events.jsonl" in error["message"]
    assert rec.events[-1]["event"] == "finished" and rec.events[-1]["status"] == "failed"
    info = load_run(run_dir)
    assert info.state == "failed" and "disk is full" in info.status["reason"]
    assert info.checkpoints and info.checkpoints[-1] == 5
    finite_adapter(run_dir / "checkpoints" / "0000005")
    # The file holds exactly the events written before the disk filled up, and no torn line.
    lines = events_path.read_text().splitlines()
    assert lines == [events.dumps(e) for e in rec.events[: state["lines"]]]
    assert_nothing_half_written(run_dir)


# -- NaN / Inf ---------------------------------------------------------------------------------


def poisoned_optimizers(monkeypatch, poison_attempts: int, from_step: int = 6):
    """`build_optimizer` whose first `poison_attempts` optimizers get a NaN learning rate from
    `from_step` on (inside the compiled step, so the weights blow up the way a bad batch does)."""
    import mlx.core as mx
    import mlx.optimizers as optim

    import engine.training.method as train_mod

    real = train_mod.build_optimizer
    built = []

    def build(config):
        built.append(config.training.learning_rate)
        if len(built) > poison_attempts:
            return real(config)
        lr = config.training.learning_rate
        return optim.Adam(
            learning_rate=lambda step: mx.where(
                step >= from_step, mx.array(float("nan")), mx.array(lr)
            )
        )

    monkeypatch.setattr(train_mod, "build_optimizer", build)
    return built


def test_nan_loss_without_retry_stops_and_says_how_to_retry(tiny_chat_model, tmp_path, monkeypatch):
    poisoned_optimizers(monkeypatch, poison_attempts=99)
    status, run_dir, rec = run_logged(config_for(tiny_chat_model, tmp_path))
    assert status == "failed"
    error = rec.of("error")[-1]
    assert error["kind"] == "nan_loss" and "nan_retry" in error["hint"]
    assert load_run(run_dir).checkpoints == [5]
    assert not [e for e in rec.of("log") if "retries once" in e["message"]]
    finite_adapter(run_dir / "adapters")


def test_nan_loss_rolls_back_and_retries_once_at_half_the_learning_rate(
    tiny_chat_model, tmp_path, monkeypatch
):
    built = poisoned_optimizers(monkeypatch, poison_attempts=1)
    cfg = config_for(tiny_chat_model, tmp_path, nan_retry=True, learning_rate=1e-3)
    status, run_dir, rec = run_logged(cfg)

    assert status == "completed", rec.of("error")
    assert built == [1e-3, 5e-4]
    assert not rec.of("error")
    retry = [e for e in rec.of("log") if "retries once" in e["message"]]
    assert len(retry) == 1 and "step 5" in retry[0]["message"]
    steps = [e["step"] for e in rec.of("progress")]
    rollback_at = steps.index(6, steps.index(6) + 1)  # the second time step 6 is reported
    assert steps[rollback_at - 1] > 6  # training had gone past step 6 before the rollback
    assert steps[rollback_at:] == list(range(6, 21))
    assert all(e["learning_rate"] == pytest.approx(5e-4) for e in rec.of("progress")[rollback_at:])
    assert all(np.isfinite(e["train_loss"]) for e in rec.of("progress")[rollback_at:])
    info = load_run(run_dir)
    assert info.state == "completed"
    assert info.config.training.learning_rate == pytest.approx(5e-4)  # resume keeps the halved rate
    assert info.status["nan_retry"]["rolled_back_to"] == 5
    finite_adapter(run_dir / "adapters")


def test_nan_loss_before_any_checkpoint_rolls_back_to_the_start(
    tiny_chat_model, tmp_path, monkeypatch
):
    poisoned_optimizers(monkeypatch, poison_attempts=1, from_step=2)
    cfg = config_for(tiny_chat_model, tmp_path, nan_retry=True, iters=8, save_every=100)
    status, run_dir, rec = run_logged(cfg)
    assert status == "completed", rec.of("error")
    assert any("went back to the start" in e["message"] for e in rec.of("log"))
    assert [e["step"] for e in rec.of("progress")][-8:] == list(range(1, 9))
    finite_adapter(run_dir / "adapters")


def test_nan_loss_again_after_the_retry_stops_with_an_explanation(
    tiny_chat_model, tmp_path, monkeypatch
):
    built = poisoned_optimizers(monkeypatch, poison_attempts=2)
    status, run_dir, rec = run_logged(config_for(tiny_chat_model, tmp_path, nan_retry=True))
    assert status == "failed" and len(built) == 2
    error = rec.of("error")[-1]
    assert error["kind"] == "nan_loss" and "after one retry" in error["hint"]
    info = load_run(run_dir)
    assert info.state == "failed" and info.checkpoints == [5]
    finite_adapter(run_dir / "adapters")


# -- memory ------------------------------------------------------------------------------------


def test_a_tight_run_turns_on_gradient_checkpointing_and_says_so(
    tiny_chat_model, tmp_path, monkeypatch
):
    import engine.models.fit as fit
    from engine.models.info import inspect_model
    from engine.training.memory import train_lengths

    cfg = config_for(tiny_chat_model, tmp_path, iters=2)
    # The run estimates the largest batch its data forms (issue 22 item 1), so this test does too.
    peak = fit.estimate(
        inspect_model(tiny_chat_model),
        cfg,
        budget_bytes=1 << 40,
        lengths=train_lengths(cfg, tiny_chat_model),
    ).training_peak_bytes
    monkeypatch.setattr(fit, "memory_budget", lambda: (int(peak / 0.9), "a small test machine"))
    status, run_dir, rec = run_logged(cfg)
    assert status == "completed"
    assert rec.of("started")[0]["config"]["grad_checkpoint"] is True
    assert any("gradient checkpointing is on" in e["message"] for e in rec.of("log"))

    cfg.training.auto_grad_checkpoint = False
    status, run_dir, rec = run_logged(cfg)
    assert status == "completed" and rec.of("started")[0]["config"]["grad_checkpoint"] is False
    assert any("Memory will be tight" in e["message"] for e in rec.of("log"))


def test_a_run_that_will_not_fit_is_refused_with_the_numbers_unless_forced(
    tiny_chat_model, tmp_path, monkeypatch
):
    import engine.models.fit as fit

    monkeypatch.setattr(fit, "memory_budget", lambda: (64 * 1024, "a 64 KB test machine"))
    cfg = config_for(tiny_chat_model, tmp_path, iters=3)
    status, run_dir, rec = run_logged(cfg)
    assert status == "failed"
    error = rec.of("error")[-1]
    assert error["kind"] == "memory" and "not started" in error["message"]
    assert "GB of memory" in error["message"] and "64 KB test machine" in error["message"]
    assert "--force" in error["hint"]
    assert error["fit"]["verdict"] == "will not fit" and error["fit"]["budget_bytes"] == 64 * 1024
    assert not rec.of("started") and not rec.of("progress")
    info = load_run(run_dir)
    assert info.state == "failed" and info.checkpoints == []

    cfg.training.ignore_fit_check = True
    status, run_dir, rec = run_logged(cfg)
    assert status == "completed"
    assert any("started anyway" in e["message"] for e in rec.of("log"))


def test_train_cli_force_and_nan_retry_flags_set_the_config():
    from engine.cli import build_parser
    from engine.commands.train import build_config

    args = build_parser().parse_args(
        ["train", "--model", "m", "--data", "d", "--force", "--nan-retry"]
    )
    cfg = build_config(args, [])
    assert cfg.training.ignore_fit_check and cfg.training.nan_retry
    plain = build_config(build_parser().parse_args(["train", "--model", "m", "--data", "d"]), [])
    assert not plain.training.ignore_fit_check and not plain.training.nan_retry


def test_memory_limits_come_from_the_machine():
    from engine.training import memory

    gb = memory.GB
    # macOS: the GPU's recommended working set is the limit.
    mac = memory.plan_for(12 * gb, "GPU recommended working set")
    assert mac.limit_bytes == 12 * gb and mac.stop_bytes == int(12 * gb * 0.95)
    assert mac.cache_limit_bytes == 3 * gb
    # Elsewhere: physical memory, leaving room for the OS and other apps.
    linux = memory.plan_for(32 * gb, "physical memory")
    assert linux.limit_bytes == int(32 * gb * 0.8) and linux.stop_bytes < linux.limit_bytes


def test_macos_budget_reads_the_working_set_and_falls_back_to_physical_memory(monkeypatch):
    from engine import platform
    from engine.training import memory

    monkeypatch.setattr(
        memory, "_device_info", lambda: {"max_recommended_working_set_size": 11 * memory.GB}
    )
    assert memory.machine_budget("darwin") == (11 * memory.GB, "GPU recommended working set")
    monkeypatch.setattr(memory, "_device_info", lambda: {})
    monkeypatch.setattr(platform, "total_memory_bytes", lambda: 16 * memory.GB)
    assert memory.machine_budget("darwin") == (16 * memory.GB, "physical memory")
    assert memory.machine_budget("linux") == (16 * memory.GB, "physical memory")


def test_training_sets_mlx_memory_limits_and_restores_them(tiny_chat_model, tmp_path):
    import mlx.core as mx

    from engine.training import memory

    before_limit = mx.get_memory_limit()
    before_cache = mx.set_cache_limit(123_456_789)
    seen = {}
    plan = memory.machine_plan()
    cfg = config_for(tiny_chat_model, tmp_path, iters=3)

    from engine.train import run

    def sink(event):
        if event["event"] == "progress" and not seen:
            seen["limit"] = mx.get_memory_limit()
            cache = mx.set_cache_limit(0)
            mx.set_cache_limit(cache)
            seen["cache"] = cache

    assert run(cfg, create_run(cfg), sink) == "completed"
    # The cache is capped (on a GPU at one step's estimated working set), never above the plan.
    want_cache = min(plan.cache_limit_bytes, 256 * 1024**2)  # the CPU backend's cap (fit_cache_to)
    assert seen == {"limit": plan.limit_bytes, "cache": want_cache}
    assert mx.get_memory_limit() == before_limit
    assert mx.set_cache_limit(before_cache) == 123_456_789


def test_the_cache_is_freed_after_every_step_on_the_cpu_unless_configured():
    """Checks the policy of both backends on whichever backend runs the tests (issue 19: this test
    asserted that it ran on the CPU, so it failed on a Mac)."""
    import mlx.core as mx

    from engine.training import memory

    assert memory.clear_cache_threshold(0, gpu=False) == 1  # every step: faster, smaller on CPU
    assert memory.clear_cache_threshold(0, gpu=True) == 0  # kept (capped) on a GPU
    on_gpu = mx.default_device().type != mx.DeviceType.cpu
    assert memory.clear_cache_threshold(0) == memory.clear_cache_threshold(0, gpu=on_gpu)
    assert memory.clear_cache_threshold(2 * memory.GB) == 2 * memory.GB
    plan = memory.plan_for(8 * memory.GB, "physical memory")
    before = mx.set_cache_limit(123_456_789)
    try:
        # On a GPU: one step's working set, within the plan's cap.
        assert memory.fit_cache_to(plan, 512 * 1024**2, gpu=True) == 512 * 1024**2
        assert mx.set_cache_limit(0) == 512 * 1024**2
        assert memory.fit_cache_to(plan, 100 * memory.GB, gpu=True) == plan.cache_limit_bytes
        assert memory.fit_cache_to(plan, 1, gpu=True) == 256 * 1024**2
        # On the CPU backend (emptied every step): 256 MB, whatever the step.
        assert memory.fit_cache_to(plan, 2 * memory.GB) == 256 * 1024**2
        assert mx.set_cache_limit(0) == 256 * 1024**2
        small = memory.plan_for(512 * 1024**2, "physical memory")
        assert memory.fit_cache_to(small, 2 * memory.GB) == small.cache_limit_bytes < 256 * 1024**2
    finally:
        mx.set_cache_limit(before)


def test_memory_running_short_frees_the_cache_then_checkpoints_and_stops(
    tiny_chat_model, tmp_path, monkeypatch
):
    from engine.training import memory

    plan = memory.machine_plan()
    pressure = {"on": False, "clears": 0}
    real_active = memory.active_memory
    monkeypatch.setattr(
        memory, "active_memory", lambda: plan.stop_bytes + 1 if pressure["on"] else real_active()
    )

    def clear():
        pressure["clears"] += 1

    monkeypatch.setattr(memory, "clear_cache", clear)
    cfg = config_for(tiny_chat_model, tmp_path, iters=40, save_every=100)
    run_dir = create_run(cfg)
    recorder = events.Recorder()

    def sink(event):
        recorder(event)
        if event["event"] == "progress" and event["step"] == 7:
            pressure["on"] = True  # memory climbs to the limit during step 7

    from engine.train import run

    status = run(cfg, run_dir, sink)
    assert status == "failed"
    assert pressure["clears"] >= 1  # the cache went first
    error = recorder.of("error")[-1]
    assert error["kind"] == "memory" and "Memory ran short" in error["message"]
    assert "checkpoint at step 7 is saved" in error["message"] and "batch size" in error["hint"]
    assert [e["step"] for e in recorder.of("checkpoint")] == [7]
    info = load_run(run_dir)
    assert info.state == "failed" and info.checkpoints == [7]
    assert "Memory ran short" in info.status["reason"]
    finite_adapter(run_dir / "checkpoints" / "0000007")


def test_an_mlx_allocation_failure_ends_the_run_with_a_memory_error(
    tiny_chat_model, tmp_path, monkeypatch
):
    """MLX raises when an allocation fails; the run ends with a memory error, the checkpoint before
    it intact, instead of a traceback."""
    import mlx.core as mx

    import engine.training.loop as trainer

    class FailingMx:
        """mlx.core as the trainer sees it, except that evaluation fails once memory is 'gone'."""

        def __init__(self):
            self.calls = 0

        def __getattr__(self, name):
            return getattr(mx, name)

        def eval(self, *args):
            self.calls += 1
            if self.calls > 30:
                raise RuntimeError("[malloc] Unable to allocate 68719476736 bytes.")
            return mx.eval(*args)

    monkeypatch.setattr(trainer, "mx", FailingMx())
    status, run_dir, rec = run_logged(config_for(tiny_chat_model, tmp_path, iters=60))
    assert status == "failed"
    error = rec.of("error")[-1]
    assert error["kind"] == "memory" and "ran out of memory" in error["message"]
    assert "is intact" in error["message"] and "batch size" in error["hint"]
    info = load_run(run_dir)
    assert info.state == "failed" and info.checkpoints
    assert f"step {info.checkpoints[-1]} is intact" in error["message"]
    assert_nothing_half_written(run_dir)


# -- checkpoint folders ------------------------------------------------------------------------


def test_checkpoint_folders_are_complete_or_absent_and_resume_tidies_up(tmp_path):
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from engine.training import checkpoint as ckpt

    model = nn.Linear(4, 4)
    optimizer = optim.Adam(learning_rate=1e-3)
    optimizer.init(model.trainable_parameters())
    mx.eval(model.parameters(), optimizer.state)
    run_dir = tmp_path / "run"
    first = ckpt.save_checkpoint(run_dir, model, optimizer, ckpt.TrainState(step=5), {})
    stamp = (first / "adapters.safetensors").stat().st_mtime_ns
    # The same state again (a stop right after a periodic save) keeps the folder as it is ...
    assert ckpt.save_checkpoint(run_dir, model, optimizer, ckpt.TrainState(step=5), {}) == first
    assert (first / "adapters.safetensors").stat().st_mtime_ns == stamp
    # ... a different state at the same step replaces it whole.
    ckpt.save_checkpoint(run_dir, model, optimizer, ckpt.TrainState(step=5, trained_tokens=7), {})
    assert json.loads((first / "state.json").read_text())["trained_tokens"] == 7

    # What a kill can leave: a half-written checkpoint folder, a checkpoint moved aside while being
    # replaced, temporary files of atomic writes. None of them counts; resume's cleanup tidies them.
    (run_dir / "checkpoints" / ".tmp-0000010-999").mkdir()
    (run_dir / "checkpoints" / ".tmp-0000010-999" / "adapters.safetensors").write_bytes(b"half")
    os.replace(first, run_dir / "checkpoints" / ".old-0000005-999")
    (run_dir / ".status.json.abcd1234.tmp").write_text("{")
    (run_dir / "adapters").mkdir()
    (run_dir / "adapters" / ".adapters.safetensors.0123abcd.tmp.safetensors").write_bytes(b"x")
    assert ckpt.list_checkpoints(run_dir) == []
    removed = ckpt.clean_partial(run_dir)
    assert len(removed) == 3
    assert ckpt.list_checkpoints(run_dir) == [first]  # the moved-aside checkpoint is back
    assert sorted(p.name for p in run_dir.rglob("*") if p.name.startswith(".")) == []


def test_a_short_safetensors_write_is_an_error_not_a_checkpoint(tmp_path, monkeypatch):
    import mlx.core as mx

    from engine.training.checkpoint import write_safetensors

    real = mx.save_safetensors

    def short(path, arrays, *a, **k):
        real(path, arrays, *a, **k)
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) - 3)  # MLX said nothing, but the file is short

    monkeypatch.setattr(mx, "save_safetensors", short)
    with pytest.raises(OSError, match="not written completely"):
        write_safetensors(tmp_path / "a.safetensors", {"w": mx.ones((16,))})
