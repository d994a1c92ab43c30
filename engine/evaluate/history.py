"""What a run's events say about it: loss curves, checkpoints and the golden prompt timeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.events import read_log


@dataclass
class RunHistory:
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, train_loss) per report
    valid: list[tuple[int, float]] = field(default_factory=list)  # (step, val_loss) per evaluation
    checkpoints: list[int] = field(default_factory=list)
    # {"step", "answers": [{prompt, answer, ...}], "general": {score, passed, total, answers}?}
    golden: list[dict] = field(default_factory=list)
    best_val_step: int | None = None
    best_val_loss: float | None = None
    test_loss: float | None = None

    @property
    def golden_prompts(self) -> list[str]:
        prompts: list[str] = []
        for entry in self.golden:
            for a in entry["answers"]:
                if a.get("prompt") not in prompts:
                    prompts.append(a.get("prompt"))
        return prompts

    @property
    def general(self) -> dict[int, dict]:
        """{step: {score, passed, total, lost, forgetting}}: the forgetting check over training."""
        from engine.evaluate.general import checkpoint_scores

        return checkpoint_scores(self)

    def val_loss_at(self, step: int) -> float | None:
        for s, v in self.valid:
            if s == step:
                return v
        return None

    def to_dict(self) -> dict:
        return {
            "train": self.train,
            "valid": self.valid,
            "checkpoints": self.checkpoints,
            "golden": self.golden,
            "best_val_step": self.best_val_step,
            "best_val_loss": self.best_val_loss,
            "test_loss": self.test_loss,
        }


def run_history(run_dir: Path) -> RunHistory:
    """The run's curves and timelines from `events.jsonl`.

    A resumed run repeats the steps after its last checkpoint; the later value of a step wins,
    so the curves show the run as it finally went.
    """
    train: dict[int, float] = {}
    valid: dict[int, float] = {}
    checkpoints: set[int] = set()
    golden: dict[int, list] = {}
    h = RunHistory()
    for e in read_log(Path(run_dir) / "events.jsonl"):
        kind = e.get("event")
        step = e.get("step")
        if kind == "progress" and isinstance(e.get("train_loss"), (int, float)):
            train[step] = e["train_loss"]
        elif kind == "eval" and isinstance(e.get("val_loss"), (int, float)):
            valid[step] = e["val_loss"]
        elif kind == "checkpoint":
            checkpoints.add(step)
        elif kind == "golden" and isinstance(e.get("answers"), list):
            golden[step] = (e["answers"], e.get("general"))
        elif kind == "finished":
            summary = e.get("summary") or {}
            h.test_loss = summary.get("test_loss", h.test_loss)
    h.train = sorted(train.items())
    h.valid = sorted(valid.items())
    h.checkpoints = sorted(checkpoints)
    h.golden = [
        {"step": s, "answers": a, **({"general": g} if isinstance(g, dict) else {})}
        for s, (a, g) in sorted(golden.items())
    ]
    if h.valid:
        h.best_val_step, h.best_val_loss = min(h.valid, key=lambda sv: (sv[1], sv[0]))
    return h


def best_general_checkpoint(run_dir: Path, history=None) -> dict | None:
    """The checkpoint to keep by validation loss and the training-time general checks, without
    generating anything; None when the run has no general scores at its checkpoints."""
    history = history or run_history(run_dir)
    general = history.general
    from engine.evaluate.general import best_by_both
    from engine.runs import adapter_steps

    steps = [s for s in adapter_steps(run_dir) if s in general]
    if not steps:
        return None
    candidates = []
    for s in steps:
        val = history.val_loss_at(s)
        candidates.append(
            {
                "step": s,
                "key": (-val if val is not None else -float("inf"), general[s]["score"] or 0.0),
                "val_loss": val,
                "general": general[s]["score"],
                "forgetting": general[s]["forgetting"],
            }
        )
    best, rule = best_by_both(candidates)
    return {k: v for k, v in best.items() if k != "key"} | {
        "spec": f"{_ref(run_dir)}:{best['step']}",
        "rule": rule,
    }


def _ref(run_dir: Path) -> str:
    """How to name the run in RUN:STEP: its id inside the workspace, else its folder."""
    from engine.workspace import runs_dir

    return run_dir.name if run_dir.parent.resolve() == runs_dir().resolve() else str(run_dir)
