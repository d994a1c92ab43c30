"""Shared fixtures: an isolated workspace for every test, the stories260K model, tiny models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
SMOLLM2 = ROOT.parent / "shared" / "models" / "smollm2-135m-instruct-4bit"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def lathe_home(tmp_path, monkeypatch):
    """Every test writes into its own workspace, never the user's."""
    home = tmp_path / "lathe-home"
    monkeypatch.setenv("LATHE_HOME", str(home))
    # Nor the LM Studio / Ollama models of the machine running the tests (tests set their own).
    monkeypatch.setenv("LATHE_LMSTUDIO_MODELS", str(tmp_path / "no-lmstudio"))
    monkeypatch.setenv("LATHE_OLLAMA_MODELS", str(tmp_path / "no-ollama"))
    return home


@pytest.fixture(scope="session")
def stories_path() -> Path:
    """The real pretrained 260K-parameter Llama from ../shared (skips where it is absent)."""
    if not (STORIES / "model.safetensors").exists():
        pytest.skip(f"{STORIES} is absent (it ships beside the repo on dev machines and CI)")
    return STORIES


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct chat model (MLX 4-bit) from ../shared (skips where absent)."""
    if not (SMOLLM2 / "config.json").exists():
        pytest.skip(f"{SMOLLM2} is absent (it ships beside the repo on dev machines and CI)")
    return SMOLLM2


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> Path:
    """A random-weight 2-layer Llama with a ChatML template and a BPE tokenizer trained here."""
    from engine.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama-chat")


@pytest.fixture(scope="session")
def tiny_qwen_model(tmp_path_factory) -> Path:
    from engine.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2", arch="qwen2")


# MLX 0.32 crashes at interpreter exit once it has run on a non-main thread (the GUI's chat and
# evaluation workers do, by design): its per-thread compile cache is destroyed after Python is
# finalised (reproduced without Qt: mlx_lm.generate in a threading.Thread, then a normal exit).
# After every test has run and the summary is printed, end the test process with its real exit
# status without running those destructors.
@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    session.config._lathe_exitstatus = int(exitstatus)


def pytest_unconfigure(config):
    status = getattr(config, "_lathe_exitstatus", None)
    if status is not None and "mlx.core" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
