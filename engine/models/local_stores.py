"""Models other apps already keep on this Mac: LM Studio's folders and Ollama's store.

Only listed, never copied or changed. LM Studio keeps `publisher/repo/` folders holding `.gguf`
files or MLX folders under `~/.lmstudio/models` (older versions: `~/.cache/lm-studio/models`).
Ollama keeps `manifests/<registry>/<namespace>/<model>/<tag>` JSON files under `~/.ollama/models`
(or `$OLLAMA_MODELS`); the manifest layer with media type `application/vnd.ollama.image.model`
names the GGUF blob `blobs/sha256-<hex>`. A GGUF entry becomes trainable with `models import
NAME`; an LM Studio MLX folder is trainable as it is.

`LATHE_LMSTUDIO_MODELS` (folders separated by the path separator) and `LATHE_OLLAMA_MODELS`
override the locations (tests use them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_DEFAULT_REGISTRY = "registry.ollama.ai"


def lmstudio_roots() -> list[Path]:
    env = os.environ.get("LATHE_LMSTUDIO_MODELS")
    if env is not None:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    home = Path.home()
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def ollama_root() -> Path:
    env = os.environ.get("LATHE_OLLAMA_MODELS") or os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def lmstudio_models() -> list[tuple[str, Path, str]]:
    """(name, path, format) of LM Studio's models: `publisher/repo/file.gguf` files ("gguf") and
    `publisher/repo` MLX folders ("mlx"). Vision projector files (mmproj-*) are left out."""
    from engine.models.info import is_model_folder

    out: list[tuple[str, Path, str]] = []
    seen: set[str] = set()
    for root in lmstudio_roots():
        if not root.is_dir():
            continue
        for repo in sorted(p for p in root.glob("*/*") if p.is_dir()):
            key = f"{repo.parent.name}/{repo.name}"
            if is_model_folder(repo):
                if key not in seen:
                    seen.add(key)
                    out.append((key, repo, "mlx"))
                continue
            for f in sorted(repo.glob("*.gguf")):
                name = f"{key}/{f.name}"
                if f.name.lower().startswith("mmproj") or name in seen:
                    continue
                seen.add(name)
                out.append((name, f, "gguf"))
    return out


def ollama_models() -> list[tuple[str, Path]]:
    """(name, blob path) of Ollama's models, named as `ollama list` shows them (`llama3.2:1b`;
    models from other registries or namespaces keep them: `hf.co/user/repo:tag`)."""
    from engine.models.gguf_reader import is_gguf

    root = ollama_root()
    manifests = root / "manifests"
    if not manifests.is_dir():
        return []
    out = []
    for manifest in sorted(p for p in manifests.glob("*/*/*/*") if p.is_file()):
        tag, model = manifest.name, manifest.parent.name
        namespace, registry = manifest.parent.parent.name, manifest.parent.parent.parent.name
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            layers = data.get("layers") or []
        except (OSError, ValueError, AttributeError):
            continue
        digest = next(
            (
                layer.get("digest")
                for layer in layers
                if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER
            ),
            None,
        )
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            continue
        blob = root / "blobs" / digest.replace(":", "-", 1)
        if not is_gguf(blob):  # missing, or a model format other than GGUF
            continue
        if registry == OLLAMA_DEFAULT_REGISTRY and namespace == "library":
            name = f"{model}:{tag}"
        elif registry == OLLAMA_DEFAULT_REGISTRY:
            name = f"{namespace}/{model}:{tag}"
        else:
            name = f"{registry}/{namespace}/{model}:{tag}"
        out.append((name, blob))
    return out
