"""A real chat model learns a bank's facts through Lathe's own CLI (issue 18, item 5).

SmolLM2-135M-Instruct (4-bit, from ../shared) is trained by `python -m engine train` with the
demo's settings (engine.demo.apply_chat_demo_settings) and a bounded number of steps on the bundled
bank-support sample's conversations about six facts (one exchange each: the whole sample would not
fit the suite's time on a 2-core CPU). `python -m engine eval run` then asks questions worded unlike
any training or validation prompt, base and tuned side by side, scored with the `contains` metric
against the fact each answer must hold; `python -m engine export fuse --dequantize` must answer
token for token like base + adapter. On a CPU all of it computes in float32 (engine.models.precision);
without that a single training step of this model took over 12 minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "resources" / "samples" / "bank-support"

# The six facts trained (answers as in resources/samples/make_bank_support.py) and, for each, a
# held-out question and the fact its answer must contain.
HELD_OUT = [
    (
        "An international transfer costs 5 euros, plus the exchange rate margin of 0.5%.",
        "What's the charge for wiring money to a bank in another country?",
        "5 euros",
    ),
    (
        "The Harbor current account costs 3 euros a month, and it is free for customers under 26.",
        "How much do you charge every month just for having a current account?",
        "3 euros",
    ),
    (
        "A replacement card costs 10 euros, but it is free if your card was stolen and you reported it.",
        "I lost my debit card somewhere. What will a new one cost me?",
        "10 euros",
    ),
    (
        "You can transfer up to 10,000 euros a day in the app. For more, call us or visit a branch.",
        "What's the largest amount I'm allowed to send out in a single day?",
        "10,000 euros",
    ),
    (
        "Phone support is open Monday to Saturday, 8 am to 8 pm. Chat in the app is open around the clock.",
        "Until what time can I reach you by phone?",
        "8 pm",
    ),
    (
        "The Harbor savings account pays 2.1% a year, paid monthly, with no minimum balance.",
        "If I put money in a savings account with you, what interest do I get?",
        "2.1%",
    ),
]
ON_TOPIC = ("euro", "transfer", "card", "account", "%", "phone", "pm", "interest", "day", "free")
STEPS = 24
MAX_TOKENS = 40


def _subset(folder: Path) -> Path:
    """The sample's conversations whose first answer is one of the six facts, first exchange only
    (without duplicates: a conversation with a follow-up turn cut short repeats a plain one)."""
    facts = {answer for answer, _, _ in HELD_OUT}
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        rows = []
        for line in (SAMPLE / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            messages = json.loads(line)["messages"]
            first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
            row = {"messages": messages[: first + 1]}
            if messages[first]["content"] in facts and row not in rows:
                rows.append(row)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _cli(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, LATHE_HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def trained(smollm2_path, tmp_path_factory):
    """(home, run folder, seconds per phase): SmolLM2 trained through `python -m engine train`."""
    from engine.config import RunConfig
    from engine.demo import apply_chat_demo_settings

    root = tmp_path_factory.mktemp("bank-facts")
    home = root / "lathe-home"
    cfg = RunConfig()
    cfg.name = "bank-facts"
    cfg.model.path = str(smollm2_path)
    cfg.data.path = str(_subset(root / "data"))
    apply_chat_demo_settings(cfg)
    cfg.training.iters = STEPS
    cfg.training.save_every = STEPS
    cfg.training.steps_per_eval = STEPS
    cfg.training.golden_prompts = []  # the evaluation below asks the questions
    cfg.training.general_check = False  # the forgetting check has tests of its own (test_eval)
    cfg.data.val_batches = 1
    cfg.training.report_utilisation = False
    config = root / "run.yaml"
    config.write_text(cfg.to_yaml())

    started = time.time()
    done = _cli(home, "train", "--config", str(config), "--events")
    seconds = {"train": time.time() - started}
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    finished = [e for e in events if e["event"] == "finished"]
    assert done.returncode == 0 and finished and finished[-1]["status"] == "completed", done.stderr[
        -2000:
    ] + "".join(json.dumps(e) + "\n" for e in events[-5:])
    start = next(e for e in events if e["event"] == "started")
    assert start["config"]["method"] == "qlora"
    if start["config"]["backend"] == "cpu":
        assert start["config"]["compute_dtype"] == "float32"
    return home, Path(start["run_dir"]), seconds, events


def test_smollm2_learns_the_banks_facts_and_answers_new_questions_with_them(trained, tmp_path):
    """Tuned `contains` score >= base + 50 points on held-out paraphrases; fluent answers."""
    home, run_dir, seconds, _ = trained
    prompts = tmp_path / "held-out.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": q, "reference": fact}) + "\n" for _, q, fact in HELD_OUT)
    )
    started = time.time()
    done = _cli(
        home,
        "eval",
        "run",
        str(run_dir),
        "--prompts",
        str(prompts),
        "--metric",
        "contains",
        "--no-loss",
        "--no-general",
        "--max-tokens",
        str(MAX_TOKENS),
        "--json",
    )
    seconds["eval"] = time.time() - started
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    contains = next(m for m in results["metrics"] if m["name"] == "contains")

    table = ["| question | base | tuned |", "|---|---|---|"]
    for ex in results["examples"]:
        row = [ex["prompt"], ex["base"]["output"], ex["tuned"]["output"]]
        table.append("| " + " | ".join(c.replace("\n", " ").replace("|", "/") for c in row) + " |")
    table.append(f"| contains | {contains['base']:.0%} | {contains['tuned']:.0%} |")
    print("\n".join(table))
    print({k: round(v, 1) for k, v in seconds.items()})

    assert contains["tuned"] - contains["base"] >= 0.5, "\n".join(table)
    for ex in results["examples"]:
        tuned = ex["tuned"]
        assert tuned["stop_reason"] == "eos", f"not finished within {MAX_TOKENS} tokens: {tuned}"
        text = tuned["output"].lower()
        assert any(word in text for word in ON_TOPIC), f"off topic: {tuned['output']!r}"
        assert len(set(text.split())) >= 4, f"not a sentence: {tuned['output']!r}"


def test_the_fused_dequantized_model_answers_token_for_token_like_base_plus_adapter(trained):
    home, run_dir, seconds, _ = trained
    started = time.time()
    done = _cli(
        home, "export", "fuse", str(run_dir), "--dequantize", "--max-tokens", "12", "--json"
    )
    seconds["fuse"] = time.time() - started
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    trip = result["round_trip"]
    assert result["dequantized"] and trip["required"]
    assert all(trip["agree"]) and trip["prompt_tokens_agree"], trip
    assert len(trip["agree"]) >= 3 and trip["tokens_per_prompt"] == 12
