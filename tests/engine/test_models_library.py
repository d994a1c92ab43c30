"""Import, inspect, quantize, dequantize, list and delete: the local half of the model library."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ModelError
from engine.models import convert, library
from engine.models.info import inspect_model, validate_model_dir

ROOT = Path(__file__).resolve().parents[2]


def _tree_digest(folder: Path) -> dict:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
    }


@pytest.fixture
def user_model(tmp_path, tiny_chat_model) -> Path:
    """A copy of the tiny model in a folder that belongs to the user."""
    return Path(shutil.copytree(tiny_chat_model, tmp_path / "My Model"))


def test_inspect_reports_what_the_config_and_weights_say(stories_path, tiny_chat_model):
    info = inspect_model(stories_path)
    assert info.architecture == "LlamaForCausalLM" and info.model_type == "llama"
    assert info.parameters == 260_032  # stories260K, counted from the safetensors header
    assert (info.num_layers, info.hidden_size, info.vocab_size) == (5, 64, 512)
    assert info.context_length == 512 and info.quantization is None
    assert info.chat_template is False and info.weights_bytes == 260_032 * 4
    assert info.size_on_disk >= info.weights_bytes
    assert inspect_model(tiny_chat_model).chat_template is True


def test_import_references_the_folder_in_place_and_never_changes_it(user_model):
    before = _tree_digest(user_model)
    entry = library.import_model(user_model)
    assert entry.kind == "imported" and Path(entry.path) == user_model.resolve()
    assert entry.name == "My-Model" and entry.size_bytes > 0 and not entry.deletable
    assert library.import_model(user_model).name == entry.name  # importing twice: one entry
    assert library.resolve("My-Model") == user_model.resolve()

    result = library.delete("My-Model")
    assert not result["removed_files"]
    assert _tree_digest(user_model) == before
    assert "My-Model" not in [e.name for e in library.list_models()]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: _set_type(p, "no_such_arch"), "not supported by mlx-lm"),
        (lambda p: (p / "tokenizer.json").unlink(), "no tokenizer"),
        (lambda p: (p / "model.safetensors").rename(p / "pytorch_model.bin"), "pickle"),
        (lambda p: (p / "config.json").unlink(), "no config.json"),
    ],
)
def test_import_rejects_what_mlx_lm_cannot_train_with_the_reason(user_model, damage, reason):
    damage(user_model)
    with pytest.raises(ModelError, match=reason):
        library.import_model(user_model)
    assert library.list_models(include_cache=False) == []


def _set_type(path: Path, model_type: str) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = model_type
    (path / "config.json").write_text(json.dumps(cfg))


def test_remapped_model_types_are_accepted(user_model):
    _set_type(user_model, "mistral")  # mlx-lm loads mistral with its llama module
    assert validate_model_dir(user_model)["model_type"] == "mistral"


def test_quantize_then_dequantize_make_new_library_entries(user_model, lathe_home):
    from mlx_lm import load

    before = _tree_digest(user_model)
    stages = []
    q = convert.quantize(user_model, bits=4, group_size=32, progress=stages.append)
    assert q.kind == "converted" and Path(q.path).parent == lathe_home / "models"
    assert stages[0].stage == "loading" and stages[-1].stage == "done"
    writes = [s for s in stages if s.stage == "writing"]
    assert len(writes) > 3 and writes[-1].done_bytes == writes[-1].total_bytes
    info = inspect_model(q.path)
    assert info.quantization == {"bits": 4, "group_size": 32}
    assert info.parameters == inspect_model(user_model).parameters
    assert info.weights_bytes < inspect_model(user_model).weights_bytes / 4
    assert not list(Path(q.path).glob("*.py")) and (Path(q.path) / "tokenizer.json").exists()
    load(q.path)  # mlx-lm loads the result as it is

    with pytest.raises(ModelError, match="already quantized"):
        convert.quantize(q.path)
    d = convert.dequantize(q.name)
    assert inspect_model(d.path).quantization is None
    assert {e.name for e in library.list_models() if e.kind == "converted"} == {q.name, d.name}
    assert _tree_digest(user_model) == before

    result = library.delete(q.name)
    assert result["removed_files"] and not Path(q.path).exists()
    with pytest.raises(ModelError, match="8"):
        convert.quantize(user_model, bits=3)


def _cli(*args, timeout=180):
    out = subprocess.run(
        [sys.executable, "-m", "engine", "models", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out


@pytest.mark.slow
def test_cli_import_inspect_quantize_list_delete(user_model):
    out = _cli("import", str(user_model), "--json")
    assert out.returncode == 0, out.stderr
    name = json.loads(out.stdout)["name"]

    out = _cli("inspect", name, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["num_layers"] == 2
    human = _cli("inspect", str(user_model))
    assert "chat template" in human.stdout and "yes" in human.stdout

    out = _cli("quantize", name, "--bits", "8", "--group-size", "64", "--json")
    assert out.returncode == 0, out.stderr
    q = json.loads(out.stdout)
    assert q["kind"] == "converted" and q["name"].endswith("8bit")

    listed = json.loads(_cli("list", "--json").stdout)
    assert {(e["name"], e["kind"]) for e in listed} >= {
        (name, "imported"),
        (q["name"], "converted"),
    }
    assert all(e["size_bytes"] > 0 for e in listed)

    out = _cli("delete", q["name"], "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["removed_files"] is True

    bad = _cli("import", str(user_model / "nope"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "not a folder" in bad.stderr
    rec = _cli("list", "--recommended", "--json")
    assert rec.returncode == 0 and len(json.loads(rec.stdout)) >= 8
