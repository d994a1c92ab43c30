"""The demo run: the bundled bank-support sample on the best demo model this machine has.

In order: SmolLM2-135M-Instruct (a real chat model) from the library or from the shared models
folder beside a development checkout; else stories260K (a real but tiny story model) from that
folder; else a tiny random-weight model built locally. The choice is made without building or
loading anything (`choose_demo_model`), so the app can say which model the demo will use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig

# Folder / repo names of SmolLM2-135M-Instruct (any format mlx-lm loads: 4-bit, 8-bit, float16).
CHAT_MODEL_KEY = "smollm2-135m-instruct"
SHARED_CHAT_MODEL = "smollm2-135m-instruct-4bit"

# Held-out phrasings (not in the sample's training or validation data): the run answers them at
# every checkpoint, so the log shows the model learning the bank's facts.
GOLDEN_PROMPTS = [
    "What's the charge for wiring money to a bank in another country?",
    "Until what time can I reach you by phone?",
]


@dataclass(frozen=True)
class DemoModel:
    kind: str  # "chat" (SmolLM2) | "stories" | "tiny"
    path: Path | None  # None: the tiny model is built when the demo starts
    note: str  # for the user: which model, and what to expect

    @property
    def name(self) -> str:
        return {"chat": "SmolLM2-135M-Instruct", "stories": "stories260K"}.get(
            self.kind, "a tiny local model"
        )


def shared_models_dir() -> Path:
    """The shared models folder beside a development checkout (../shared/models)."""
    return Path(__file__).resolve().parents[2] / "shared" / "models"


def library_chat_model() -> Path | None:
    """SmolLM2-135M-Instruct when the library has it (downloaded, imported or in the HF cache)."""
    try:
        from engine.models import list_models

        entries = list_models()
    except Exception:  # noqa: BLE001 - an unreadable library must not stop the demo
        return None
    for entry in entries:
        names = (entry.name, entry.repo_id or "", Path(entry.path).name)
        if entry.available and any(CHAT_MODEL_KEY in n.lower() for n in names):
            path = Path(entry.path)
            if (path / "config.json").is_file():
                return path
    return None


def choose_demo_model() -> DemoModel:
    """The model the demo will train, and a sentence saying what it is. Builds nothing."""
    chat = library_chat_model()
    if chat is None and (shared_models_dir() / SHARED_CHAT_MODEL / "config.json").is_file():
        chat = shared_models_dir() / SHARED_CHAT_MODEL
    if chat is not None:
        return DemoModel(
            "chat",
            chat,
            f"Demo model: SmolLM2-135M-Instruct ({chat}), a real chat model. Before training it "
            "guesses Harbor Bank's fees and times; after a few minutes of training it answers "
            "with them (the log shows its answers to two new questions at each checkpoint).",
        )
    from engine.workspace import models_dir, shared_stories_model

    stories = shared_stories_model()
    if stories is not None:
        return DemoModel(
            "stories",
            stories,
            f"Demo model: stories260K ({stories}), a real 260K-parameter model pretrained on "
            "children's stories: small enough to train in a minute, too small to be useful. "
            "Download SmolLM2-135M-Instruct on the Models page to see a chat model learn the facts.",
        )
    target = models_dir() / "lathe-demo-tiny"
    return DemoModel(
        "tiny",
        target if (target / "model.safetensors").exists() else None,
        f"Demo model: a tiny random-weight model built on this Mac ({target}); it learns "
        "the sample's answers by heart but knows nothing else. Download a real model for real work.",
    )


def reference_model(preferred: str | Path | None = None) -> Path:
    """The model whose tokenizer measures a dataset's token lengths: `preferred` when it is a
    folder or a model Lathe knows by name, else the demo model (the tiny one is built on first
    use, as the demo run does)."""
    if preferred and Path(preferred).expanduser().is_dir():
        return Path(preferred).expanduser()
    if preferred:
        try:
            from engine.models import resolve

            return resolve(str(preferred))
        except Exception:  # noqa: BLE001 - not on this Mac (offline): measure with the demo model
            pass
    choice = choose_demo_model()
    if choice.path is not None:
        return choice.path
    cfg = RunConfig()
    demo_defaults(cfg, [])
    return Path(cfg.model.path)


def demo_defaults(cfg: RunConfig, notes: list[str]) -> DemoModel:
    """Fill `cfg` with the demo run's settings (building the tiny model if it is the choice)."""
    from engine.workspace import models_dir, resources_dir

    cfg.name = cfg.name or "demo-bank-support"
    cfg.data.path = str(resources_dir() / "samples" / "bank-support")
    choice = choose_demo_model()
    notes.append(choice.note)
    if choice.kind == "tiny" and choice.path is None:
        from engine.tinymodel import build_tiny_model

        target = models_dir() / "lathe-demo-tiny"
        build_tiny_model(
            target,
            hidden_size=96,
            num_layers=4,
            chat_template=True,
            extra_texts=_sample_texts(Path(cfg.data.path)),
        )
        choice = DemoModel("tiny", target, choice.note)
    cfg.model.path = str(choice.path)
    cfg.data.max_seq_length = 512
    if choice.kind == "chat":
        apply_chat_demo_settings(cfg)
    else:
        cfg.training.iters = cfg.training.iters or 300
        cfg.training.batch_size = 8
        cfg.training.learning_rate = 5e-4
        cfg.training.steps_per_eval = 50
        cfg.training.save_every = 100
        cfg.lora.num_layers = -1
        cfg.lora.rank = 16
    return choice


def apply_chat_demo_settings(cfg: RunConfig) -> None:
    """The demo's settings for SmolLM2-135M-Instruct on the bank sample (tests/e2e uses them too).

    About one pass over the sample (288 conversations, each fact in 12) with a rank-16 adapter on
    the last 8 of its 30 layers: enough to learn the facts, and on a 2-core CPU each step runs the
    whole model forward but back through only 8 layers. mlx-lm's LoRA scale (20) multiplies the
    adapter's output, so 1e-3 diverged here (loss 3 -> 19 in 15 steps); 2e-4 learns steadily.
    """
    t = cfg.training
    t.iters = t.iters or 60
    t.batch_size = 4
    t.learning_rate = 2e-4
    t.steps_per_report = 5
    t.steps_per_eval = 30
    t.save_every = 30
    t.golden_prompts = t.golden_prompts or list(GOLDEN_PROMPTS)
    t.golden_max_tokens = 40
    cfg.data.val_batches = 3
    cfg.lora.num_layers = 8
    cfg.lora.rank = 16


def _sample_texts(folder: Path) -> list[str]:
    texts = []
    for f in sorted(folder.glob("*.jsonl")):
        texts.append(f.read_text(encoding="utf-8")[:200_000])
    return texts
