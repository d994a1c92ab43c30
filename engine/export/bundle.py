"""Run bundles: one folder that `python -m engine train --config BUNDLE/config.yaml` runs unchanged
on another machine (a second Mac, or a Linux GPU server with `mlx[cuda]`).

The bundle holds the resolved config, the normalised dataset (train/valid/test.jsonl, exactly the
records the run trains on) and a model reference: the Hugging Face repo id when the model came from
the Hub (the other machine downloads it with `lathe-engine models download ID` first; training never
downloads), else a copy of the model's safetensors, config and tokenizer files. Paths in the bundled
config are relative to the bundle, so it can be copied anywhere.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig
from engine.errors import LatheError
from engine.export.job import private_output
from engine.workspace import ensure_dir, write_text_atomic

MODEL_FILES = re.compile(
    r"(.*\.safetensors|.*\.safetensors\.index\.json|config\.json|generation_config\.json|"
    r"tokenizer.*|special_tokens_map\.json|.*\.model|.*\.tiktoken|vocab\.json|merges\.txt|"
    r"chat_template\.(jinja|json)|added_tokens\.json)"
)


class BundleError(LatheError):
    kind = "export"


@dataclass
class BundleResult:
    path: Path
    model: str  # repo id, or "model" (copied into the bundle)
    examples: dict[str, int]

    def to_dict(self) -> dict:
        return {"path": str(self.path), "model": self.model, "examples": self.examples}


def _load_config(ref: str | Path) -> RunConfig:
    path = Path(ref).expanduser()
    if path.is_file():
        return RunConfig.load(path)
    from engine.runs import load_run

    return load_run(ref).config


def hub_repo_of(model_path: str) -> str | None:
    """The Hub repo id of a model: given as an id, or a folder inside the Hugging Face cache."""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model_path) and not Path(model_path).exists():
        return model_path
    match = re.search(
        r"models--([^/]+?)--([^/]+)/snapshots/", str(Path(model_path).expanduser().resolve())
    )
    return f"{match.group(1)}/{match.group(2)}" if match else None


@private_output
def make_bundle(
    ref: str | Path, out: str | Path, *, copy_model: bool | None = None
) -> BundleResult:
    """Write a bundle for the run or config `ref` into `out` (which must not exist yet)."""
    from engine.data import load_splits

    config = _load_config(ref)
    out = Path(out).expanduser()
    if out.exists():
        raise BundleError(f"{out} already exists.", "Choose another folder or delete it first.")
    if not config.model.path or not config.data.path:
        raise BundleError(
            "The config names no model or no dataset.", "Set model.path and data.path."
        )
    # A new folder of its own: an existing folder of that name is never emptied or removed.
    ensure_dir(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        d = config.data
        splits = load_splits(d.path, valid_fraction=d.valid_fraction, seed=config.training.seed)
        counts = {}
        for name, rows in (("train", splits.train), ("valid", splits.valid), ("test", splits.test)):
            if rows:
                write_text_atomic(
                    tmp / "data" / f"{name}.jsonl",
                    "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                )
            counts[name] = len(rows)
        config.data.path = "data"

        repo = hub_repo_of(config.model.path)
        if copy_model or (copy_model is None and repo is None):
            source = Path(config.model.path).expanduser()
            if not source.is_dir():
                raise BundleError(
                    f"Model {config.model.path} is not a folder on this machine.",
                    "Download or import it first.",
                )
            for f in source.iterdir():
                if f.is_file() and MODEL_FILES.fullmatch(f.name):
                    ensure_dir(tmp / "model")
                    shutil.copy2(f, tmp / "model" / f.name)
            config.model.path = "model"
        else:
            config.model.path = repo
        write_text_atomic(tmp / "config.yaml", config.to_yaml())
        write_text_atomic(tmp / "README.txt", _readme(config.model.path, repo, counts))
        if out.exists():
            raise BundleError(f"{out} already exists.", "Choose another folder or delete it first.")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BundleResult(out, config.model.path, counts)


def _readme(model: str, repo: str | None, counts: dict[str, int]) -> str:
    fetch = (
        f"   lathe-engine models download {repo}      (once, while online)\n"
        if model != "model"
        else ""
    )
    return (
        "Lathe run bundle\n\n"
        f"Data: {counts.get('train', 0)} training, {counts.get('valid', 0)} validation and "
        f"{counts.get('test', 0)} test examples in data/.\n"
        f"Model: {'copied into model/' if model == 'model' else model}.\n\n"
        "To train on another machine with Lathe installed (pip install lathe; on a Linux GPU server\n"
        "with MLX's CUDA build):\n\n"
        f"{fetch}   lathe-engine train --config config.yaml\n\n"
        "Copy the finished run folder (printed when the run starts) back into Lathe's runs/ folder\n"
        "and the Runs page picks it up for chat and export.\n"
    )
