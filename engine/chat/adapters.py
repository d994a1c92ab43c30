"""Find an adapter (a run, a checkpoint, or a raw folder) and switch it on and off in a loaded model.

Switching is exact: attaching uses mlx-lm's own `load_adapters`, so the tuned model is the model
`mlx_lm.load(..., adapter_path=...)` builds; detaching puts the very same base module objects back
(LoRA/DoRA) or the very same base weight arrays (full fine-tunes), so the base model is bit for bit
the one loaded without an adapter. Nothing is loaded twice and nothing is copied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LatheError
from engine.runs import adapter_steps, base_model_of
from engine.runspec import locate_adapter


class ChatError(LatheError):
    """A chat request that cannot be served; the hint says what the user can do."""

    kind = "chat"


@dataclass(frozen=True)
class AdapterInfo:
    """Where an adapter came from, so the chat can say exactly what produced a reply."""

    path: Path  # an mlx-lm adapter path (holds adapters.safetensors + adapter_config.json)
    run_dir: Path | None = None
    step: int | None = None  # None: the run's final (latest) adapter
    chat_template: str | None = None  # the run's chat_template.jinja, when it has one
    base_model: str | None = None  # model.path from the run's config.yaml, when known

    @property
    def run_id(self) -> str | None:
        return self.run_dir.name if self.run_dir else None

    @property
    def label(self) -> str:
        if self.run_dir is None:
            return f"adapter {self.path}"
        where = f"step {self.step}" if self.step is not None else "final adapter"
        return f"run {self.run_id} · {where}"


def resolve_adapter(spec: str | Path) -> AdapterInfo:
    """Turn `RUN[:STEP]`, a run folder, a checkpoint folder or an adapter folder into an AdapterInfo
    (the grammar and the fallback rule: engine.runspec)."""
    ref = locate_adapter(spec, ChatError)
    return _info(ref.path, ref.run_dir, ref.step)


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints of a run, oldest first (engine.runs.adapter_steps)."""
    return adapter_steps(run_dir)


def _info(path: Path, run_dir: Path | None, step: int | None) -> AdapterInfo:
    template = base_model = None
    if run_dir is not None:
        jinja = run_dir / "chat_template.jinja"
        if jinja.is_file():
            template = jinja.read_text(encoding="utf-8") or None
        base_model = base_model_of(run_dir)
    return AdapterInfo(
        path=path, run_dir=run_dir, step=step, chat_template=template, base_model=base_model
    )


def adapter_config(path: Path) -> dict:
    try:
        return json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ChatError(f"The adapter config in {path} cannot be read: {exc}.") from None


class AdapterSwitch:
    """Attaches one adapter to a loaded model and switches it off and on without reloading."""

    def __init__(self, model, info: AdapterInfo):
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm.tuner.utils import load_adapters

        self.model = model
        self.info = info
        config = adapter_config(info.path)
        self.fine_tune_type = config.get("fine_tune_type", "lora")
        self._base_weights: list = []
        self._tuned_weights: list = []
        before_modules = dict(model.named_modules())
        if self.fine_tune_type == "full":
            names = set(mx.load(str(info.path / "adapters.safetensors")).keys())
            params = dict(tree_flatten(model.parameters()))
            self._base_weights = [(k, params[k]) for k in sorted(names) if k in params]
        try:
            load_adapters(model, str(info.path))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._restore_after_failure(before_modules)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ChatError(
                f"The adapter {info.label} does not fit this model: {first}",
                "Pick the model the run was trained on.",
            ) from None
        # mlx-lm's load() puts the model in eval mode after adding adapters; do the same so LoRA
        # dropout is off, or the tuned replies would differ from `mlx_lm.generate`.
        model.eval()
        after_modules = dict(model.named_modules())
        # A module replaced by load_adapters is a LoRA/DoRA wrapper around the original object.
        replaced = [
            n
            for n, m in after_modules.items()
            if n in before_modules and before_modules[n] is not m
        ]
        replaced = [n for n in replaced if not any(n.startswith(o + ".") for o in replaced)]
        self._base_modules = [(n, before_modules[n]) for n in replaced]
        self._tuned_modules = [(n, after_modules[n]) for n in replaced]
        if self.fine_tune_type == "full":
            params = dict(tree_flatten(model.parameters()))
            self._tuned_weights = [(k, params[k]) for k, _ in self._base_weights]
        self.enabled = True

    def set_enabled(self, on: bool) -> None:
        if on == self.enabled:
            return
        self._apply(tuned=on)
        self.enabled = on

    def detach(self) -> None:
        """Leave the model as it was before this adapter was attached."""
        self._apply(tuned=False)
        self.enabled = False
        self._tuned_modules = []
        self._tuned_weights = []

    def _apply(self, tuned: bool) -> None:
        from mlx.utils import tree_unflatten

        modules = self._tuned_modules if tuned else self._base_modules
        if modules:
            self.model.update_modules(tree_unflatten(modules))
        if self.fine_tune_type == "full":
            weights = self._tuned_weights if tuned else self._base_weights
            self.model.load_weights(weights, strict=False)

    def _restore_after_failure(self, before_modules: dict) -> None:
        from mlx.utils import tree_unflatten

        now = dict(self.model.named_modules())
        changed = [(n, m) for n, m in before_modules.items() if now.get(n) is not m]
        changed = [(n, m) for n, m in changed if not any(n.startswith(o + ".") for o, _ in changed)]
        if changed:
            self.model.update_modules(tree_unflatten(changed))
        if self._base_weights:
            self.model.load_weights(self._base_weights, strict=False)
