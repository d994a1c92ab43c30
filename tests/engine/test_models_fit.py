"""The memory estimate against measured peaks of real training steps, and the fit verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.config import RunConfig
from engine.models.fit import GB, estimate, memory_budget
from engine.models.info import inspect_model
from engine.models.measure import measure_training
from engine.models.recommended import info_from_arch, recommended_models, reference_run

ROOT = Path(__file__).resolve().parents[2]


def _cfg(batch=2, seq=128, rank=8, layers=16, checkpoint=False) -> RunConfig:
    cfg = RunConfig()
    cfg.training.batch_size = batch
    cfg.data.max_seq_length = seq
    cfg.lora.rank = rank
    cfg.lora.num_layers = layers
    cfg.training.grad_checkpoint = checkpoint
    return cfg


# (model dims, run) pairs that vary hidden size, depth, batch, sequence length, rank and checkpointing.
CASES = [
    ({"hidden_size": 64, "num_layers": 2, "intermediate_size": 128}, _cfg(batch=4, seq=64)),
    (
        {"hidden_size": 128, "num_layers": 4, "intermediate_size": 384},
        _cfg(batch=2, seq=256, rank=16),
    ),
    (
        {"hidden_size": 256, "num_layers": 4, "intermediate_size": 512},
        _cfg(batch=1, seq=512, layers=2),
    ),
    (
        {"hidden_size": 256, "num_layers": 6, "intermediate_size": 768, "num_heads": 8},
        _cfg(batch=3, seq=128, rank=32, layers=6),
    ),
    (
        {"hidden_size": 384, "num_layers": 3, "intermediate_size": 1024, "num_heads": 6},
        _cfg(batch=2, seq=256, layers=1),
    ),
    (
        {"hidden_size": 256, "num_layers": 6, "intermediate_size": 512},
        _cfg(batch=2, seq=256, checkpoint=True),
    ),
    # A large vocabulary, where the output layer's logits are most of the peak (run in chunks).
    (
        {"hidden_size": 128, "num_layers": 2, "intermediate_size": 384, "model_vocab_size": 65536},
        _cfg(batch=4, seq=512, layers=2),
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "dims, cfg",
    CASES,
    ids=[
        f"d{d['hidden_size']}-v{d.get('model_vocab_size', 'tok')}-L{d['num_layers']}-b{c.training.batch_size}-s{c.data.max_seq_length}-r{c.lora.rank}-n{c.lora.num_layers}{'-gc' if c.training.grad_checkpoint else ''}"
        for d, c in CASES
    ],
)
def test_estimate_is_within_20_percent_of_measured_peak(tmp_path, dims, cfg):
    from engine.tinymodel import build_tiny_model

    path = build_tiny_model(tmp_path / "m", num_kv_heads=2, **{"num_heads": 4, **dims})
    predicted = estimate(path, cfg, budget_bytes=64 * GB).training_peak_bytes
    measured = measure_training(
        path,
        batch_size=cfg.training.batch_size,
        seq_length=cfg.data.max_seq_length,
        rank=cfg.lora.rank,
        num_layers=cfg.lora.num_layers,
        grad_checkpoint=cfg.training.grad_checkpoint,
    ).peak_bytes
    assert measured > inspect_model(path).weights_bytes
    assert abs(predicted - measured) / measured <= 0.20, (predicted, measured)


def test_estimate_matches_the_real_stories_model(stories_path):
    cfg = _cfg(batch=4, seq=256)
    predicted = estimate(stories_path, cfg, budget_bytes=GB).training_peak_bytes
    measured = measure_training(
        stories_path, batch_size=4, seq_length=256, rank=8, num_layers=16
    ).peak_bytes
    assert abs(predicted - measured) / measured <= 0.20, (predicted, measured)


def test_checkpointing_measurement_restores_the_layer_class(tiny_chat_model):
    from mlx_lm.models.llama import TransformerBlock

    before = TransformerBlock.__call__
    measure_training(tiny_chat_model, batch_size=1, seq_length=32, grad_checkpoint=True)
    assert TransformerBlock.__call__ is before


def test_estimate_grows_with_what_costs_memory(stories_path):
    base = estimate(stories_path, _cfg(), budget_bytes=GB).training_peak_bytes
    for bigger in (_cfg(batch=4), _cfg(seq=256), _cfg(rank=64)):
        assert estimate(stories_path, bigger, budget_bytes=GB).training_peak_bytes > base
    assert estimate(stories_path, _cfg(checkpoint=True), budget_bytes=GB).training_peak_bytes < base


def test_verdicts_and_cheapest_fix_for_a_7b_model():
    info = info_from_arch(
        "x/7b",
        {
            "hidden_size": 3584,
            "num_layers": 28,
            "intermediate_size": 18944,
            "num_heads": 28,
            "num_kv_heads": 4,
            "vocab_size": 152064,
        },
    )
    cfg = _cfg(batch=4, seq=2048, layers=16)
    cfg.training.auto_grad_checkpoint = (
        False  # verdicts as they are; the automatic choice is tested below
    )
    big = estimate(info, cfg, budget_bytes=256 * GB)
    assert big.verdict == "fits" and big.suggestion is None
    peak = big.training_peak_bytes
    assert estimate(info, cfg, budget_bytes=int(peak / 0.9)).verdict == "tight"

    small = estimate(info, cfg, budget_bytes=int(peak * 0.6))
    assert small.verdict == "will not fit"
    s = small.suggestion
    assert s is not None and s.training_peak_bytes <= 0.8 * small.budget_bytes
    assert s.description == "turn on gradient checkpointing"

    tiny = estimate(info, cfg, budget_bytes=8 * GB)
    assert tiny.verdict == "will not fit" and tiny.suggestion is not None
    assert tiny.suggestion.training_peak_bytes <= 0.8 * 8 * GB
    assert "batch" in tiny.suggestion.description or "checkpointing" in tiny.suggestion.description
    assert estimate(info, cfg, budget_bytes=2 * GB).suggestion is None  # weights alone do not fit
    assert small.to_dict()["summary"].startswith("will not fit")
    assert 0 < small.chat_peak_bytes < peak


def test_a_tight_run_gets_gradient_checkpointing_by_itself():
    info = info_from_arch(
        "x/7b",
        {
            "hidden_size": 3584,
            "num_layers": 28,
            "intermediate_size": 18944,
            "num_heads": 28,
            "num_kv_heads": 4,
            "vocab_size": 152064,
        },
    )
    cfg = _cfg(batch=4, seq=2048, layers=16)
    assert cfg.training.auto_grad_checkpoint  # the default
    peak = estimate(info, cfg, budget_bytes=256 * GB).training_peak_bytes
    manual = _cfg(batch=4, seq=2048, layers=16, checkpoint=True)
    checkpointed = estimate(info, manual, budget_bytes=256 * GB).training_peak_bytes
    assert checkpointed < 0.8 * peak

    tight = estimate(info, cfg, budget_bytes=int(peak / 0.9))
    assert tight.automatic == {"training.grad_checkpoint": True}
    assert tight.training_peak_bytes == checkpointed and tight.verdict == "fits"
    assert any("turned on automatically" in n and "tight" in n for n in tight.notes)
    assert tight.to_dict()["automatic"] == {"training.grad_checkpoint": True}

    # Too big even so: the suggestion starts from the checkpointed run, never suggests it again.
    small = estimate(info, cfg, budget_bytes=int(checkpointed * 0.9))
    assert small.automatic and small.verdict == "will not fit"
    assert small.suggestion is not None and "checkpointing" not in small.suggestion.description

    # A run that fits is left alone, and so is one whose owner turned the choice off.
    assert estimate(info, cfg, budget_bytes=256 * GB).automatic == {}
    cfg.training.auto_grad_checkpoint = False
    assert estimate(info, cfg, budget_bytes=int(peak / 0.9)).automatic == {}


def test_memory_budget_is_this_machine():
    size, source = memory_budget()
    assert size > 512 * 1024**2 and source


def test_recommended_yaml_numbers_follow_from_the_architecture():
    data = yaml.safe_load((ROOT / "resources" / "models.yaml").read_text())
    models = recommended_models()
    assert len(models) == len(data["models"]) >= 8
    for m in models:
        assert m.repo_id.startswith("mlx-community/") and m.repo_id.endswith("4bit")
        assert 0.4 <= m.params_b <= 8.5
        assert m.params_b == pytest.approx(m.info.parameters / 1e9, abs=0.01)
        assert m.download_gb == pytest.approx(m.info.weights_bytes / GB, abs=0.06)
        train = estimate(m.info, reference_run(), budget_bytes=64 * GB).training_peak_bytes / GB
        assert m.train_gb == pytest.approx(train, abs=0.06)


@pytest.mark.slow
def test_cli_fit_with_measure(tmp_path, tiny_chat_model):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_chat_model)},
                "training": {"batch_size": 2},
                "data": {"max_seq_length": 64},
                "lora": {"rank": 4, "num_layers": 2},
            }
        )
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "models",
            "fit",
            str(tiny_chat_model),
            "--config",
            str(config),
            "--measure",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["verdict"] == "fits"
    measured = report["measured"]["peak_bytes"]
    assert abs(report["training_peak_bytes"] - measured) / measured <= 0.20
    human = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "models",
            "fit",
            str(tiny_chat_model),
            "--config",
            str(config),
            "--budget-gb",
            "0.0001",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert human.returncode == 0 and "will not fit" in human.stdout
