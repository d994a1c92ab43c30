"""Defaults a real user can trust (issue 22): memory from the data's real lengths, settings that
mean what they say, an evaluation interval that fits the run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import RunConfig
from engine.models.fit import GB, estimate
from engine.models.recommended import info_from_arch
from engine.training import memory

ROOT = Path(__file__).resolve().parents[2]
BANK = ROOT / "resources" / "samples" / "bank-support"


def _bank_config(model: Path) -> RunConfig:
    """The issue's run: the bank sample, 2 epochs, batch 4, every other setting Lathe's default."""
    cfg = RunConfig()
    cfg.model.path = str(model)
    cfg.data.path = str(BANK)
    return cfg


def test_estimate_is_for_the_largest_batch_the_bank_data_forms_on_smollm2(smollm2_path):
    """issue 22 item 1: on SmolLM2 the bank sample's longest example is 126 tokens, so the estimate
    is for 4 x 128 tokens (not 4 x 2048), fits an 8 GB Mac's budget and turns nothing on."""
    from engine.training.memory import train_lengths

    cfg = _bank_config(smollm2_path)
    lengths = train_lengths(cfg, smollm2_path)
    assert max(lengths) == 126
    report = estimate(smollm2_path, cfg, budget_bytes=int(5.3 * GB), lengths=lengths)
    assert report.batch == {
        "rows": 4,
        "width": 128,
        "longest_example": 126,
        "batching": "fixed",
        "from_data": True,
    }
    assert report.verdict == "fits" and report.automatic == {} and report.suggestion is None
    assert report.training_peak_bytes < 1 * GB
    assert "largest batch: 4 x 128 tokens (from the data; longest example 126" in report.summary()
    # On this machine's budget too: no gradient checkpointing switched on behind the user's back.
    assert estimate(smollm2_path, cfg, lengths=lengths).automatic == {}
    # Without the lengths the report says it is the longest possible batch.
    blind = estimate(smollm2_path, cfg, budget_bytes=int(5.3 * GB))
    assert blind.batch["width"] == 2048 and "longest possible batch" in blind.summary()


@pytest.mark.slow
def test_models_fit_cli_reads_the_data_and_fits_an_8gb_mac(smollm2_path):
    """issue 22 item 1: `models fit --data --budget-gb 5.3` on SmolLM2 fits and says which batch."""
    out = subprocess.run(
        [sys.executable, "-m", "engine", "models", "fit", str(smollm2_path)]
        + ["--data", str(BANK), "--budget-gb", "5.3", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["verdict"] == "fits" and report["automatic"] == {}
    assert report["batch"]["rows"] == 4 and report["batch"]["width"] == 128
    assert "4 x 128 tokens" in report["summary"]


def _seven_b():
    return info_from_arch(
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


def test_preflight_returns_a_decision_and_its_words_agree_with_its_numbers():
    """issue 22 item 1: preflight leaves the config alone (the caller applies `automatic`), and
    what it logs agrees with the verdicts: never "tight" next to "fits" for the same run."""
    info = _seven_b()
    cfg = RunConfig()
    cfg.data.max_seq_length = 2048
    plain = estimate(info, cfg, budget_bytes=256 * GB).training_peak_bytes
    budget = int(plain / 0.9)  # tight without checkpointing, fits with it

    logged: list[tuple[str, str]] = []
    report = memory.preflight(
        cfg,
        "unused",
        lambda level, text: logged.append((level, text)),
        estimate=lambda _path, c, lengths=None: estimate(info, c, budget_bytes=budget),
    )
    assert report.automatic == {"training.grad_checkpoint": True}
    assert cfg.training.grad_checkpoint is False  # not changed as a side effect
    text = " ".join(t for _, t in logged)
    assert "without it training would need about" in text and "(tight)" in text
    assert "with it about" in text and "(fits)" in text
    assert "tight: tight" not in text and "Memory would be tight" not in text
    assert "Memory will be tight" not in text  # the run as decided fits


@pytest.mark.slow
def test_estimate_is_within_25_percent_of_real_smollm2_training_steps(smollm2_path, tmp_path):
    """issue 22 item 1 and issue 18 item 3: SmolLM2-135M-Instruct computed in float32 (how MLX's
    CPU backend trains it fast: a dequantized copy) on the bank sample. `measure_run` runs real
    training steps of the data's largest batch; the estimate is within 25% of their peak and the
    run's memory check turns nothing on."""
    from engine.models.measure import measure_run

    model = _float32_copy(smollm2_path, tmp_path / "smollm2-f32")
    cfg = _bank_config(model)
    m = measure_run(cfg)
    assert (m.batch_size, m.seq_length, m.source) == (4, 128, "the data's largest batch")
    assert "4 x 128 tokens" in m.describe()
    from engine.training.memory import train_lengths

    report = estimate(model, cfg, lengths=train_lengths(cfg, model))
    assert report.automatic == {} and report.verdict == "fits"
    assert abs(report.training_peak_bytes - m.peak_bytes) / m.peak_bytes <= 0.25, (
        report.training_peak_bytes,
        m.peak_bytes,
    )


def _float32_copy(src: Path, dst: Path) -> Path:
    import shutil

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model, load_model

    model, config = load_model(src)
    model = dequantize_model(model)
    dst.mkdir(parents=True)
    weights = {k: v.astype(mx.float32) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(dst / "model.safetensors"), weights, metadata={"format": "mlx"})
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, dst / f.name)
    cfg = json.loads((src / "config.json").read_text())
    for key in ("quantization", "quantization_config"):
        cfg.pop(key, None)
    cfg["torch_dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_measure_runs_the_datas_largest_batch_not_the_longest_possible(stories_path, monkeypatch):
    """issue 18 item 3: `measure_run` measures the run's real largest batch (batch size x the
    longest example, padded as the trainer pads) with Lathe's training loop, says so, and the
    estimate for the same batch is within 25% of it. The estimate is for the batch in one piece
    (a GPU's step); on MLX's CPU backend the batch runs in two groups of rows
    (engine.training.parts), which peaked lower (66 against 77 MB here): the estimate stays above
    that."""
    from engine.models.measure import measure_run
    from engine.training.memory import train_lengths

    cfg = _bank_config(stories_path)
    two_groups = measure_run(cfg)
    monkeypatch.setenv("LATHE_CPU_STREAMS", "0")
    m = measure_run(cfg)
    report = estimate(
        stories_path, cfg, budget_bytes=8 * GB, lengths=train_lengths(cfg, stories_path)
    )
    assert (m.batch_size, m.seq_length) == (report.batch["rows"], report.batch["width"])
    assert m.seq_length < cfg.data.max_seq_length and m.steps == 2
    assert m.to_dict()["described"].startswith("2 training steps of the data's largest batch")
    assert abs(report.training_peak_bytes - m.peak_bytes) / m.peak_bytes <= 0.25
    assert two_groups.peak_bytes <= 1.05 * m.peak_bytes <= 1.05 * 1.25 * report.training_peak_bytes


def test_evaluation_interval_follows_the_runs_length():
    """issue 22 item 5: left to Lathe, a run gets about 10-20 validation points, preferably on
    checkpoint steps; a value the user set is kept."""
    from engine.training.schedule import eval_interval

    cfg = RunConfig()
    assert cfg.training.steps_per_eval is None
    for steps in (20, 102, 144, 1000, 5000, 123_457):
        every = eval_interval(cfg, steps)
        assert 10 <= steps / every <= 20, (steps, every)
    assert cfg.training.save_every % eval_interval(cfg, 1000) == 0  # checkpoints get a loss
    assert eval_interval(cfg, 3) == 1
    cfg.training.steps_per_eval = 200
    assert eval_interval(cfg, 102) == 200
    # The field takes an empty value from YAML, the GUI and the CLI alike.
    assert (
        RunConfig.from_dict({"training": {"steps_per_eval": None}}).training.steps_per_eval is None
    )


def test_batch_size_means_examples_per_step_by_default(stories_path):
    """issue 22 item 4: with default settings, `batch_size 4` on the 288-example bank sample is 4
    examples per step: 72 steps per epoch, 144 for 2 epochs (budget batching had made it ~6 per
    step and fewer steps). Budget batching, when asked for, says what it does to the steps."""
    from engine.batching import choose_batching
    from engine.training.memory import train_lengths
    from engine.training.schedule import batch_note, total_steps

    cfg = _bank_config(stories_path)
    lengths = train_lengths(cfg, stories_path)
    assert len(lengths) == 288
    mode, size, _ = choose_batching(lengths, 4, cfg.data.packing, "llama")
    assert mode == "fixed"
    assert total_steps(cfg, len(lengths), math.ceil(len(lengths) / 4)) == 144
    assert (
        batch_note(cfg, mode, size, 288, 72, 144) == "Batch size 4: 4 examples per step, 144 steps."
    )

    note = batch_note(cfg, "budget", 512, 288, 51, 102)
    assert "about 5.6 examples per step" in note and "102 steps instead of 144" in note


@pytest.mark.slow
def test_started_event_and_cli_say_what_the_batch_size_means(stories_path, tmp_path):
    """issue 22 items 4 and 5: a real run's `started` event and CLI summary carry the batch note
    with the step count, and the evaluation interval chosen from the run's length."""
    from engine import events
    from engine.train import run

    lines = BANK.joinpath("train.jsonl").read_text().splitlines()
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(lines[:80]) + "\n")
    (data / "valid.jsonl").write_text("\n".join(lines[80:84]) + "\n")
    cfg = _bank_config(stories_path)
    cfg.data.path = str(data)
    cfg.training.epochs = 1
    cfg.training.report_utilisation = False
    got: list[dict] = []
    printed = tmp_path / "console.txt"
    with open(printed, "w") as stream:
        sink = events.Fanout([got.append, events.ConsolePrinter(stream)])
        assert run(cfg, tmp_path / "run", sink) == "completed"
    started = next(e for e in got if e["event"] == "started")
    assert started["total_steps"] == 20
    assert started["config"]["batch_note"] == "Batch size 4: 4 examples per step, 20 steps."
    assert started["config"]["steps_per_eval_chosen"] is True
    evals = [e["step"] for e in got if e["event"] == "eval" and e["step"] > 0]
    assert 10 <= len(evals) <= 20
    assert "Batch size 4: 4 examples per step, 20 steps." in printed.read_text()


# ---------------------------------------------------------------------------------------------
# issue 22 item 6: small things a new user trips over


def test_packing_off_in_yaml_is_accepted(tmp_path):
    """issue 22 item 6: YAML reads an unquoted `off` as False; `packing: off` still means off."""
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  packing: off\n")
    assert RunConfig.load(path).data.packing == "off"
    path.write_text("data:\n  packing: on\n")
    assert RunConfig.load(path).data.packing == "on"


def _cli(capsys, *argv) -> tuple[int, str]:
    from engine.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().out


def test_data_commands_take_library_model_names_and_dataset_names(stories_path, capsys):
    """issue 22 item 6: `data inspect/show --model NAME` with a library model's name, and
    `data show` with a dataset's name (not only its id)."""
    from engine.models.library import import_model

    import_model(stories_path, name="stories")
    code, out = _cli(capsys, "data", "import", str(BANK), "--name", "bank", "--json")
    assert code == 0
    code, out = _cli(capsys, "data", "inspect", str(BANK), "--model", "stories", "--json")
    assert code == 0
    stats = json.loads(out)["tokens"]["splits"]["train"]
    assert isinstance(stats["p95"], int) and isinstance(stats["median"], int)
    code, out = _cli(capsys, "data", "show", "bank", "--model", "stories", "--json")
    assert code == 0 and json.loads(out)["length"] > 0


def test_token_percentiles_are_whole_numbers():
    """issue 22 item 6: "p95 114.65" tokens becomes a length an example really has."""
    import numpy as np

    from engine.data.report import TokenStats

    lengths = np.arange(1, 22) * 6 + 1
    s = TokenStats.of(lengths, lengths // 2, 2048)
    assert (s.median, s.p95) == (67, 121) and isinstance(s.p95, int)


def test_runs_command_lists_shows_and_deletes(capsys, monkeypatch):
    """issue 22 item 6: `lathe-engine runs list/show/delete` with --json; delete asks first."""
    import io

    from engine.runs import create_run, write_status

    cfg = RunConfig()
    cfg.model.path, cfg.data.path = "some-model", "some-data"
    run_dir = create_run(cfg)
    write_status(run_dir, "completed", step=12, total_steps=12, best_val_loss=1.25, created=1.0)
    code, out = _cli(capsys, "runs", "list", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [run_dir.name]
    code, out = _cli(capsys, "runs", "show", run_dir.name, "--json")
    shown = json.loads(out)
    assert (shown["state"], shown["step"], shown["best_val_loss"]) == ("completed", 12, 1.25)
    code, out = _cli(capsys, "runs", "show", run_dir.name)
    assert "completed" in out and "1.2500" in out

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: no one to ask
    code, _ = _cli(capsys, "runs", "delete", run_dir.name)
    assert code != 0 and run_dir.exists()
    code, out = _cli(capsys, "runs", "delete", run_dir.name, "--yes", "--json")
    assert code == 0 and json.loads(out)["deleted"] == run_dir.name and not run_dir.exists()


def test_chat_compare_defaults_to_greedy():
    """issue 22 item 6: compare-mode answers are reproducible by default (temperature 0)."""
    from engine.cli import build_parser
    from engine.commands.chat import chat_settings

    parser = build_parser()
    compare = parser.parse_args(["chat", "--adapter", "r", "--compare"])
    assert chat_settings(compare).temperature == 0.0
    assert chat_settings(parser.parse_args(["chat", "--model", "m"])).temperature == 0.7
    chosen = parser.parse_args(["chat", "--adapter", "r", "--compare", "--temperature", "0.5"])
    assert chat_settings(chosen).temperature == 0.5


def test_smollm2_mixed_quantization_and_real_parameter_count(smollm2_path):
    """issue 22 item 6: `models inspect` names the 8-bit embedding beside the 4-bit layers, and
    the `started` event's parameter count unpacks quantized weights (134.5M, not 22.4M)."""
    from mlx_lm.utils import load_model

    from engine.models.info import inspect_model
    from engine.training.method import parameter_count

    label = inspect_model(smollm2_path).quantization_label
    assert label.startswith("mixed: 4-bit (group size 32)")
    assert "8-bit (group size 32) for model.embed_tokens" in label
    model, _ = load_model(smollm2_path, lazy=True)
    assert parameter_count(model) == 134_515_008


# ---------------------------------------------------------------------------------------------
# issue 22 item 3: --write-mlx-lm-config writes the same job


def _text_dataset(folder: Path, n_train: int = 24, n_valid: int = 4) -> Path:
    animals = "girl boy cat dog bird fish frog bear duck fox owl bee cow pig hen ant".split()
    folder.mkdir(parents=True)
    rows = [
        {"text": f"Once upon a time a little {animals[i % 16]} found {i} shiny stones in the park."}
        for i in range(n_train + n_valid)
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    (folder / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:]))
    return folder


def test_written_mlx_lm_config_describes_the_same_job(stories_path, tmp_path, capsys):
    """issue 22 item 3: epochs become the iterations the real batch plan gives, and an imported
    dataset's id becomes its folder (mlx_lm.lora cannot resolve ids)."""
    import yaml

    from engine.data import import_dataset

    data = _text_dataset(tmp_path / "stories-data")
    report = import_dataset(data, name="stories-text")
    out = tmp_path / "job.yaml"
    code, _ = _cli(
        capsys,
        *("train", "--model", str(stories_path), "--data", report.dataset_id),
        *("--epochs", "2", "--batch-size", "4", "--write-mlx-lm-config", str(out)),
    )
    assert code == 0
    job = yaml.safe_load(out.read_text())
    assert job["iters"] == 12  # 24 examples / 4 per step x 2 epochs (not mlx_lm's default 1000)
    assert job["data"] == report.dataset_path and (Path(job["data"]) / "train.jsonl").is_file()
    assert job["num_layers"] == -1  # stories260K has 5 layers; mlx_lm.lora refuses 16
    assert job["mask_prompt"] is False  # plain text: nothing to mask, and mlx_lm.lora refuses it


@pytest.mark.slow
def test_lathe_and_mlx_lm_train_the_same_number_of_steps(stories_path, tmp_path, capsys):
    """issue 22 item 3: the written file, run by `python -m mlx_lm lora -c FILE`, trains as many
    steps as Lathe does with the same settings."""
    import re

    from engine.train import run

    data = _text_dataset(tmp_path / "data", n_train=20)
    cfg = RunConfig()
    cfg.model.path, cfg.data.path = str(stories_path), str(data)
    cfg.training.epochs, cfg.training.batch_size = 2, 4
    cfg.training.report_utilisation = False
    config_file = tmp_path / "run.yaml"
    config_file.write_text(cfg.to_yaml())
    job = tmp_path / "job.yaml"
    code, _ = _cli(capsys, "train", "-c", str(config_file), "--write-mlx-lm-config", str(job))
    assert code == 0

    got: list[dict] = []
    assert run(cfg, tmp_path / "run", got.append) == "completed"
    lathe_steps = next(e for e in got if e["event"] == "finished")["summary"]["steps"]
    assert lathe_steps == 10

    done = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "lora", "-c", str(job)]
        + ["--adapter-path", str(tmp_path / "mlx-adapters")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    progress = re.findall(r"(\d+)/(\d+)", text)
    assert progress and progress[-1] == (str(lathe_steps), str(lathe_steps)), text[-1500:]
    assert (tmp_path / "mlx-adapters" / "adapters.safetensors").is_file()
