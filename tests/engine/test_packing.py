"""Sequence packing: several examples per row, with results equal to unpacked training."""

from __future__ import annotations

import numpy as np
import pytest

from engine.batching import collate, collate_packed, pack_rows, plan_epoch_packed, should_pack
from tests.engine.test_train import make_config, train_run, write_jsonl


def _examples(tokenizer):
    from engine.encode import Encoder

    enc = Encoder(tokenizer, mask_prompt=True)
    ex = [enc.encode({"prompt": f"Question {i} about the fee{'!' * i}?", "completion": "Answer " * (i + 1)})
          for i in range(6)]
    ex.append(enc.encode({"text": "Once upon a time there was a cat."}))
    ex.append(enc.encode({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                       {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}))
    return ex


@pytest.mark.parametrize("which", ["stories", "qwen2"])
def test_packed_batch_loss_equals_the_loss_of_the_same_examples_unpacked(which, request):
    import mlx.core as mx
    import mlx_lm

    from engine.trainer import masked_loss

    path = request.getfixturevalue("stories_path" if which == "stories" else "tiny_qwen_model")
    model, tok = mlx_lm.load(str(path))
    ex = _examples(tok)
    unpacked = collate(ex)
    packed = collate_packed([ex[:3], ex[3:6], ex[6:]])
    assert packed.tokens.shape[0] == 3 and packed.examples == len(ex)
    l1, n1 = masked_loss(model, mx.array(unpacked.tokens), mx.array(unpacked.weights))
    l2, n2 = masked_loss(model, mx.array(packed.tokens), mx.array(packed.weights), mx.array(packed.segments))
    assert n1.item() == n2.item()
    assert abs(l1.item() - l2.item()) < 1e-4 * max(1.0, abs(l1.item()))
    # Without the block-diagonal mask the same packed row gives a different loss: the mask matters.
    l3, _ = masked_loss(model, mx.array(packed.tokens), mx.array(packed.weights))
    assert abs(l3.item() - l1.item()) > 1e-3


def test_rows_hold_every_example_once_and_fit_the_row_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=500)
    rows = pack_rows(lengths, 256, seed=1, epoch=0)
    flat = np.concatenate(rows)
    assert sorted(flat.tolist()) == list(range(500))
    assert all(lengths[r].sum() <= 256 for r in rows)
    fill = lengths.sum() / (len(rows) * 256)
    assert fill > 0.9, fill
    # Deterministic per (seed, epoch), different between epochs.
    assert all((a == b).all() for a, b in zip(rows, pack_rows(lengths, 256, seed=1, epoch=0)))
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(rows, pack_rows(lengths, 256, seed=1, epoch=1)))
    batches = plan_epoch_packed(lengths, 4, 256, seed=1, epoch=0)
    assert sum(len(b) for b in batches) == len(rows)


def test_auto_packing_decides_by_example_length_data_size_and_architecture():
    short = [40] * 5000
    assert should_pack(short, 4, 1024, "auto", "llama")[0]
    assert not should_pack([600] * 5000, 4, 1024, "auto", "llama")[0]  # long examples
    assert not should_pack([40] * 100, 4, 1024, "auto", "llama")[0]  # too few steps per epoch
    assert not should_pack(short, 4, 1024, "auto", "mamba")[0]  # attention mask not supported
    assert should_pack([40] * 100, 4, 1024, "on", "qwen2")[0]
    assert not should_pack(short, 4, 1024, "off", "llama")[0]


def test_training_with_packing_learns_and_resumes_exactly(tiny_chat_model, tmp_path):
    rows = [{"prompt": f"What is {i} plus one?", "completion": f"It is {i + 1}."} for i in range(60)]
    data = write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "valid.jsonl", rows[:8])

    def cfg():
        c = make_config(tiny_chat_model, data.parent, iters=16, learning_rate=3e-3, steps_per_report=1,
                        save_every=8, steps_per_eval=8)
        c.data.packing, c.data.pack_length = "on", 128
        return c

    status, _, full = train_run(cfg())
    assert status == "completed" and full.of("started")[0]["config"]["packing"] is True
    assert full.of("eval")[-1]["val_loss"] < full.of("eval")[0]["val_loss"]
    assert full.of("progress")[-1]["padding_fraction"] < 0.2
    status, run_dir, first = train_run(cfg(), stop_after=5)
    assert status == "stopped"
    _, _, second = train_run(cfg(), resume_dir=run_dir)
    want = {e["step"]: e["train_loss"] for e in full.of("progress")}
    got = {e["step"]: e["train_loss"] for e in first.of("progress") + second.of("progress")}
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in want) < 1e-4
