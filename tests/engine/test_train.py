"""Training engine: learning, adapters mlx-lm loads, the four mlx-lm fixes, resume, stop, NaN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.config import RunConfig
from engine.runs import load_run
from tests.helpers import (
    FACTS,
    completion_data,
    make_config,
    train_run,
    variable_chat_data,
    write_jsonl,
)

# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_a_tiny_model_lowers_the_loss(tiny_chat_model, tmp_path):
    data = variable_chat_data(tmp_path / "chat.jsonl", n=24)
    status, run_dir, rec = train_run(
        make_config(tiny_chat_model, data, iters=40, learning_rate=3e-3)
    )
    assert status == "completed"
    evals = [e["val_loss"] for e in rec.of("eval")]
    assert evals[-1] < evals[0] * 0.8, evals
    progress = [e["train_loss"] for e in rec.of("progress")]
    assert progress[-1] < progress[0]
    assert load_run(run_dir).state == "completed"


@pytest.fixture(scope="module")
def stories_run(stories_path, tmp_path_factory):
    """stories260K trained on a small prompt/completion set (shared by several tests)."""

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: monkeypatch is per test
        mp.setenv("LATHE_HOME", str(home))
        data = completion_data(tmp_path_factory.mktemp("data"))
        cfg = make_config(
            stories_path, data, iters=300, learning_rate=5e-4, steps_per_eval=100, save_every=150
        )
        cfg.lora.rank = 16
        status, run_dir, rec = train_run(cfg)
    assert status == "completed", rec.of("error")
    return run_dir, rec


def _greedy_answer(model, tokenizer, template: str, question: str) -> str:
    import mlx_lm

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        chat_template=template,
        add_generation_prompt=True,
        return_dict=False,
    )
    return mlx_lm.generate(model, tokenizer, prompt, max_tokens=24)


@pytest.mark.slow
def test_stories260k_learns_to_answer_trained_questions(stories_run, stories_path):
    import mlx_lm

    run_dir, _ = stories_run
    template = (run_dir / "chat_template.jinja").read_text()
    base, tok = mlx_lm.load(str(stories_path))
    tuned, tok2 = mlx_lm.load(str(stories_path), adapter_path=str(run_dir / "adapters"))
    question, answer = FACTS[0]
    assert not _greedy_answer(base, tok, template, question).startswith(answer)
    assert _greedy_answer(tuned, tok2, template, question).startswith(answer)


def test_saved_adapter_loads_in_mlx_lm_and_generates(stories_run, stories_path):
    import mlx_lm

    run_dir, _ = stories_run
    for folder in (run_dir / "adapters", *sorted((run_dir / "checkpoints").iterdir())):
        model, tok = mlx_lm.load(str(stories_path), adapter_path=str(folder))
        text = mlx_lm.generate(model, tok, "Once upon a time", max_tokens=8)
        assert isinstance(text, str) and text


def test_default_template_is_recorded_for_base_models(stories_run):
    run_dir, rec = stories_run
    started = rec.of("started")[0]
    assert started["config"]["chat_template"] == "default"
    assert "### Answer:" in (run_dir / "chat_template.jinja").read_text()
    assert any("no chat template" in e["message"] for e in rec.of("log"))


# -- the four mlx-lm weaknesses ----------------------------------------------------------------


def _encoded(tokenizer, path: Path, mask_prompt=True):
    from engine.data import load_splits
    from engine.encode import Encoder

    enc = Encoder(tokenizer, mask_prompt=mask_prompt, max_seq_length=2048)
    return [enc.encode(r) for r in load_splits(path, valid_fraction=0).train]


def test_length_grouping_keeps_padding_under_ten_percent_where_mlx_lm_wastes_half(
    tiny_chat_model, tmp_path
):
    """mlx-lm 0.32.2 sorts by the number of keys of each record (not tokens) on the lora path."""
    import mlx_lm
    from mlx_lm.tuner.datasets import CacheDataset, create_dataset
    from mlx_lm.tuner.trainer import iterate_batches

    from engine.batching import collate, padding_fraction, plan_epoch

    _, tok = mlx_lm.load(str(tiny_chat_model))
    data = variable_chat_data(tmp_path / "chat.jsonl", n=400)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    ours = _encoded(tok, data)

    for batch_size in (4, 8):
        batches = [
            collate([ours[i] for i in idx])
            for idx in plan_epoch([len(e) for e in ours], batch_size, 0, 0)
        ]
        lathe_pad = padding_fraction(batches)

        class Args:
            mask_prompt = True

        ds = CacheDataset(create_dataset(rows, tok, Args()))
        real = total = 0
        for i, (batch, lengths) in enumerate(iterate_batches(ds, batch_size, 2048, seed=0)):
            real += int(np.array(lengths)[:, 1].sum())
            total += batch.size
            if i > 100:
                break
        mlx_pad = 1 - real / total
        assert lathe_pad < 0.10, lathe_pad
        assert mlx_pad > 0.30, mlx_pad  # the weakness being fixed is real on this data


def test_loss_mask_covers_exactly_the_answers_and_nothing_past_the_end(tiny_chat_model):
    import mlx_lm

    from engine.batching import collate
    from engine.encode import Encoder

    _, tok = mlx_lm.load(str(tiny_chat_model))
    enc = Encoder(tok)
    short = enc.encode({"prompt": "Hi", "completion": "Hello there."})
    long = enc.encode(
        {"prompt": "Tell me about the fee for transfers please", "completion": "Five euros."}
    )
    trained_text = tok.decode([t for t, w in zip(short.tokens, short.weights) if w])
    assert trained_text.startswith("Hello there.") and "Hi" not in trained_text
    batch = collate([short, long])
    # Row 0 is padded: no weight at or past its real length.
    assert batch.weights[0, len(short.tokens) :].sum() == 0
    assert batch.trained_tokens == short.trained_tokens + long.trained_tokens
    # mlx-lm's default_loss mask for the same row also covers the first padding position.
    steps = np.arange(1, batch.tokens.shape[1])
    offset = short.weights.index(1)
    mlx_mask = (steps >= offset) & (steps <= len(short.tokens))
    ours = batch.weights[0, 1:] > 0
    assert mlx_mask.sum() == ours.sum() + 1
    assert mlx_mask[len(short.tokens) - 1] and not ours[len(short.tokens) - 1]


@pytest.mark.slow
def test_resume_continues_with_the_same_losses_as_an_uninterrupted_run(tiny_chat_model, tmp_path):
    data = variable_chat_data(tmp_path / "chat.jsonl", n=40)
    kwargs = dict(iters=24, steps_per_report=1, save_every=8, steps_per_eval=8)
    cfg = make_config(tiny_chat_model, data, **kwargs)
    cfg.lora.dropout = 0.1  # exercises the RNG state too
    _, _, full = train_run(cfg)

    cfg2 = make_config(tiny_chat_model, data, **kwargs)
    cfg2.lora.dropout = 0.1
    status, run_dir, first = train_run(cfg2, stop_after=13)  # stops after step 13 (between saves)
    assert status == "stopped"
    assert load_run(run_dir).checkpoints[-1] == 13
    status, _, second = train_run(cfg2, resume_dir=run_dir)
    assert status == "completed"
    assert second.of("started")[0]["resumed_from"] == 13

    want = {e["step"]: e["train_loss"] for e in full.of("progress")}
    got = {e["step"]: e["train_loss"] for e in first.of("progress") + second.of("progress")}
    assert sorted(got) == sorted(want)
    for step in want:
        assert abs(got[step] - want[step]) < 1e-4, (step, got[step], want[step])
    val_full = {e["step"]: e["val_loss"] for e in full.of("eval")}
    val_resumed = {e["step"]: e["val_loss"] for e in second.of("eval")}
    for step, value in val_resumed.items():
        assert abs(value - val_full[step]) < 1e-4


@pytest.mark.slow
def test_validation_uses_the_same_examples_every_time(tiny_chat_model, tmp_path):
    import mlx_lm

    from engine.batching import fixed_eval_batches
    from engine.training.loop import evaluate

    model, tok = mlx_lm.load(str(tiny_chat_model))
    ours = _encoded(tok, variable_chat_data(tmp_path / "v.jsonl", n=60))
    a = fixed_eval_batches(ours, 4, 5, seed=3)
    b = fixed_eval_batches(ours, 4, 5, seed=3)
    assert len(a) == 5 and all((x.tokens == y.tokens).all() for x, y in zip(a, b))
    assert evaluate(model, a) == evaluate(model, b)
    # The run reports the same subset size at every evaluation; with an untrained (lr ~ 0) model
    # the validation loss is then identical at each evaluation.
    status, _, rec = train_run(
        make_config(tiny_chat_model, tmp_path / "v.jsonl", iters=20, learning_rate=1e-12)
    )
    vals = [e["val_loss"] for e in rec.of("eval")]
    assert len(vals) >= 3 and max(vals) - min(vals) < 1e-5


# -- contracts ---------------------------------------------------------------------------------


def test_nan_loss_stops_with_an_error_and_keeps_the_last_good_checkpoint(
    tiny_chat_model, tmp_path, monkeypatch
):
    import mlx.core as mx
    import mlx.optimizers as optim

    import engine.training.method as train_mod

    data = variable_chat_data(tmp_path / "chat.jsonl", n=24)
    cfg = make_config(tiny_chat_model, data, iters=30, save_every=5)

    def poisoned_optimizer(config):
        # A learning rate that turns NaN at the 7th update poisons the weights the way a blow-up
        # does; it lives inside the compiled step, so it fires whatever gets traced when.
        return optim.Adam(
            learning_rate=lambda step: mx.where(step >= 6, mx.array(float("nan")), mx.array(1e-3))
        )

    monkeypatch.setattr(train_mod, "build_optimizer", poisoned_optimizer)
    status, run_dir, rec = train_run(cfg)
    assert status == "failed"
    error = rec.of("error")[0]
    assert error["kind"] == "nan_loss" and "learning rate" in error["hint"].lower()
    info = load_run(run_dir)
    assert info.state == "failed" and info.checkpoints == [5]
    from safetensors.numpy import load_file

    weights = load_file(str(run_dir / "adapters" / "adapters.safetensors"))
    assert all(np.isfinite(w).all() for w in weights.values())


def test_run_reports_utilisation_against_a_plain_matmul(tiny_chat_model, tmp_path):
    data = variable_chat_data(tmp_path / "chat.jsonl", n=24)
    status, _, rec = train_run(make_config(tiny_chat_model, data, iters=6, report_utilisation=True))
    summary = rec.of("finished")[0]["summary"]
    assert summary["achieved_gflops"] > 0 and summary["reference_gflops"] > 0
    assert (
        0 < summary["utilisation"] < 2
    )  # a fraction of the machine's matmul speed (noisy, never 0)
    assert any("GFLOP/s" in e["message"] for e in rec.of("log"))


def test_flop_count_matches_the_textbook_formula_for_a_dense_llama(tiny_chat_model):
    import mlx_lm

    from engine.training.utilisation import flop_model

    model, _ = mlx_lm.load(str(tiny_chat_model))
    fm = flop_model(model)
    a = model.args
    kv = a.num_key_value_heads * (a.hidden_size // a.num_attention_heads)
    per_layer = (
        a.hidden_size * (2 * a.hidden_size + 2 * kv) + 3 * a.hidden_size * a.intermediate_size
    )
    assert fm.per_layer_linear == [per_layer] * a.num_hidden_layers
    n = sum(fm.per_layer_linear) + fm.head
    # Frozen-weight LoRA training of every layer at zero context: 2N forward + 2N backward.
    assert fm.training_flops_per_token(a.num_hidden_layers, context=0) == 4 * n
    assert fm.training_flops_per_token(
        a.num_hidden_layers, context=0, full=True
    ) == 4 * n + 2 * sum(fm.per_layer_linear)


def test_reference_matmul_weighs_each_shape_as_often_as_the_model_multiplies_it(
    tiny_chat_model, monkeypatch
):
    """Issue 21 (utilisation): the reference pass multiplies every layer's projections, not each
    distinct shape once (which let the output layer's one large matmul stand for most of it)."""
    import mlx_lm

    import engine.training.utilisation as perf

    model, _ = mlx_lm.load(str(tiny_chat_model))
    fm = perf.flop_model(model)
    a = model.args
    # q and o are hidden x hidden in every layer: 2 per layer
    assert fm.counts[(a.hidden_size, a.hidden_size)] == 2 * a.num_hidden_layers
    assert sum(i * o * c for (i, o), c in fm.counts.items()) == sum(fm.per_layer_linear) + fm.head
    # With every call taking the same time, the reference is the FLOP-weighted pass over them all.
    ticks = iter(range(10**9))
    monkeypatch.setattr(perf.time, "perf_counter", lambda: float(next(ticks)))
    ref = perf.reference_flops_per_second(fm.shapes, 8, seconds=0, counts=fm.counts)
    calls = sum(fm.counts.values())
    assert ref == pytest.approx(2 * 8 * (sum(fm.per_layer_linear) + fm.head) / calls)


def test_config_reads_mlx_lm_yaml_and_parses_numbers_deliberately(tmp_path):
    from engine.config import ConfigError

    path = tmp_path / "lora.yaml"
    path.write_text(
        "model: mlx-community/Qwen2.5-0.5B-Instruct-4bit\ntrain: true\nfine_tune_type: dora\n"
        "data: data/\nnum_layers: 8\nbatch_size: 2\niters: 600\nlearning_rate: 1e-5\n"
        "lora_parameters:\n  rank: 16\n  scale: 10.0\n  dropout: 0.05\n  keys: [self_attn.q_proj]\n"
        "lr_schedule:\n  name: cosine_decay\n  warmup: 10\n  arguments: [1e-5, 600, 1e-7]\n"
        "mask_prompt: true\ngrad_checkpoint: true\ngrad_accumulation_steps: 2\nmax_seq_length: 1024\n"
        "optimizer: adamw\noptimizer_config:\n  adamw:\n    weight_decay: 1e-2\n"
        "wandb_project: nope\n"
    )
    warnings: list[str] = []
    cfg = RunConfig.load(path, warnings)
    assert cfg.training.learning_rate == pytest.approx(1e-5) and isinstance(
        cfg.training.learning_rate, float
    )
    assert (
        cfg.lora.fine_tune_type == "dora"
        and cfg.lora.rank == 16
        and cfg.lora.keys == ["self_attn.q_proj"]
    )
    assert cfg.training.lr_schedule["arguments"] == [1e-5, 600, 1e-7]
    assert cfg.training.optimizer_config == {"weight_decay": 0.01}
    assert cfg.training.grad_accumulation_steps == 2 and cfg.data.max_seq_length == 1024
    assert any("wandb_project" in w for w in warnings)
    # Round trip through Lathe's own YAML and back to an mlx_lm config.
    again = RunConfig.from_dict(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again == cfg
    flat = cfg.to_mlx_lm_dict()
    assert flat["lora_parameters"]["rank"] == 16 and flat["learning_rate"] == pytest.approx(1e-5)
    assert RunConfig.from_dict(flat).lora == cfg.lora
    with pytest.raises(ConfigError, match="training.batch_size"):
        RunConfig.from_dict({"training": {"batch_size": "four"}})


def test_mlx_lm_accepts_the_config_lathe_writes(tmp_path):
    import mlx_lm.lora as lora

    cfg = make_config(Path("model"), Path("data"), iters=5)
    path = tmp_path / "mlx.yaml"
    from engine.workspace import write_yaml_atomic

    write_yaml_atomic(path, cfg.to_mlx_lm_dict())
    import yaml

    loaded = yaml.load(path.read_text(), lora.yaml_loader)
    parser = lora.build_parser()
    known = {a.dest for a in parser._actions} | set(lora.CONFIG_DEFAULTS)
    assert set(loaded) <= known, set(loaded) - known


def test_early_stopping_stops_a_run_whose_validation_loss_rises(tiny_chat_model, tmp_path):
    # Training and validation sets that disagree: learning one makes the other worse.
    rows = [{"prompt": f"Question {i}?", "completion": "Yes indeed."} for i in range(16)]
    write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(
        tmp_path / "d" / "valid.jsonl",
        [{"prompt": f"Question {i}?", "completion": "No, never at all."} for i in range(8)],
    )
    cfg = make_config(
        tiny_chat_model,
        tmp_path / "d",
        iters=200,
        learning_rate=3e-3,
        steps_per_eval=5,
        early_stopping_patience=2,
    )
    status, run_dir, rec = train_run(cfg)
    assert status == "completed"
    finished = rec.of("finished")[0]
    assert finished["summary"]["stopped_early"] is True
    assert finished["summary"]["steps"] < 200
    vals = [e["val_loss"] for e in rec.of("eval")]
    best = min(vals)
    assert vals[-1] > best and vals[-2] > best  # two evaluations without improvement
    assert finished["summary"]["best_val_step"] == rec.of("eval")[vals.index(best)]["step"]


def test_utilisation_of_a_quantized_model_is_against_quantized_matmul(tiny_chat_model):
    """Issue 21: a 4-bit model's utilisation is measured against MLX's quantized matmul on its own
    layer shapes (bits, group size), not against a float matmul it never runs."""
    import mlx.nn as nn
    import mlx_lm

    from engine.training.utilisation import flop_model, utilisation

    model, _ = mlx_lm.load(str(tiny_chat_model))
    assert flop_model(model).quantized == {}
    nn.quantize(model, group_size=32, bits=4)
    fm = flop_model(model)
    assert set(fm.quantized) == set(fm.shapes)  # every layer and the tied output layer
    assert set(fm.quantized.values()) == {(4, 32, "affine")}
    u = utilisation(model, len(model.layers), False, 4096, 1.0, 64, 256)
    assert u["reference"] == "quantized matmul" and u["reference_gflops"] > 0


def test_lora_init_is_the_draw_mlx_lm_lora_makes_for_the_same_seed(tiny_chat_model, tmp_path):
    """Issue 21 (validation-loss parity): for the same seed Lathe starts from the adapter
    mlx_lm.lora starts from (mlx-lm seeds MLX right before drawing it; Lathe seeded before loading
    the model, whose construction draws too, so its adapter was another draw)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    data = variable_chat_data(tmp_path / "chat.jsonl", n=16)
    cfg = make_config(tiny_chat_model, data, iters=1, learning_rate=1e-12, seed=3)
    status, run_dir, _ = train_run(cfg)
    assert status == "completed"
    lathe = mx.load(str(run_dir / "adapters" / "adapters.safetensors"))

    model, _ = load(str(tiny_chat_model))
    mx.random.seed(3)  # what mlx_lm.lora's train_model does before linear_to_lora_layers
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": 8, "scale": 20.0, "dropout": 0.0})
    peer = dict(tree_flatten(model.trainable_parameters()))
    a_keys = [k for k in peer if k.endswith("lora_a")]
    assert a_keys and set(a_keys) <= set(lathe)
    for k in a_keys:  # one Adam step of 1e-12 moves the init by ~1e-12
        assert mx.allclose(lathe[k], peer[k], atol=1e-8).item(), k
