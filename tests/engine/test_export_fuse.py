"""Fusing an adapter into its base: the MLX folder loads, and the round trip agrees."""

from __future__ import annotations

import json

import pytest

from engine.export import ExportCancelled, ExportError, ExportJob, fuse
from engine.templates import CHATML_TEMPLATE, DEFAULT_CHAT_TEMPLATE
from tests.helpers import make_export_run, quantized_copy


@pytest.fixture(scope="module")
def stories_run(tmp_path_factory, stories_path):
    return make_export_run(
        stories_path,
        tmp_path_factory.mktemp("runs"),
        "stories",
        template=DEFAULT_CHAT_TEMPLATE,
        checkpoint_steps=(10,),
    )


@pytest.fixture(scope="module")
def quantized_chat_run(tmp_path_factory, tiny_chat_model):
    root = tmp_path_factory.mktemp("q")
    base = quantized_copy(tiny_chat_model, root / "tiny-chat-4bit", bits=4, group_size=32)
    return make_export_run(
        base, root / "runs", "tiny-q", template=CHATML_TEMPLATE, num_layers=2, scale=10.0
    )


def _greedy(path, prompt="Once upon a time", n=8, adapter=None):
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    model, tok = load(str(path), adapter_path=str(adapter) if adapter else None)
    return generate(model, tok, prompt, max_tokens=n, sampler=make_sampler(temp=0.0))


def test_dequantized_fuse_of_stories_agrees_token_for_token_and_loads(
    stories_run, stories_path, tmp_path
):
    seen = []
    result = fuse(str(stories_run), tmp_path / "fused", dequantize=True, progress=seen.append)
    rt = result.round_trip
    assert rt.required and rt.all_agree and rt.passed, rt.summary()
    assert rt.prompt_tokens_agree and rt.max_logit_diff < 1e-3
    # The adapter really changes the model, so agreement is not trivially base == base.
    assert _greedy(result.path) == _greedy(stories_path, adapter=stories_run / "adapters")
    assert _greedy(result.path, n=16) != _greedy(stories_path, n=16)
    # stories260K has no chat template: the run's (Lathe's default) goes into tokenizer_config.json.
    assert result.chat_template == "run"
    cfg = json.loads((result.path / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert (result.path / "tokenizer.model").is_file() and (result.path / "README.md").is_file()
    assert "quantization" not in json.loads((result.path / "config.json").read_text())
    # Progress is monotonic and ends at 1.0.
    fractions = [p.fraction for p in seen if p.fraction is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert not list(tmp_path.glob(".*partial*"))


def test_checkpoint_step_is_fused_into_its_own_folder(stories_run):
    result = fuse(f"{stories_run}:10", dequantize=True, check=False)
    assert result.adapter_path == stories_run / "checkpoints" / "0000010"
    assert result.path == stories_run / "exports" / "stories-step-0000010-fused-dequantized"
    with pytest.raises(ExportError, match="no checkpoint at step 7") as err:
        fuse(f"{stories_run}:7")
    assert "stories:10" in err.value.hint


def test_quantized_base_keeps_its_quantization_and_reports_the_round_trip(
    quantized_chat_run, tmp_path
):
    from mlx_lm import load

    kept = fuse(str(quantized_chat_run), tmp_path / "kept", dequantize=False)  # --keep-quantized
    config = json.loads((kept.path / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert not kept.dequantized and kept.round_trip is not None
    assert not kept.round_trip.required and kept.round_trip.passed  # reported, never failed
    model, tok = load(str(kept.path))
    assert tok.chat_template == CHATML_TEMPLATE and kept.chat_template == "base"

    exact = fuse(str(quantized_chat_run), tmp_path / "exact", dequantize=True)
    assert exact.round_trip.required and exact.round_trip.all_agree, exact.round_trip.summary()
    assert "quantization" not in json.loads((exact.path / "config.json").read_text())
    assert exact.size_bytes > kept.size_bytes


def test_cancelled_fuse_leaves_nothing_behind(stories_run, tmp_path):
    out = tmp_path / "cancelled"
    job = ExportJob(fuse, str(stories_run), out, dequantize=True)

    def cancel_while_saving(p):
        if p.stage == "save":
            job.cancel()

    with pytest.raises(ExportCancelled):
        job.run(progress=cancel_while_saving)
    assert job.cancelled and not out.exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_existing_output_is_refused_without_force(stories_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        fuse(str(stories_run), out, check=False)
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_fuse_json_and_errors(stories_run, tmp_path, capsys):
    from engine.cli import main

    assert (
        main(
            [
                "export",
                "fuse",
                str(stories_run),
                "--dequantize",
                "--out",
                str(tmp_path / "f"),
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["round_trip"]["all_agree"] and data["dequantized"]
    assert main(["export", "fuse", "no-such-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("lathe-engine: 'no-such-run' is neither a run")
        and len(err.splitlines()) == 1
    )


@pytest.fixture(scope="module")
def stories_4bit(tmp_path_factory, stories_path):
    from tests.helpers import quantized_copy

    return quantized_copy(stories_path, tmp_path_factory.mktemp("s4") / "stories-4bit")


def test_qlora_fuse_defaults_to_the_variant_that_answers_like_base_plus_adapter(
    stories_4bit, tmp_path
):
    """issue 22 item 7: fusing a QLoRA adapter whose re-quantized fuse answers differently from
    base + adapter writes the dequantized fuse by default, says why, and the written model agrees
    token for token; an adapter whose re-quantized fuse agrees keeps the base's 4-bit."""
    from tests.helpers import make_export_run

    strong = make_export_run(
        stories_4bit, tmp_path / "runs", "strong", num_layers=5, std=0.5, scale=20.0
    )
    result = fuse(str(strong), tmp_path / "strong-fused")
    assert result.probe is not None and not result.probe.all_agree, result.probe.summary()
    assert result.dequantized and "quantization" not in json.loads(
        (result.path / "config.json").read_text()
    )
    assert "Wrote the dequantized fuse" in result.choice and "--keep-quantized" in result.choice
    assert result.round_trip.required and result.round_trip.all_agree

    quiet = make_export_run(stories_4bit, tmp_path / "runs", "quiet", num_layers=5, std=0.0)
    kept = fuse(str(quiet), tmp_path / "quiet-fused", check=False)
    assert kept.probe.all_agree and not kept.dequantized
    assert json.loads((kept.path / "config.json").read_text())["quantization"]["bits"] == 4
    assert kept.choice.startswith("Kept the base's quantization")
