"""The training job: a run's recipe (engine.training.recipe) with evaluation at its checkpoints.

Training does not import evaluation; this job joins them. At the start and at every checkpoint the
run answers its golden prompts and, with the forgetting check on, the general prompts
(engine.evaluate.golden.golden_hook), as `golden` events. `python -m engine train` runs this.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from engine import events
from engine.config import RunConfig


def run(
    config: RunConfig,
    run_dir: Path,
    sink: events.Sink,
    should_stop: Callable[[], bool] = lambda: False,
    resume: bool = False,
) -> str:
    """Train in `run_dir` (from its newest checkpoint when `resume`); returns the final status.

    `engine.training.recipe.run` with the golden-prompt hook; see there for what it guarantees.
    """
    from engine.evaluate.golden import golden_hook
    from engine.training.recipe import run as run_recipe

    return run_recipe(config, run_dir, sink, should_stop, resume, checkpoint_hooks=[golden_hook])
